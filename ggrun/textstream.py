"""One sequence's text pipeline: sampled tokens in, :class:`Chunk` deltas out.

Every generated token, whether from :meth:`ggrun.Model.stream` or from a batch slot, goes
through one :class:`TextStream`: its bytes are assembled into UTF-8 text, stop strings
cut the stream (holding back what could be the start of one), ``<think>…</think>`` is
split from the answer, and the counts and speeds are kept. The last chunk carries the
``finish_reason``, the final statistics and the run's manifest
(:class:`~ggrun.runinfo.RunInfo`), with the same meaning on every path.
"""

from __future__ import annotations

import codecs
import dataclasses
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Self

from ggrun.errors import GgrunError, SchemaMismatch
from ggrun.templates import THINK_CLOSE, THINK_OPEN
from ggrun.tools import CLOSE, OPEN, Tool, ToolCall, parse_call

if TYPE_CHECKING:
    from ggrun.runinfo import RunInfo


@dataclass(frozen=True)
class TokenLogprob:
    """A generated token's log probability under the model's raw distribution (before
    penalties, grammar and temperature), with the most likely alternatives."""

    token: str
    logprob: float
    bytes: tuple[int, ...]
    top: tuple[tuple[str, float, tuple[int, ...]], ...] = ()


@dataclass
class Chunk:
    """One step of a stream: new answer text and/or new reasoning text.

    The last chunk has ``finish_reason`` set and carries the final counts and speeds.
    """

    text: str = ""
    reasoning: str = ""
    token: int | None = None
    finish_reason: str | None = None  # "stop", "length" (or "interrupted") on the last chunk
    prompt_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens reused from the KV cache
    completion_tokens: int = 0
    reasoning_tokens: int = 0  # of completion_tokens, those inside <think>…</think>
    thinking_time: float = 0.0  # seconds the model spent in its thought
    drafted_tokens: int = 0  # speculative decoding: tokens guessed ...
    accepted_tokens: int = 0  # ... and of those, the ones the model confirmed
    forced_tokens: int = 0  # ... and of those, the ones its grammar forced
    prompt_tps: float = 0.0
    generation_tps: float = 0.0
    ttft: float = 0.0  # seconds from the start of the request to its first token
    tool_calls: list[ToolCall] = field(default_factory=list)  # calls completed in this chunk
    logprobs: list[TokenLogprob] = field(default_factory=list)  # of this chunk's tokens
    error: str | None = None  # on the last chunk: why the output cannot be used
    cut: bool = False  # on the last chunk: the error is only that max_tokens cut it off
    redraw: bool = False  # on the last chunk: the error is a check another draw can pass
    run: RunInfo | None = None  # on the last chunk: the run's manifest
    stop_sequence: str | None = None  # on the last chunk: the stop string that ended it


# the counts and speeds a result takes from its stream's last chunk
STATS = (
    "prompt_tokens",
    "completion_tokens",
    "reasoning_tokens",
    "thinking_time",
    "drafted_tokens",
    "accepted_tokens",
    "forced_tokens",
    "cached_tokens",
    "prompt_tps",
    "generation_tps",
    "ttft",
)


@dataclass
class Result:
    """A finished generation (also one request of a batch: ``id``, and ``error`` if it failed)."""

    text: str
    finish_reason: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0
    thinking_time: float = 0.0
    drafted_tokens: int = 0
    accepted_tokens: int = 0
    forced_tokens: int = 0  # of accepted_tokens, those a grammar forced
    cached_tokens: int = 0
    prompt_tps: float = 0.0
    generation_tps: float = 0.0
    ttft: float = 0.0
    reasoning: str | None = None
    data: Any = None
    id: Any = None
    error: str | None = None
    cut: bool = False  # the error is only that max_tokens cut the output off
    redraw: bool = False  # the error is a schema check that another draw can pass
    tool_calls: list[ToolCall] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    run: RunInfo | None = None  # what went into it (None for a request that never ran)
    stop_sequence: str | None = None  # the stop string that ended it (None: another end)

    @classmethod
    def from_last(
        cls,
        last: Chunk,
        text: str,
        reasoning: str,
        default_finish: str = "stop",
        tool_calls: list[ToolCall] | None = None,
        logprobs: list[TokenLogprob] | None = None,
    ) -> Self:
        """A result from the stream's text, its reasoning and its last chunk's counts."""
        return cls(
            text=text,
            finish_reason=last.finish_reason or default_finish,
            reasoning=reasoning.strip() or None,
            error=last.error,
            cut=last.cut,
            redraw=last.redraw,
            run=last.run,
            stop_sequence=last.stop_sequence,
            tool_calls=list(tool_calls or []),
            logprobs=list(logprobs or []),
            **{name: getattr(last, name) for name in STATS},
        )

    @classmethod
    def collect(cls, chunks: Iterator[Chunk]) -> Result:
        text: list[str] = []
        reasoning: list[str] = []
        calls: list[ToolCall] = []
        lps: list[TokenLogprob] = []
        last = Chunk()
        for c in chunks:
            text.append(c.text)
            reasoning.append(c.reasoning)
            calls += c.tool_calls
            lps += c.logprobs
            last = c
        joined = "".join(text), "".join(reasoning)
        return cls.from_last(last, *joined, tool_calls=calls, logprobs=lps)

    @classmethod
    def failed(cls, error: str, id: Any = None) -> Result:
        return cls(text="", finish_reason="error", id=id, error=error)


@dataclass
class StopMatcher:
    """Cut the stream at the first stop string, holding back possible partial matches."""

    stops: tuple[str, ...]
    pending: str = ""
    hold: int = field(init=False)
    matched: str | None = field(default=None, init=False)  # the stop string that cut it

    def __post_init__(self) -> None:
        self.stops = tuple(s for s in self.stops if s)
        self.hold = max((len(s) for s in self.stops), default=1) - 1

    def feed(self, text: str) -> tuple[str, bool]:
        if not self.stops:
            return text, False
        self.pending += text
        found = [(i, s) for s in self.stops if (i := self.pending.find(s)) >= 0]
        if found:
            cut, self.matched = min(found, key=lambda f: f[0])
            out, self.pending = self.pending[:cut], ""
            return out, True
        keep = len(self.pending) - self.hold if self.hold else len(self.pending)
        out, self.pending = self.pending[: max(keep, 0)], self.pending[max(keep, 0) :]
        return out, False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


class ThinkSplitter:
    """Split a token stream into answer text and reasoning (``<think>…</think>``).

    ``feed`` returns ``(answer_delta, reasoning_delta)``. A think block is recognised
    only before any answer text, as Qwen3 and R1-style models emit it.
    """

    def __init__(self, in_think: bool = False) -> None:
        self.in_think = in_think
        self.done_thinking = False
        self.answer_started = False
        self.buf = ""

    def _tag(self) -> str | None:
        if self.in_think:
            return THINK_CLOSE
        if self.done_thinking or self.answer_started:
            return None
        return THINK_OPEN

    def feed(self, text: str) -> tuple[str, str]:
        self.buf += text
        answer: list[str] = []
        reasoning: list[str] = []
        while True:
            tag = self._tag()
            if tag is None:
                if not self.answer_started:
                    self.buf = self.buf.lstrip()
                    self.answer_started = bool(self.buf)
                answer.append(self.buf)
                self.buf = ""
                break
            i = self.buf.find(tag)
            if i >= 0:
                head, self.buf = self.buf[:i], self.buf[i + len(tag) :]
                if self.in_think:
                    reasoning.append(head)
                    self.in_think, self.done_thinking = False, True
                    self.buf = self.buf.lstrip()
                else:
                    answer.append(head)
                    self.in_think = True
                    self.buf = self.buf.lstrip()
                continue
            keep = _partial_suffix(self.buf, tag)
            head, self.buf = self.buf[: len(self.buf) - keep], self.buf[len(self.buf) - keep :]
            if self.in_think:
                reasoning.append(head)
            else:
                if head.strip():
                    self.answer_started = True
                # whitespace before a possible <think> is held back, not emitted
                if self.answer_started:
                    answer.append(head)
                else:
                    self.buf = head + self.buf
            break
        return "".join(answer), "".join(reasoning)

    def flush(self) -> tuple[str, str]:
        rest, self.buf = self.buf, ""
        if self.in_think:
            return "", rest
        return (rest if (self.answer_started or rest.strip()) else ""), ""


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``tag``."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


class ToolCallSplitter:
    """Take ``<tool_call>…</tool_call>`` blocks out of the answer text.

    ``feed`` returns the content (text outside calls; a possible partial opening tag is
    held back) and the text of each call that closed. After the first call, blank text
    between calls is not content.
    """

    def __init__(self) -> None:
        self.buf = ""
        self.in_call = False
        self.seen_call = False

    def feed(self, text: str) -> tuple[str, list[str]]:
        self.buf += text
        content: list[str] = []
        calls: list[str] = []
        while True:
            if self.in_call:
                j = self.buf.find(CLOSE)
                if j < 0:
                    break
                calls.append(self.buf[:j])
                self.buf = self.buf[j + len(CLOSE) :]
                self.in_call = False
                continue
            i = self.buf.find(OPEN)
            if i >= 0:
                content.append(self.buf[:i])
                self.buf = self.buf[i + len(OPEN) :]
                self.in_call = self.seen_call = True
                continue
            keep = _partial_suffix(self.buf, OPEN)
            content.append(self.buf[: len(self.buf) - keep])
            self.buf = self.buf[len(self.buf) - keep :]
            break
        out = "".join(content)
        return ("" if self.seen_call and not out.strip() else out), calls

    def flush(self) -> tuple[str, bool]:
        """The text held back, and whether a call was left open (cut off)."""
        rest, self.buf = self.buf, ""
        if self.in_call:
            return "", True
        return ("" if self.seen_call and not rest.strip() else rest), False


class TextStream:
    """The pipeline of one sequence: feed it each sampled token, then :meth:`finish` it.

    ``on_chunk`` (optional) sees every chunk this stream produces, the last one included;
    the last one carries ``run``, the run's manifest.
    """

    def __init__(
        self,
        token_bytes: Callable[[int], bytes],
        *,
        n_prompt: int,
        n_cached: int = 0,
        stop: tuple[str, ...] = (),
        split_thinking: bool = False,
        starts_in_thinking: bool = False,
        tools: tuple[Tool, ...] = (),
        must_call: bool = False,  # tool_choice required or named: the reply is a call
        on_chunk: Callable[[Chunk], Any] | None = None,
        run: RunInfo | None = None,
    ) -> None:
        self._bytes = token_bytes
        self._must_call = must_call and bool(tools)
        self.run = run
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stopper = StopMatcher(stop)
        self._splitter = ThinkSplitter(starts_in_thinking) if split_thinking else None
        self._tools = tools
        self._calls = ToolCallSplitter() if tools else None
        self.tool_calls: list[ToolCall] = []
        self.logprobs: list[TokenLogprob] = []  # of the answer's tokens (not the thought's)
        self._lp_pending: list[TokenLogprob] = []
        self.error: str | None = None
        self.cut = False  # the error is only that max_tokens cut the output off
        self.redraw = False  # the error is a schema check that another draw can pass
        self.on_chunk = on_chunk
        self.stats = Chunk(prompt_tokens=n_prompt, cached_tokens=n_cached)
        self.t_start = time.perf_counter()
        self._t_think = self.t_start if starts_in_thinking else 0.0
        self.reasoning_used = 0  # tokens of the current thought (the budget counts these)
        self._t_prompt = 0.0
        self._t_first = 0.0
        self.text: list[str] = []
        self.reasoning: list[str] = []

    @property
    def thinking(self) -> bool:
        """Whether the model is inside a ``<think>`` block now."""
        return self._splitter is not None and self._splitter.in_think

    @property
    def at_answer_start(self) -> bool:
        """Nothing of the answer has come yet (blanks, a thought, at most)."""
        sp = self._splitter
        started = sp is not None and (sp.in_think or sp.answer_started)
        return not started and not any(self.text) and not self.tool_calls

    @property
    def in_tool_call(self) -> bool:
        """Whether the model is inside a ``<tool_call>`` block now."""
        return self._calls is not None and self._calls.in_call

    @property
    def n_generated(self) -> int:
        return self.stats.completion_tokens

    def prompt_done(self) -> None:
        """The prompt is in the KV cache (its last logits are out)."""
        self._t_prompt = time.perf_counter()
        dt = self._t_prompt - self.t_start
        done = self.stats.prompt_tokens - self.stats.cached_tokens
        self.stats.prompt_tps = done / dt if dt > 0 else 0.0

    def feed(self, token: int, logprob: TokenLogprob | None = None) -> tuple[Chunk | None, bool]:
        """Take one generated token (not an end-of-generation one).

        Returns the new text as a chunk (None when all of it is held back) and whether
        a stop string was hit.
        """
        now = time.perf_counter()
        s = self.stats
        if not s.completion_tokens:
            self._t_first = now
            s.ttft = now - self.t_start
        thinking = self.thinking
        s.completion_tokens += 1
        text, hit = self._stopper.feed(self._decoder.decode(self._bytes(token)))
        answer, thought = self._splitter.feed(text) if self._splitter else (text, "")
        if logprob is not None and not (thinking or self.thinking):
            self._lp_pending.append(logprob)
        if thinking or self.thinking:
            s.reasoning_tokens += 1
            self.reasoning_used += 1
            if not self._t_think:
                self._t_think = now
        if self._t_think and (thinking or self.thinking):
            s.thinking_time = time.perf_counter() - self._t_think
        dt = now - (self._t_prompt or self.t_start)
        s.generation_tps = s.completion_tokens / dt if dt > 0 else 0.0
        answer, calls = self._take_calls(answer)
        return self._emit(answer, thought, token, calls), hit

    def _take_calls(self, answer: str) -> tuple[str, list[ToolCall]]:
        if self._calls is None:
            return answer, []
        content, texts = self._calls.feed(answer)
        calls = []
        for t in texts:
            try:
                calls.append(parse_call(t, self._tools))
            except GgrunError as e:  # a check the grammar cannot hold, or no grammar
                if self.error is None:
                    self.error, self.redraw = str(e), isinstance(e, SchemaMismatch)
        self.tool_calls += calls
        return content, calls

    def finish(self, reason: str) -> Chunk:
        """Flush what was held back; the last chunk, with ``finish_reason`` and the stats."""
        tail = self._decoder.decode(b"", final=True) + self._stopper.flush()
        answer, thought = self._splitter.feed(tail) if self._splitter else (tail, "")
        if self._splitter:  # text held back as a possible partial tag is the reply's end
            a2, t2 = self._splitter.flush()
            answer, thought = answer + a2, thought + t2
        answer, calls = self._take_calls(answer)
        if self._calls is not None:
            rest, cut = self._calls.flush()
            # a call the grammar forces may be cut off in its opening tag ("<tool_"), which
            # the splitter hands back as text: that reply is no call, and the tag no text
            forced_cut = self._must_call and not self.tool_calls and reason == "length"
            answer += "" if forced_cut else rest
            if cut or forced_cut:
                self.cut = self.error is None and reason == "length"
                self.error = self.error or (
                    f"the output was cut off inside a tool call (finish_reason={reason}) "
                    "before it was complete; raise max_tokens"
                )
        if self.tool_calls and reason == "stop":
            reason = "tool_calls"
        self.text.append(answer)
        self.reasoning.append(thought)
        lps, self._lp_pending = self._lp_pending, []
        self.logprobs += lps
        last = dataclasses.replace(
            self.stats,
            text=answer,
            reasoning=thought,
            token=None,
            finish_reason=reason,
            tool_calls=calls,
            logprobs=lps,
            error=self.error,
            cut=self.cut,
            redraw=self.redraw,
            run=self.run,
            stop_sequence=self._stopper.matched if reason == "stop" else None,
        )
        if self.on_chunk is not None:
            self.on_chunk(last)
        return last

    def result(self, last: Chunk) -> Result:
        text, reasoning = "".join(self.text), "".join(self.reasoning)
        return Result.from_last(
            last, text, reasoning, tool_calls=self.tool_calls, logprobs=self.logprobs
        )

    def _emit(
        self, answer: str, thought: str, token: int | None, calls: list[ToolCall]
    ) -> Chunk | None:
        if not (answer or thought or calls):
            return None
        self.text.append(answer)
        self.reasoning.append(thought)
        lps, self._lp_pending = self._lp_pending, []
        self.logprobs += lps
        chunk = dataclasses.replace(
            self.stats, text=answer, reasoning=thought, token=token, tool_calls=calls,
            logprobs=lps,
        )  # fmt: skip
        if self.on_chunk is not None:
            self.on_chunk(chunk)
        return chunk
