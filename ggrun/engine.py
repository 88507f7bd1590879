"""The model: owns the llama.cpp model and context; :meth:`Model.stream` is the primitive.

Everything that generates text (``generate``, ``chat``, :class:`ggrun.Chat`, the CLI)
is a loop over :meth:`Model.stream`, which yields small :class:`Chunk` dataclasses.
It drives llama.cpp through llama-cpp-python's low-level bindings: one native decode
per token and a native sampler chain, with no copy of the logits into Python. That is
what lets it match native llama.cpp speed, where the high-level ``Llama`` loses ~8%.

The file is validated in Python (:mod:`ggrun.gguffile`) before llama.cpp opens it.
llama.cpp's log output is silenced unless ``verbose=True``. Native memory is freed
deterministically by :meth:`Model.close` (or ``with ggrun.load(...) as model``).
"""

from __future__ import annotations

import codecs
import contextlib
import ctypes
import dataclasses
import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from ggrun.llama import route_llama_log
from ggrun import hardware, planner, sampling, structured, templates
from ggrun.errors import (
    ContextOverflow,
    GgrunError,
    InvalidArgument,
    InvalidModelFile,
    UnsupportedArchitecture,
)
from ggrun.gguffile import GGUFInfo, read_gguf
from ggrun.hardware import Hardware, detect_hardware
from ggrun.planner import Plan
from ggrun.sampling import SamplingConfig

logger = logging.getLogger(__name__)

DEFAULT_CTX = 4096


@dataclass(frozen=True)
class LoadConfig:
    """How to load a model. ``None`` means: decided from the model and the machine."""

    n_ctx: int | None = None  # default: min(training context, 4096)
    n_threads: int | None = None  # generation threads; default: physical cores
    n_threads_batch: int | None = None  # prompt threads; default: logical cores
    n_batch: int = 512
    n_gpu_layers: int = 0
    use_mmap: bool = True
    extra_buffers: bool | None = None  # weight repacking (REPACK/AMX); None: safe default
    verbose: bool = False

    def __post_init__(self) -> None:
        if self.n_ctx is not None and self.n_ctx < 16:
            raise InvalidArgument(f"n_ctx must be at least 16, got {self.n_ctx}")
        for name in ("n_threads", "n_threads_batch"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise InvalidArgument(f"{name} must be at least 1, got {v}")
        if self.n_batch < 1:
            raise InvalidArgument(f"n_batch must be at least 1, got {self.n_batch}")

    @classmethod
    def from_plan(cls, plan: Plan, **extra: Any) -> LoadConfig:
        """Load exactly as ``plan`` says; ``extra`` sets the other fields."""
        return cls(
            n_ctx=plan.n_ctx,
            n_threads=plan.n_threads,
            n_threads_batch=plan.n_threads_batch,
            n_batch=plan.n_batch,
            n_gpu_layers=plan.n_gpu_layers,
            use_mmap=plan.use_mmap,
            **extra,
        )


@dataclass
class Chunk:
    """One step of a stream: new answer text and/or new reasoning text.

    The last chunk has ``finish_reason`` set and carries the final counts and speeds.
    """

    text: str = ""
    reasoning: str = ""
    token: int | None = None
    finish_reason: str | None = None  # "stop" or "length" on the last chunk
    prompt_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens reused from the KV cache
    completion_tokens: int = 0
    prompt_tps: float = 0.0
    generation_tps: float = 0.0
    ttft: float = 0.0  # seconds from the start of the stream to the first token


@dataclass
class Result:
    """A finished generation."""

    text: str
    finish_reason: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    prompt_tps: float = 0.0
    generation_tps: float = 0.0
    ttft: float = 0.0
    reasoning: str | None = None
    data: Any = None

    @classmethod
    def from_last(
        cls, last: Chunk, text: str, reasoning: str, default_finish: str = "stop"
    ) -> Self:
        """A result from the stream's text, its reasoning and its last chunk's counts."""
        return cls(
            text=text,
            finish_reason=last.finish_reason or default_finish,
            prompt_tokens=last.prompt_tokens,
            completion_tokens=last.completion_tokens,
            cached_tokens=last.cached_tokens,
            prompt_tps=last.prompt_tps,
            generation_tps=last.generation_tps,
            ttft=last.ttft,
            reasoning=reasoning.strip() or None,
        )

    @classmethod
    def collect(cls, chunks: Iterator[Chunk]) -> Result:
        text: list[str] = []
        reasoning: list[str] = []
        last = Chunk()
        for c in chunks:
            text.append(c.text)
            reasoning.append(c.reasoning)
            last = c
        return cls.from_last(last, "".join(text), "".join(reasoning))


def check_architecture(info: GGUFInfo) -> None:
    """Refuse architectures llama.cpp does not know (gguf-py's MODEL_ARCH table)."""
    from gguf.constants import MODEL_ARCH_NAMES

    if info.arch not in set(MODEL_ARCH_NAMES.values()):
        raise UnsupportedArchitecture(
            f"{info.path}: architecture {info.arch!r} is not supported by llama.cpp"
        )


class Model:
    """A loaded GGUF model with one llama.cpp context (sequence 0)."""

    def __init__(
        self,
        path: str | Path,
        config: LoadConfig | None = None,
        *,
        family: str = "",
        plan: Plan | None = None,
        info: GGUFInfo | None = None,
    ) -> None:
        import llama_cpp as ll

        self._ll = ll
        self.config = config or LoadConfig()
        self.path = Path(path)
        self.plan = plan  # how ggrun.load decided to run it (None for a bare Model())
        self.info: GGUFInfo = info or read_gguf(self.path)
        check_architecture(self.info)
        self.family = family or self.info.arch
        self._stack = ExitStack()
        route_llama_log(self.config.verbose)
        ll.llama_backend_init()

        mparams = ll.llama_model_default_params()
        mparams.n_gpu_layers = self.config.n_gpu_layers
        mparams.use_mmap = self.config.use_mmap
        extra = self.config.extra_buffers
        mparams.use_extra_bufts = hardware.extra_buffers_safe() if extra is None else extra
        model = ll.llama_model_load_from_file(str(self.path).encode(), mparams)
        if not model:
            raise InvalidModelFile(
                f"{self.path}: llama.cpp could not load this model "
                f"(architecture {self.info.arch!r}); run with --verbose "
                "to see why"
            )
        self._model = model
        self._stack.callback(ll.llama_model_free, model)
        self._vocab_ptr = ll.llama_model_get_vocab(model)

        self.n_ctx_train = int(ll.llama_model_n_ctx_train(model))
        n_ctx = self.config.n_ctx or min(self.n_ctx_train or DEFAULT_CTX, DEFAULT_CTX)
        cparams = ll.llama_context_default_params()
        cparams.n_ctx = n_ctx
        cparams.n_batch = min(self.config.n_batch, n_ctx)
        cparams.n_ubatch = min(self.config.n_batch, n_ctx)
        cparams.n_seq_max = 1
        cparams.n_threads = self.config.n_threads or hardware.generation_threads()
        cparams.n_threads_batch = self.config.n_threads_batch or hardware.batch_threads()
        cparams.no_perf = True
        ctx = ll.llama_init_from_model(model, cparams)
        if not ctx:
            self.close()
            raise GgrunError(
                f"llama.cpp could not create a context of {n_ctx} tokens for "
                f"{self.path.name} (out of memory?)"
            )
        self._ctx = ctx
        self._stack.callback(ll.llama_free, ctx)
        self.n_ctx = int(ll.llama_n_ctx(ctx))
        self.n_threads = cparams.n_threads
        self.n_threads_batch = cparams.n_threads_batch
        self._n_batch = int(cparams.n_batch)
        self._mem = ll.llama_get_memory(ctx)
        self._cached: list[int] = []  # tokens whose KV entries are in sequence 0
        self._eog = self._end_of_turn_tokens()
        logger.info(
            "loaded %s: %s, ctx %d, threads %d/%d",
            self.path.name,
            self.info.arch,
            self.n_ctx,
            self.n_threads,
            self.n_threads_batch,
        )

    # -- lifetime -------------------------------------------------------------
    def close(self) -> None:
        self._stack.close()
        self._ctx = None
        self._model = None
        self._vocab_ptr = None

    def _check_open(self) -> None:
        if self._model is None:
            raise GgrunError("the model is closed")

    @property
    def _vocab(self) -> Any:
        """The native vocabulary; raises once the model is closed (never a dangling pointer)."""
        self._check_open()
        return self._vocab_ptr

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # a safety net; close() is the contract
        with contextlib.suppress(Exception):
            self._stack.close()

    # -- tokens -----------------------------------------------------------------
    def tokenize(self, text: str, *, add_special: bool = False) -> list[int]:
        self._check_open()
        ll = self._ll
        raw = text.encode("utf-8")
        cap = len(raw) + 8
        buf = (ll.llama_token * cap)()
        n = ll.llama_tokenize(self._vocab, raw, len(raw), buf, cap, add_special, True)
        if n < 0:  # buffer too small: -n is the size needed
            cap = -n
            buf = (ll.llama_token * cap)()
            n = ll.llama_tokenize(self._vocab, raw, len(raw), buf, cap, add_special, True)
        if n < 0:
            raise GgrunError("llama.cpp failed to tokenize the prompt")
        return list(buf[:n])

    def token_bytes(self, token: int) -> bytes:
        self._check_open()
        buf = ctypes.create_string_buffer(64)
        n = self._ll.llama_token_to_piece(self._vocab, token, buf, 64, 0, True)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = self._ll.llama_token_to_piece(self._vocab, token, buf, -n, 0, True)
        return buf.raw[: max(n, 0)]

    def detokenize(self, tokens: Sequence[int]) -> str:
        return b"".join(self.token_bytes(t) for t in tokens).decode("utf-8", errors="replace")

    def _token_text(self, token: int) -> str:
        return self.token_bytes(token).decode("utf-8", errors="replace")

    def _end_of_turn_tokens(self) -> frozenset[int]:
        ll = self._ll
        n_vocab = int(ll.llama_vocab_n_tokens(self._vocab))
        eog = {
            t
            for t in (ll.llama_vocab_eos(self._vocab), ll.llama_vocab_eot(self._vocab))
            if 0 <= t < n_vocab
        }
        template = self.info.chat_template or templates.CHATML
        for marker in templates.END_OF_TURN_MARKERS:
            if marker in template:
                toks = self.tokenize(marker)
                if len(toks) == 1:
                    eog.add(toks[0])
        return frozenset(eog)

    def is_end(self, token: int) -> bool:
        return token in self._eog or bool(self._ll.llama_vocab_is_eog(self._vocab, token))

    # -- prompts ------------------------------------------------------------------
    def format_chat(
        self,
        messages: Sequence[Any],
        *,
        think: bool | None = None,
        add_generation_prompt: bool = True,
    ) -> str:
        """Render messages with the model's own chat template (ChatML if it has none)."""
        ll = self._ll
        bos = self._token_text(ll.llama_vocab_bos(self._vocab)) if self._has_bos() else ""
        eos = self._token_text(ll.llama_vocab_eos(self._vocab))
        return templates.render(
            self.info.chat_template,
            templates.to_messages(messages),
            add_generation_prompt=add_generation_prompt,
            think=think,
            bos_token=bos,
            eos_token=eos,
        )

    def _has_bos(self) -> bool:
        bos = self._ll.llama_vocab_bos(self._vocab)
        return 0 <= bos < int(self._ll.llama_vocab_n_tokens(self._vocab))

    def tokenize_prompt(self, prompt: str) -> list[int]:
        """Tokenize a full prompt, adding BOS only when the model wants it and it is absent."""
        add_bos = bool(self._ll.llama_vocab_get_add_bos(self._vocab)) and self._has_bos()
        tokens = self.tokenize(prompt, add_special=False)
        bos = self._ll.llama_vocab_bos(self._vocab)
        if add_bos and (not tokens or tokens[0] != bos):
            tokens.insert(0, bos)
        return tokens

    def sampling_for(
        self, think: bool | None = None, preset: str | None = None, **explicit: Any
    ) -> SamplingConfig:
        """Sampling settings for this model: explicit > preset > family preset > default."""
        return sampling.resolve(preset=preset, family=self.family, think=think, **explicit)

    # -- generation -----------------------------------------------------------------
    def stream(
        self,
        prompt: str | Sequence[int],
        *,
        max_tokens: int | None = 256,
        sampling: SamplingConfig | None = None,
        preset: str | None = None,
        stop: Sequence[str] = (),
        keep_cache: bool = False,
        split_thinking: bool = False,
        starts_in_thinking: bool = False,
        grammar: str | None = None,
        grammar_lazy: bool = False,
        **sampling_overrides: Any,
    ) -> Iterator[Chunk]:
        """Stream a raw completion of ``prompt`` (text or token ids).

        ``grammar`` is GBNF text that constrains the output; with ``grammar_lazy`` it
        applies only after ``</think>`` (free to think, strict to answer).
        """
        tokens = self.tokenize_prompt(prompt) if isinstance(prompt, str) else list(prompt)
        cfg = sampling or self.sampling_for(preset=preset, **sampling_overrides)
        if sampling is not None and sampling_overrides:
            cfg = cfg.replace(**{k: v for k, v in sampling_overrides.items() if v is not None})
        return self._run(
            tokens,
            cfg,
            max_tokens=max_tokens,
            stop=tuple(stop),
            keep_cache=keep_cache,
            grammar=grammar,
            lazy_after=structured.THINK_TRIGGER if grammar_lazy else None,
            splitter=templates.ThinkSplitter(starts_in_thinking) if split_thinking else None,
        )

    def generate(self, prompt: str | Sequence[int], **kwargs: Any) -> Result:
        """A raw completion, collected. Same arguments as :meth:`stream`, plus the
        structured-output options ``json``, ``schema``, ``response_format``, ``format``
        and ``columns`` (see :mod:`ggrun.structured`); then ``Result.data`` holds the
        parsed, validated value."""
        constraint = _pop_constraint(kwargs)
        if constraint is not None:
            kwargs["grammar"] = constraint.grammar
        return check_structured(Result.collect(self.stream(prompt, **kwargs)), constraint)

    def chat_stream(
        self, messages: Sequence[Any], *, think: bool | None = None, **kwargs: Any
    ) -> Iterator[Chunk]:
        """Stream an assistant reply to ``messages`` (role/content dicts)."""
        return self.reply_stream(self.format_chat(messages, think=think), think=think, **kwargs)

    def reply_stream(
        self,
        prompt: str,
        *,
        tokens: list[int] | None = None,
        think: bool | None = None,
        preset: str | None = None,
        sampling: SamplingConfig | None = None,
        **kwargs: Any,
    ) -> Iterator[Chunk]:
        """Stream the reply to a chat prompt already rendered by :meth:`format_chat`."""
        if kwargs.get("grammar") is not None and "grammar_lazy" not in kwargs:
            kwargs["grammar_lazy"] = self.may_think(prompt, think)
        overrides = {k: kwargs.pop(k) for k in list(kwargs) if k in _SAMPLING_FIELDS}
        cfg = sampling or self.sampling_for(think=think, preset=preset, **overrides)
        if sampling is not None and overrides:
            cfg = cfg.replace(**{k: v for k, v in overrides.items() if v is not None})
        return self.stream(
            prompt if tokens is None else tokens,
            sampling=cfg,
            split_thinking=True,
            starts_in_thinking=templates.starts_in_thinking(prompt),
            **kwargs,
        )

    def chat(self, messages: Sequence[Any], **kwargs: Any) -> Result:
        """An assistant reply to ``messages``, collected. See :meth:`chat_stream` and, for
        structured output, :meth:`generate`."""
        constraint = _pop_constraint(kwargs)
        if constraint is not None:
            kwargs["grammar"] = constraint.grammar
        return check_structured(Result.collect(self.chat_stream(messages, **kwargs)), constraint)

    def batch_stream(
        self, items: Sequence[Any], *, parallel: int = 8, **kwargs: Any
    ) -> Iterator[Any]:
        """Run many prompts (strings), message lists or dicts together, up to ``parallel``
        at once (continuous batching, :mod:`ggrun.batch`); yield each result as it
        finishes. ``result.id`` is the input's position unless a dict gave an ``id``;
        a request that failed on its own has ``error`` set."""
        from ggrun.batch import run_batch  # the batch engine sits on top of Model

        return (r for _, r in run_batch(self, items, parallel=parallel, **kwargs))

    def batch(self, items: Sequence[Any], *, parallel: int = 8, **kwargs: Any) -> list[Any]:
        """:meth:`batch_stream`, collected in input order."""
        from ggrun.batch import run_batch

        done = dict(run_batch(self, items, parallel=parallel, **kwargs))
        return [done[i] for i in range(len(done))]

    def run_task(self, name: str, text: str, **overrides: Any) -> Result:
        """Run a few-shot task preset (``presets/tasks/NAME.yaml`` or a path) on ``text``."""
        from ggrun.tasks import run_task

        return run_task(self, name, text, **overrides)  # type: ignore[no-any-return]

    def may_think(self, prompt: str, think: bool | None) -> bool:
        """Whether the reply to ``prompt`` may start with a ``<think>`` block."""
        template = self.info.chat_template or ""
        if think is False or templates.THINK_OPEN not in template:
            return False
        tail = prompt[prompt.rfind("<|im_start|>") :] if "<|im_start|>" in prompt else prompt
        return templates.THINK_CLOSE not in tail or templates.starts_in_thinking(prompt)

    def reset(self) -> None:
        """Forget everything the KV cache holds."""
        self._check_open()
        self._reset_to(0)

    @property
    def kv_tokens(self) -> list[int]:
        """The tokens whose keys and values the context holds now (sequence 0)."""
        return list(self._cached)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenize_prompt(text))

    # -- the loop -------------------------------------------------------------------
    def _decode(self, tokens: list[int], start: int) -> None:
        """Decode ``tokens[start:]`` into sequence 0 in chunks of n_batch."""
        ll = self._ll
        n = len(tokens) - start
        if n <= 0:
            return
        arr = (ll.llama_token * n)(*tokens[start:])
        base = ctypes.addressof(arr)
        size = ctypes.sizeof(ll.llama_token)
        for i in range(0, n, self._n_batch):
            m = min(self._n_batch, n - i)
            ptr = ctypes.cast(base + i * size, ctypes.POINTER(ll.llama_token))
            rc = ll.llama_decode(self._ctx, ll.llama_batch_get_one(ptr, m))
            if rc != 0:
                self._reset_to(len(self._cached))
                raise GgrunError(
                    f"llama.cpp failed to decode (code {rc}): the context is full or memory ran out"
                )
            self._cached.extend(tokens[start + i : start + i + m])

    def _reset_to(self, n_keep: int) -> None:
        if n_keep <= 0:
            self._ll.llama_memory_clear(self._mem, True)
            self._cached = []
        else:
            self._ll.llama_memory_seq_rm(self._mem, 0, n_keep, -1)
            del self._cached[n_keep:]

    def _run(
        self,
        tokens: list[int],
        cfg: SamplingConfig,
        *,
        max_tokens: int | None,
        stop: tuple[str, ...],
        keep_cache: bool,
        grammar: str | None,
        splitter: templates.ThinkSplitter | None,
        lazy_after: str | None = None,
    ) -> Iterator[Chunk]:
        self._check_open()
        if not tokens:
            raise InvalidArgument("the prompt is empty")
        n_prompt = len(tokens)
        if n_prompt >= self.n_ctx:
            raise ContextOverflow(
                f"the prompt has {n_prompt} tokens but the context holds {self.n_ctx} "
                f"(and needs room for at least one new token); shorten it or raise n_ctx",
                n_tokens=n_prompt,
                n_ctx=self.n_ctx,
            )
        if max_tokens is not None and max_tokens < 0:
            raise InvalidArgument(f"max_tokens must be >= 0, got {max_tokens}")
        room = self.n_ctx - n_prompt
        limit = room if max_tokens is None else min(max_tokens, room)
        return self._loop(tokens, cfg, limit, stop, keep_cache, grammar, splitter, lazy_after)

    def _loop(
        self,
        tokens: list[int],
        cfg: SamplingConfig,
        limit: int,
        stop: tuple[str, ...],
        keep_cache: bool,
        grammar: str | None,
        splitter: templates.ThinkSplitter | None,
        lazy_after: str | None,
    ) -> Iterator[Chunk]:
        ll = self._ll
        n_prompt = len(tokens)
        n_keep = 0
        if keep_cache:
            for a, b in zip(self._cached, tokens, strict=False):
                if a != b:
                    break
                n_keep += 1
            n_keep = min(n_keep, n_prompt - 1)  # re-decode at least one token for logits
        self._reset_to(n_keep)

        sampler = sampling.Sampler(cfg, self._vocab, self._ctx, grammar, lazy_after)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        stopper = StopMatcher(stop)
        stats = Chunk(prompt_tokens=n_prompt, cached_tokens=n_keep)
        try:
            t0 = time.perf_counter()
            self._decode(tokens, n_keep)
            t_prompt = time.perf_counter() - t0
            stats.prompt_tps = (n_prompt - n_keep) / t_prompt if t_prompt > 0 else 0.0
            gen_time = 0.0
            finish = "length"
            one = (ll.llama_token * 1)()
            one_ptr = ctypes.cast(one, ctypes.POINTER(ll.llama_token))
            n_gen = 0
            while n_gen < limit:
                t1 = time.perf_counter()
                token = sampler.sample()
                if not n_gen:
                    stats.ttft = time.perf_counter() - t0
                if self.is_end(token):
                    gen_time += time.perf_counter() - t1
                    finish = "stop"
                    break
                n_gen += 1
                text = decoder.decode(self.token_bytes(token))
                one[0] = token
                rc = ll.llama_decode(self._ctx, ll.llama_batch_get_one(one_ptr, 1))
                if rc != 0:
                    raise GgrunError(f"llama.cpp failed to decode (code {rc})")
                self._cached.append(token)
                gen_time += time.perf_counter() - t1
                text, hit = stopper.feed(text)
                answer, thought = splitter.feed(text) if splitter else (text, "")
                stats.completion_tokens = n_gen
                stats.generation_tps = n_gen / gen_time if gen_time > 0 else 0.0
                if answer or thought:
                    yield _delta(stats, answer, thought, token)
                if hit:
                    finish = "stop"
                    break
            tail = decoder.decode(b"", final=True) + stopper.flush()
            answer, thought = splitter.feed(tail) if splitter else (tail, "")
            if splitter:
                a2, t2 = splitter.flush()
                answer, thought = answer + a2, thought + t2
            stats.completion_tokens = n_gen
            stats.generation_tps = n_gen / gen_time if gen_time > 0 else 0.0
            last = _delta(stats, answer, thought, None)
            last.finish_reason = finish
            yield last
        finally:
            sampler.close()


_SAMPLING_FIELDS = frozenset(sampling.SAMPLING_FIELDS)
_STRUCTURED = ("json", "schema", "response_format", "format", "columns")


def _pop_constraint(kwargs: dict[str, Any]) -> structured.Constraint | None:
    """Take the structured-output options out of ``kwargs``; return their constraint."""
    opts = {k: kwargs.pop(k) for k in _STRUCTURED if k in kwargs}
    grammar = kwargs.get("grammar")
    if isinstance(grammar, structured.Constraint):
        kwargs.pop("grammar")
        return grammar
    if not any(v not in (None, False) for v in opts.values()):
        return None
    return structured.from_options(
        json_mode=bool(opts.get("json")),
        schema=opts.get("schema"),
        response_format=opts.get("response_format"),
        fmt=opts.get("format"),
        columns=opts.get("columns"),
    )


def check_structured(result: Result, constraint: structured.Constraint | None) -> Result:
    """Parse a constrained result; a cut-off one is an error, never passed off as valid."""
    if constraint is None:
        return result
    if result.finish_reason == "length":
        raise structured.IncompleteOutput(
            f"the output was cut off after {result.completion_tokens} tokens "
            "(finish_reason=length) before it was complete; raise max_tokens",
            result,
        )
    result.data = constraint.parse(result.text)
    return result


def _delta(stats: Chunk, text: str, reasoning: str, token: int | None) -> Chunk:
    return dataclasses.replace(stats, text=text, reasoning=reasoning, token=token)


@dataclass
class StopMatcher:
    """Cut the stream at the first stop string, holding back possible partial matches."""

    stops: tuple[str, ...]
    pending: str = ""
    hold: int = field(init=False)

    def __post_init__(self) -> None:
        self.stops = tuple(s for s in self.stops if s)
        self.hold = max((len(s) for s in self.stops), default=1) - 1

    def feed(self, text: str) -> tuple[str, bool]:
        if not self.stops:
            return text, False
        self.pending += text
        cut = min((i for i in (self.pending.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            out, self.pending = self.pending[:cut], ""
            return out, True
        keep = len(self.pending) - self.hold if self.hold else len(self.pending)
        out, self.pending = self.pending[: max(keep, 0)], self.pending[max(keep, 0) :]
        return out, False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


def load(
    model: str | Path | None = None,
    *,
    n_ctx: int | None = None,
    n_threads: int | None = None,
    device: str | None = None,
    gpu_layers: int | str | None = None,
    use_mmap: bool | None = None,
    hardware: Hardware | None = None,
    verbose: bool = False,
    config: LoadConfig | None = None,
    **load_options: Any,
) -> Model:
    """Load a model from a path or an alias; ``None`` picks the default model.

    Device, GPU layers, threads, context and mmap come from :func:`ggrun.plan`
    unless given; a value that cannot work raises before llama.cpp allocates.
    ``config`` skips the plan and loads exactly as told. Other keywords
    (``n_batch``, ``n_threads_batch``, ``extra_buffers``) go to :class:`LoadConfig`.
    """
    from ggrun import models

    if model is None:
        ref, notice = models.default_model()
        if notice:
            logger.warning("%s", notice)
    else:
        ref = str(model)
    path = models.resolve(ref)
    family = models.family_of(ref)
    if config is not None:
        return Model(path, config, family=family)
    info = read_gguf(path)
    check_architecture(info)
    p = planner.plan(
        planner.ModelShape.from_gguf(info),
        hardware or detect_hardware(),
        n_ctx=n_ctx,
        device=device,
        gpu_layers=gpu_layers,
        n_threads=n_threads,
        n_threads_batch=load_options.pop("n_threads_batch", None),
        n_batch=load_options.pop("n_batch", planner.DEFAULT_BATCH),
        use_mmap=use_mmap,
    )
    for note in p.notes:
        logger.warning("%s", note)
    logger.info("plan: %s", p.summary())
    cfg = LoadConfig.from_plan(p, verbose=verbose, **load_options)
    return Model(path, cfg, family=family, plan=p, info=info)
