"""The token loop: sequences decoded together in one llama.cpp context, step by step.

:class:`Decoder` is the one loop of ggrun. :class:`ggrun.Model` runs one sequence
through it (and keeps its KV cache for the next call); :class:`ggrun.batching.Batcher`
runs up to ``n_seq_max`` at once. Each :meth:`Decoder.step` puts into one batch, for
every generating sequence, its last sampled token (plus any drafted tokens to verify),
then as many prompt tokens of new sequences as fit; decodes once; and then, for each
sequence, samples from its rows, feeds each token through its
:class:`~ggrun.textstream.TextStream`, and decides whether it ends (end of generation, a
stop string, its token limit, or an error of its own).

A sequence's error (a grammar dead end, say) ends that sequence only; a failed decode
fails the step.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ggrun import llama, promptcache, speculative
from ggrun.errors import GgrunError
from ggrun.promptcache import PromptCache
from ggrun.request import Request
from ggrun.runinfo import RunInfo
from ggrun.sampling import SamplingConfig
from ggrun.speculative import Speculation
from ggrun.templates import THINK_BUDGET_MESSAGE, THINK_OPEN
from ggrun.textstream import Chunk, Result, TextStream, TokenLogprob
from ggrun.tools import OPEN, looks_like_call

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prepared:
    """A request made ready for one model: rendered, tokenized, sampling resolved.

    Built once by :meth:`ggrun.Model.prepare` and never changed: whoever runs it keeps
    its own handle for it (a batch's index, a server's)."""

    request: Request
    tokens: list[int]
    sampling: SamplingConfig  # as resolved: preset, family, overrides and the seed drawn
    chat: bool = False  # a chat reply: the thinking split applies
    starts_thinking: bool = False  # the prompt leaves a <think> block open
    grammar: str | None = None  # GBNF for the output (a constraint's, or the tool calls')
    grammar_root: str = "root"
    activation: str | None = None  # when the grammar starts: None (at once), "think"
    # (after the thought) or "tool" (when the model opens a tool call)
    speculative: str = "off"  # where guesses come from: off, lookup, draft or auto
    max_tokens: int | None = None  # the request's, or None (the room left) to think
    run: RunInfo | None = None  # the run's manifest (on its final chunk and result)
    fixed: int = 0  # the prompt's first tokens that later prompts share (a system prompt
    # and its examples): a state worth keeping on disk (ggrun.promptcache)

    @property
    def lazy(self) -> bool:
        return self.activation is not None

    def with_sampling(self, sampling: SamplingConfig) -> Prepared:
        """The same job drawn with other sampling settings (another seed: one of ``n``
        choices, or a redraw); its run manifest names them."""
        run = None if self.run is None else dataclasses.replace(
            self.run, sampling=tuple(sampling.as_dict().items()))  # fmt: skip
        return dataclasses.replace(self, sampling=sampling, run=run)


@dataclass
class Sequence:
    """One running request: its sampler, its text pipeline and its place in the cache."""

    seq: int
    job: Prepared
    sampler: llama.Sampler
    stream: TextStream
    limit: int
    kv: list[int]  # tokens whose cells hold this sequence in the cache, in order
    todo: list[int]  # tokens to decode next: the rest of the prompt, or the last sampled one
    drafts: list[int] = field(default_factory=list)  # guesses after ``todo`` to verify
    prompting: bool = True
    rows: list[int] = field(default_factory=list)  # this step's batch rows with logits
    sampled: list[int] = field(default_factory=list)  # the reply's tokens (no end token)
    out: list[Chunk] = field(default_factory=list)  # chunks not yet taken by a reader
    last: Chunk | None = None  # the final chunk, once finished
    error: GgrunError | None = None
    spec: Speculation | None = None  # where guesses come from (speculative decoding)
    stored: int = 0  # its first tokens whose state the prompt cache holds
    cut: int = 0  # a prompt's fixed part: read in steps of its own, then saved (0: none)
    remember: bool = False  # save the state when it ends (a chat turn)

    @property
    def finished(self) -> bool:
        return self.last is not None

    def drain(self) -> list[Chunk]:
        out, self.out = self.out, []
        return out

    def result(self) -> Result:
        """The whole reply (call once finished)."""
        assert self.last is not None
        r = self.stream.result(self.last)
        r.id = self.job.request.id
        if self.error is not None:
            r.error = str(self.error)
        return r


class Decoder:
    """Steps the sequences of one context; see the module docstring."""

    def __init__(
        self,
        ctx: llama.Context,
        is_end: Callable[[int], bool],
        draft: speculative.DraftModel | None = None,
        memory: speculative.Memory | None = None,
        store: PromptCache | None = None,
    ) -> None:
        self.ctx = ctx
        self.store = store  # prompt states on disk, shared with other processes
        self.is_end = is_end
        self.draft = draft
        self.memory = memory  # the model's earlier replies, for guesses
        # no more rows than the context's n_batch: llama.cpp aborts on a larger batch
        self.batch = llama.Batch(ctx.n_batch)
        self.seqs: dict[int, Sequence] = {}
        self.tokens_generated = 0
        self.costs = speculative.CostModel()  # what verifying n tokens costs here
        self.drafted = 0  # guessed tokens, all sequences
        self.accepted = 0
        self._paused_told = False

    def close(self) -> None:
        for s in list(self.seqs.values()):
            s.sampler.close()
        self.seqs.clear()
        self.batch.close()

    # -- sequences ------------------------------------------------------------
    def start(
        self,
        seq: int,
        job: Prepared,
        *,
        kept: list[int] | None = None,
        on_chunk: Callable[[Chunk], Any] | None = None,
        remember: bool = False,
    ) -> Sequence:
        """Start ``job`` as sequence ``seq``; ``kept`` are its cells already in the cache
        (a prefix of the prompt: only the rest is decoded). A longer prefix in the prompt
        cache is loaded instead; with ``remember``, the state at the end is saved there."""
        if seq in self.seqs:
            raise GgrunError(f"sequence {seq} is busy")
        kept = list(kept or [])
        stored = 0
        if self.store is not None:
            kept, stored = self._restore(seq, job, kept)
        n_keep = len(kept)
        room = self.ctx.seq_ctx - len(job.tokens)
        req = job.request
        limit = room if job.max_tokens is None else min(job.max_tokens, room)
        self.ctx.drop(seq, n_keep)
        sampler = llama.Sampler(
            job.sampling, self.ctx, job.grammar, root=job.grammar_root, lazy=job.lazy
        )
        stream = TextStream(
            self.ctx.weights.token_bytes,
            n_prompt=len(job.tokens),
            n_cached=n_keep,
            stop=req.stop,
            split_thinking=job.chat,
            starts_in_thinking=job.starts_thinking,
            tools=req.offered_tools,
            must_call=req.tool_choice.mode not in ("auto", "none"),
            on_chunk=on_chunk,
            run=job.run,
        )
        s = Sequence(seq, job, sampler, stream, limit, kv=kept, todo=job.tokens[n_keep:])
        s.stored, s.remember = stored, remember and self.store is not None
        fixed = min(job.fixed, len(job.tokens) - 1)
        if fixed > n_keep and fixed >= promptcache.SAVE_MIN:
            s.cut = fixed
        if job.starts_thinking and self._over_budget(s):  # a budget of 0: no thought
            self._end_thought(s)
        if job.speculative != "off":
            mode = job.speculative if self.draft is not None else "lookup"  # no draft here
            memory = self.memory if job.request.memory else None
            s.spec = speculative.Speculation(
                mode, job.tokens, self.costs, self.draft, memory,
                self.ctx.weights.token_bytes, self.ctx.weights.tokenize, sampler.forced_after,
            )  # fmt: skip
        self.seqs[seq] = s
        if limit <= 0:
            self._finish(s, "length")
        return s

    def release(self, s: Sequence, *, keep: bool = False) -> list[int]:
        """Free a sequence's slot; return the tokens its cells hold (dropped unless ``keep``)."""
        s.sampler.close()
        self.seqs.pop(s.seq, None)
        if self.memory is not None and s.finished and s.job.request.memory:
            self.memory.learn(s.sampled)
        new = len(s.kv) - s.stored
        if s.remember and s.finished and s.error is None and new >= promptcache.REMEMBER_MIN:
            self._save(s)
        if not keep:
            self.ctx.drop(s.seq, 0)
            return []
        return s.kv

    @property
    def active(self) -> int:
        return len(self.seqs)

    # -- the prompt cache -----------------------------------------------------
    def _restore(self, seq: int, job: Prepared, kept: list[int]) -> tuple[list[int], int]:
        """The cells to start from: ``kept``, or a longer stored prefix loaded into
        ``seq``; and how many first tokens the store holds."""
        assert self.store is not None
        tokens = job.tokens
        found = self.store.find(tokens)
        if found is None:
            return kept, 0
        entry, n = found
        n = min(n, len(tokens) - 1)  # the last prompt token is decoded for its logits
        if n < len(entry.tokens):  # a cut inside a stored prompt's step: the cells after
            n = min(n, job.fixed)  # the fixed part would differ from a fresh read's rows
        if n < len(kept) + promptcache.LOAD_MIN or len(entry.tokens) > self.ctx.seq_ctx:
            return kept, min(n, len(kept))
        data = self.store.read(entry)
        if data is None:
            return kept, 0
        if not self.ctx.load_seq_state(seq, data):
            self.store.discard(entry.path, "llama.cpp could not load it")
            return [], 0
        self.ctx.drop(seq, n)
        logger.info("prompt cache: %d of %d prompt tokens loaded", n, len(tokens))
        return tokens[:n], n

    def warm(self, seq: int, tokens: list[int]) -> bool:
        """Read ``tokens`` into ``seq`` in the steps a prompt's are read in, save their
        state to the prompt cache and free ``seq`` (a batch's shared fixed part, read
        once for all its lines). False when the cache holds them already, or none."""
        if self.store is None or seq in self.seqs or len(tokens) >= self.ctx.seq_ctx:
            return False
        found = self.store.find(tokens)
        if found is not None and found[1] == len(tokens):
            return False
        self.ctx.drop(seq, 0)
        b = self.batch
        for start in range(0, len(tokens), b.capacity):
            b.clear()
            chunk = tokens[start : start + b.capacity]
            for i, t in enumerate(chunk):
                b.add(t, start + i, seq, i == len(chunk) - 1)
            self.ctx.decode(b)
        self.store.save(tokens, self.ctx.seq_state(seq))
        self.ctx.drop(seq, 0)
        return True

    def _save(self, s: Sequence) -> None:
        assert self.store is not None
        if self.store.save(s.kv, self.ctx.seq_state(s.seq)) is not None:
            s.stored = len(s.kv)

    # -- the step -------------------------------------------------------------
    def step(self) -> list[Sequence]:
        """Decode once for every running sequence; return the ones that finished."""
        live = [s for s in self.seqs.values() if not s.finished]
        if not live:
            return []
        solo = len(live) == 1 and not live[0].prompting  # a clean measure of the cost
        self._fill(live)
        t0 = time.perf_counter()
        self.ctx.decode(self.batch)
        if solo:
            self.costs.observe(self.batch.n, time.perf_counter() - t0)
        for s in live:
            if s.cut and len(s.kv) == s.cut:  # its fixed part is read: keep it
                s.cut = 0
                if self.store is not None:
                    self._save(s)
        done = []
        for s in live:
            if s.rows:
                self._advance(s)
            if s.finished:
                done.append(s)
        self._guess([s for s in live if not s.finished])
        return done

    def _guess(self, live: list[Sequence]) -> None:
        """Drafts for the next step, while one sequence has the compute to itself."""
        wants = [s for s in live if s.spec is not None and not s.prompting]
        if not wants:
            return
        if len(live) > 1:
            if not self._paused_told:
                logger.info("speculative decoding pauses while several sequences share a step")
                self._paused_told = True
            return
        s = wants[0]
        assert s.spec is not None
        room = min(
            self.ctx.seq_ctx - len(s.kv) - len(s.todo) - 1,  # cells left
            s.limit - s.stream.n_generated - 1,  # tokens still wanted after the pending one
            self.batch.capacity - len(s.todo),  # rows left in a step
        )
        if room > 0:
            forced = self._forced(s, room)
            s.drafts = s.spec.guess(s.kv + s.todo, room, forced, s.sampler.admitted)

    def _forced(self, s: Sequence, room: int) -> list[int]:
        """The tokens of the text the sequence's grammar lets come next (none without
        an active grammar)."""
        if not s.sampler.grammar_active or not s.todo:
            return []
        w = self.ctx.weights
        text = s.sampler.forced(w.token_text(s.todo[-1]))
        tokens = w.tokenize(text) if text else []
        if s.sampler.forced_end and 0 <= w.eos < w.n_vocab:  # the end of the reply next
            tokens.append(w.eos)
        return tokens[:room]

    def _fill(self, live: list[Sequence]) -> None:
        b = self.batch
        b.clear()
        for s in live:  # generating sequences first: their token and its drafts
            s.rows = []
            if s.prompting:
                continue
            base, first = len(s.kv), len(s.todo) - 1  # forced tokens need no logits
            if len(s.todo) > b.room:  # forced tokens (a thought's end) beyond the rows left:
                n = min(b.room, first)  # read some now, the last one (with logits) later
                for i in range(n):
                    b.add(s.todo[i], base + i, s.seq, False)
                s.kv += s.todo[:n]
                s.todo, s.drafts = s.todo[n:], []
                continue
            s.drafts = s.drafts[: b.room - len(s.todo)]
            for i, t in enumerate([*s.todo, *s.drafts]):
                row = b.add(t, base + i, s.seq, i >= first)
                if i >= first:
                    s.rows.append(row)
        for s in live:  # then prompt tokens, as many as fit
            if not s.prompting or not b.room:
                continue
            n = min(b.room, len(s.todo))
            if s.cut > len(s.kv):  # the fixed part's steps end at its end, so that its
                n = min(n, s.cut - len(s.kv))  # cells are the same read fresh or loaded
            base = len(s.kv)
            for i in range(n):
                last = i == len(s.todo) - 1
                row = b.add(s.todo[i], base + i, s.seq, last)
                if last:
                    s.rows.append(row)
            s.kv += s.todo[:n]
            s.todo = s.todo[n:]

    def _advance(self, s: Sequence) -> None:
        if s.prompting:
            s.prompting = False
            if s.spec is not None:
                s.spec.begin(s.kv)
            s.stream.prompt_done()
        else:
            s.kv += s.todo
        drafts, s.drafts = s.drafts, []
        accepted = 0
        taken: list[int] = []  # tokens this sequence took this step
        for j, row in enumerate(s.rows):
            try:
                raw = self._raw_logits(s, row)
                token = s.sampler.sample(row)
                if self._starts_a_call(s, token) or self._skips_the_thought(s, token):
                    token = s.sampler.redraw(row)  # under its grammar: a call, or no thought
            except GgrunError as e:
                s.error = e
                self._finish(s, "error")
                break
            if self._take(s, token, None if raw is None else self._logprob(raw, token, s)):
                break
            taken.append(token)
            if j < len(drafts) and token == drafts[j]:
                accepted += 1
                s.kv.append(token)
                continue
            s.todo = [token]
            if self._over_budget(s):
                taken += self._end_thought(s)
            break
        if drafts and s.spec is not None:  # counted on real guesses, not their padding
            guessed = min(len(drafts), s.spec.guessed)
            held = min(accepted, guessed)
            self.drafted += guessed
            self.accepted += held
            st = s.stream.stats
            st.drafted_tokens += guessed
            st.accepted_tokens += held
            st.forced_tokens += min(held, s.spec.forced)
            s.spec.record(guessed, held)
        if s.spec is not None:
            s.spec.extend(taken)
        n_cells = len(s.kv)
        if accepted < len(drafts) or s.finished:
            self.ctx.drop(s.seq, n_cells)  # cells of rejected guesses

    def _raw_logits(self, s: Sequence, row: int) -> Any:
        """A copy of the row's logits when the request wants logprobs (before any sampler
        changes them in place)."""
        if s.job.request.logprobs is None:
            return None
        return self.ctx.logits(row).copy()

    def _logprob(self, raw: Any, token: int, s: Sequence) -> TokenLogprob:
        import numpy as np

        x = raw.astype(np.float64)
        lse = float(np.log(np.exp(x - x.max()).sum()) + x.max())
        n = s.job.request.logprobs or 0
        top = np.argpartition(-x, n)[:n] if n else np.array([], dtype=np.int64)
        top = top[np.argsort(-x[top])]
        w = self.ctx.weights

        def entry(t: int) -> tuple[str, float, tuple[int, ...]]:
            return w.token_text(t), float(x[t] - lse), tuple(w.token_bytes(t))

        text, lp, raw_bytes = entry(token)
        return TokenLogprob(text, lp, raw_bytes, tuple(entry(int(t)) for t in top))

    def _take(self, s: Sequence, token: int, logprob: TokenLogprob | None = None) -> bool:
        """One sampled token through the pipeline; True when the sequence ends here."""
        if self.is_end(token):
            self._finish(s, "stop")
            return True
        self.tokens_generated += 1
        was_thinking, was_calling = s.stream.thinking, s.stream.in_tool_call
        s.sampled.append(token)
        chunk, hit = s.stream.feed(token, logprob)
        if chunk is not None:
            s.out.append(chunk)
        when = s.job.activation
        if when == "think" and was_thinking and not s.stream.thinking:
            s.sampler.activate()  # a lazy grammar starts after the thought
        elif when == "tool" and not was_calling and s.stream.in_tool_call:
            s.sampler.activate(self._tag_tokens(s))  # a call opened after some text
        if hit:
            self._finish(s, "stop")
        elif s.stream.n_generated >= s.limit:
            self._finish(s, "length")
        return s.finished

    def _over_budget(self, s: Sequence) -> bool:
        budget = s.job.request.think_budget
        return budget is not None and s.stream.thinking and s.stream.reasoning_used >= budget

    def _end_thought(self, s: Sequence) -> list[int]:
        """Close a thought that reached its budget the way Qwen3's report does: the
        budget message and ``</think>``, forced after the pending token (they count as
        reasoning), then the model answers."""
        forced = self.ctx.weights.tokenize(THINK_BUDGET_MESSAGE, parse_special=True)
        taken = []
        for token in forced:
            s.sampler.accept(token)
            if self._take(s, token):
                break
            taken.append(token)
        s.todo += taken
        return taken

    def _starts_a_call(self, s: Sequence, token: int) -> bool:
        """Whether a reply that may call tools starts one as text (a bare JSON object or
        a fenced block, as small models do): then it is drawn again under the grammar."""
        return (
            s.job.activation == "tool"
            and not s.sampler.grammar_active
            and s.stream.at_answer_start
            and looks_like_call(self.ctx.weights.token_text(token))
        )

    def _skips_the_thought(self, s: Sequence, token: int) -> bool:
        """Whether a reply whose grammar waits for the end of the thought answers without
        one (a thinking model need not think): then the grammar applies from this token."""
        if s.job.activation != "think" or s.sampler.grammar_active or not s.stream.at_answer_start:
            return False
        text = self.ctx.weights.token_text(token).strip()
        return bool(text) and not THINK_OPEN.startswith(text)

    def _tag_tokens(self, s: Sequence) -> list[int]:
        """The last tokens that spell the ``<tool_call>`` just opened (after blanks)."""
        tokens = s.sampled[-16:]
        for k in range(1, len(tokens) + 1):
            text = self.ctx.weights.detokenize(tokens[-k:])
            at = text.find(OPEN)
            if at >= 0:
                return tokens[-k:] if not text[:at].strip() else []
        return []

    def _finish(self, s: Sequence, reason: str) -> None:
        if reason == "length" and s.limit < (s.job.max_tokens or s.limit + 1):
            logger.warning(
                "the reply was cut short by the context (%d tokens); a larger --ctx, or "
                "--cache-type q8_0 for twice the tokens in the same memory, gives more room",
                self.ctx.seq_ctx,
            )
        s.todo = []
        s.last = s.stream.finish(reason)
        s.out.append(s.last)
