"""Continuous batching: many sequences decoded together in one llama.cpp context.

Generating one sequence reads every weight once per token; decoding ``parallel``
sequences in one ``llama_decode`` reads them once for all. :class:`Batcher` owns a
second llama.cpp context on the model's weights, with ``n_seq_max = parallel`` and a
KV cache of ``parallel × slot_ctx`` cells (not unified: each sequence has its own
``slot_ctx`` cells, llama.cpp's ``kv_unified = false``). Each request takes a free
slot (a sequence id) with its own sampler: its own seed, penalties and grammar. Every
step decodes one token for each generating slot plus as many prompt tokens of newly
admitted requests as fit in ``n_batch``. A finished sequence frees its cells and its
slot at once, and the next request takes it.

Determinism: the sampler of a request does not depend on its neighbours, so the same
seed gives the same choices. The logits do, slightly: llama.cpp's CPU matrix kernels
take a different path (and summation order) for a batch of several rows than for
one, so in rare near-ties greedy decoding in a batch can pick a different token than
``Model.generate`` alone. ``tests/test_batch.py`` measures how often.

A request that cannot run (a prompt longer than its slot, an invalid schema) becomes
a result with ``error`` set; it never stops the batch.
"""

from __future__ import annotations

import codecs
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ggrun import sampling, structured, templates
from ggrun.engine import Chunk, Model, Result, StopMatcher, check_structured
from ggrun.errors import ContextOverflow, GgrunError, InsufficientMemory, InvalidArgument

logger = logging.getLogger(__name__)

SLOT_STEP = 256  # slot contexts are rounded up to a multiple of this


@dataclass
class Request:
    """One prompt (raw completion) or one message list (chat reply)."""

    prompt: str | None = None
    messages: list[dict[str, Any]] | None = None
    id: Any = None
    max_tokens: int | None = 256
    think: bool | None = None
    stop: tuple[str, ...] = ()
    options: dict[str, Any] = field(default_factory=dict)  # sampling, json, schema, format
    on_chunk: Callable[[Chunk], Any] | None = None  # called with each new piece of text


@dataclass
class BatchResult(Result):
    """A :class:`~ggrun.Result` with the request's ``id`` and, if it failed, ``error``."""

    id: Any = None
    error: str | None = None


@dataclass
class Prepared:
    index: int
    req: Request
    tokens: list[int]
    cfg: sampling.SamplingConfig
    constraint: structured.Constraint | None
    chat: bool
    starts_thinking: bool
    lazy: bool


@dataclass
class _Slot:
    seq: int
    job: Prepared
    sampler: sampling.Sampler
    limit: int
    splitter: templates.ThinkSplitter | None
    stopper: Any
    decoder: Any = field(default_factory=lambda: codecs.getincrementaldecoder("utf-8")("replace"))
    n_past: int = 0  # tokens of this sequence in the KV cache
    pending: int | None = None  # a sampled token to decode next step
    n_gen: int = 0
    text: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    logits_at: int = -1  # this step's batch row with its logits
    t0: float = field(default_factory=time.perf_counter)
    t_first: float = 0.0


def prepare(model: Model, index: int, req: Request) -> Prepared:
    """Render and tokenize a request and resolve its sampling; raise if it cannot run."""
    m = model
    opts = dict(req.options)
    constraint = structured.from_options(
        json_mode=bool(opts.pop("json", False)),
        schema=opts.pop("schema", None),
        response_format=opts.pop("response_format", None),
        fmt=opts.pop("format", None),
        columns=opts.pop("columns", None),
    )
    preset = opts.pop("preset", None)
    unknown = set(opts) - set(sampling.SAMPLING_FIELDS)
    if unknown:
        raise InvalidArgument(f"unknown option(s): {', '.join(sorted(unknown))}")
    if req.messages is not None:
        prompt = m.format_chat(req.messages, think=req.think)
        cfg = m.sampling_for(think=req.think, preset=preset, **opts)
        chat = True
    elif req.prompt is not None:
        prompt, chat = req.prompt, False
        cfg = m.sampling_for(preset=preset, **opts)
    else:
        raise InvalidArgument("a request needs a prompt or messages")
    tokens = m.tokenize_prompt(prompt)
    if not tokens:
        raise InvalidArgument("the prompt is empty")
    lazy = chat and constraint is not None and m.may_think(prompt, req.think)
    starts = chat and templates.starts_in_thinking(prompt)
    return Prepared(index, req, tokens, cfg, constraint, chat, starts, lazy)


class Batcher:
    """Runs requests on ``model`` with up to ``parallel`` sequences at once."""

    def __init__(
        self, model: Model, *, parallel: int = 8, slot_ctx: int = 2048, n_batch: int = 512
    ) -> None:
        import llama_cpp as ll

        if parallel < 1:
            raise InvalidArgument(f"parallel must be at least 1, got {parallel}")
        if slot_ctx < 16:
            raise InvalidArgument(f"the context per slot must be at least 16, got {slot_ctx}")
        model._check_open()
        self._ll = ll
        self.model = model
        self.parallel = parallel
        self.slot_ctx = slot_ctx
        self._check_memory()
        cparams = ll.llama_context_default_params()
        cparams.n_ctx = parallel * slot_ctx
        cparams.n_batch = n_batch
        cparams.n_ubatch = n_batch
        cparams.n_seq_max = parallel
        cparams.kv_unified = False
        cparams.n_threads = model.n_threads
        cparams.n_threads_batch = model.n_threads_batch
        cparams.no_perf = True
        ctx = ll.llama_init_from_model(model._model, cparams)
        if not ctx:
            raise GgrunError(
                f"llama.cpp could not create a batch context of {parallel} x {slot_ctx} tokens"
            )
        self._ctx = ctx
        self._mem = ll.llama_get_memory(ctx)
        self.n_batch = n_batch
        self._batch = ll.llama_batch_init(n_batch, 0, 1)
        self._free = list(range(parallel - 1, -1, -1))
        self._slots: dict[int, _Slot] = {}
        self.tokens_generated = 0
        logger.info("batch context: %d slots of %d tokens", parallel, slot_ctx)

    def _check_memory(self) -> None:
        from ggrun.hardware import detect_hardware
        from ggrun.planner import ModelShape

        shape = ModelShape.from_gguf(self.model.info)
        need = shape.kv_bytes(self.parallel * self.slot_ctx) + shape.compute_bytes(512)
        free = detect_hardware().ram_available
        if free and need > free:
            raise InsufficientMemory(
                f"{self.parallel} slots of {self.slot_ctx} tokens need "
                f"{need / (1 << 30):.2f} GiB of KV cache and buffers, more than the "
                f"{free / (1 << 30):.2f} GiB free; lower --parallel or --max-tokens"
            )

    # -- lifetime -----------------------------------------------------------
    def close(self) -> None:
        for slot in self._slots.values():
            slot.sampler.close()
        self._slots.clear()
        if self._ctx is not None:
            self._ll.llama_batch_free(self._batch)
            self._ll.llama_free(self._ctx)
            self._ctx = None

    def __enter__(self) -> Batcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown
            self.close()

    # -- requests -------------------------------------------------------------
    def _start(self, job: Prepared) -> None:
        if len(job.tokens) >= self.slot_ctx:
            raise ContextOverflow(
                f"the prompt has {len(job.tokens)} tokens but a batch slot holds {self.slot_ctx}",
                n_tokens=len(job.tokens),
                n_ctx=self.slot_ctx,
            )
        grammar = job.constraint.grammar if job.constraint else None
        lazy_after = structured.THINK_TRIGGER if job.lazy else None
        sampler = sampling.Sampler(job.cfg, self.model._vocab, self._ctx, grammar, lazy_after)
        room = self.slot_ctx - len(job.tokens)
        limit = room if job.req.max_tokens is None else min(job.req.max_tokens, room)
        seq = self._free.pop()
        splitter = templates.ThinkSplitter(job.starts_thinking) if job.chat else None
        self._slots[seq] = _Slot(seq, job, sampler, limit, splitter, StopMatcher(job.req.stop))

    @property
    def free_slots(self) -> int:
        return len(self._free)

    @property
    def active(self) -> int:
        return len(self._slots)

    # -- the loop ---------------------------------------------------------------
    def run(
        self, requests: Iterable[Request | Prepared], *, start_index: int = 0
    ) -> Iterator[tuple[int, BatchResult]]:
        """Yield ``(input index, result)`` as each request finishes.

        Requests are taken from the iterable only as slots free up, so it may be a
        lazy reader of a large file.
        """
        it = iter(enumerate(requests, start_index))
        exhausted = False
        while not exhausted or self._slots:
            while self._free and not exhausted:
                nxt = next(it, None)
                if nxt is None:
                    exhausted = True
                    break
                failed = self.admit(*nxt)
                if failed is not None:
                    yield failed
            yield from self.step()

    def admit(self, index: int, req: Request | Prepared) -> tuple[int, BatchResult] | None:
        """Start a request in a free slot; one that cannot run comes back as a failure."""
        if not self._free:
            raise GgrunError("no free batch slot")
        r = req.req if isinstance(req, Prepared) else req
        try:
            job = req if isinstance(req, Prepared) else prepare(self.model, index, req)
            self._start(job)
        except GgrunError as e:
            return index, _failed(r, str(e))
        return None

    def step(self) -> list[tuple[int, BatchResult]]:
        """Decode once for every active slot; return the requests that finished."""
        if not self._slots:
            return []
        self._fill()
        rc = self._ll.llama_decode(self._ctx, self._batch)
        if rc != 0:
            raise GgrunError(f"llama.cpp failed to decode a batch (code {rc})")
        done = []
        for slot in list(self._slots.values()):
            if slot.logits_at >= 0:
                result = self._advance(slot)
                if result is not None:
                    done.append((slot.job.index, result))
        return done

    def _fill(self) -> None:
        b, n = self._batch, 0
        for slot in self._slots.values():  # one token for each generating sequence
            slot.logits_at = -1
            if slot.pending is not None:
                n = self._add(b, n, slot.pending, slot, True)
                slot.pending = None
        for slot in self._slots.values():  # then prompt tokens, as many as fit
            if slot.logits_at >= 0 or slot.n_past >= len(slot.job.tokens):
                continue
            toks = slot.job.tokens
            while n < self.n_batch and slot.n_past < len(toks):
                last = slot.n_past == len(toks) - 1
                n = self._add(b, n, toks[slot.n_past], slot, last)
            if n >= self.n_batch:
                break
        b.n_tokens = n

    def _add(self, b: Any, n: int, token: int, slot: _Slot, logits: bool) -> int:
        b.token[n] = token
        b.pos[n] = slot.n_past
        b.n_seq_id[n] = 1
        b.seq_id[n][0] = slot.seq
        b.logits[n] = logits
        if logits:
            slot.logits_at = n
        slot.n_past += 1
        return n + 1

    def _advance(self, slot: _Slot) -> BatchResult | None:
        m = self.model
        token = slot.sampler.sample(slot.logits_at)
        if not slot.n_gen:
            slot.t_first = time.perf_counter()
        if m.is_end(token):
            return self._finish(slot, "stop")
        slot.n_gen += 1
        self.tokens_generated += 1
        text, hit = slot.stopper.feed(slot.decoder.decode(m.token_bytes(token)))
        self._emit(slot, text)
        if hit:
            return self._finish(slot, "stop")
        if slot.n_gen >= slot.limit:
            return self._finish(slot, "length")
        slot.pending = token
        return None

    def _emit(self, slot: _Slot, text: str) -> None:
        self._record(slot, *(slot.splitter.feed(text) if slot.splitter else (text, "")))

    def _record(self, slot: _Slot, answer: str, thought: str) -> None:
        """Keep a piece of the reply and pass it on to the request's listener."""
        slot.text.append(answer)
        slot.reasoning.append(thought)
        if (answer or thought) and slot.job.req.on_chunk is not None:
            slot.job.req.on_chunk(Chunk(text=answer, reasoning=thought))

    def _finish(self, slot: _Slot, reason: str) -> BatchResult:
        tail = slot.decoder.decode(b"", final=True) + slot.stopper.flush()
        self._emit(slot, tail)
        if slot.splitter:  # text held back as a possible partial tag is the reply's end
            self._record(slot, *slot.splitter.flush())
        now = time.perf_counter()
        t_gen = now - slot.t_first if slot.t_first else 0.0
        last = Chunk(
            finish_reason=reason,
            prompt_tokens=len(slot.job.tokens),
            completion_tokens=slot.n_gen,
            generation_tps=slot.n_gen / t_gen if t_gen > 0 and slot.n_gen else 0.0,
            ttft=(slot.t_first or now) - slot.t0,
        )
        self._release(slot)
        result = BatchResult.from_last(last, "".join(slot.text), "".join(slot.reasoning))
        result.id = slot.job.req.id
        if slot.job.req.on_chunk is not None:
            slot.job.req.on_chunk(last)
        try:
            check_structured(result, slot.job.constraint)
        except GgrunError as e:
            result.error = str(e)
        return result

    def _release(self, slot: _Slot) -> None:
        self._ll.llama_memory_seq_rm(self._mem, slot.seq, -1, -1)
        slot.sampler.close()
        del self._slots[slot.seq]
        self._free.append(slot.seq)

    def cancel(self, index: int) -> bool:
        """Stop the request with input ``index`` now and free its slot (a client left)."""
        for slot in list(self._slots.values()):
            if slot.job.index == index:
                self._release(slot)
                return True
        return False


def _failed(req: Request, error: str) -> BatchResult:
    return BatchResult(text="", finish_reason="error", id=req.id, error=error)


def slot_context(model: Model, jobs: list[int], max_tokens: int | None) -> int:
    """A context per slot for prompts of ``jobs`` tokens and ``max_tokens`` new ones."""
    longest = max(jobs, default=1)
    want = longest + (max_tokens if max_tokens is not None else 512) + 1
    want = -(-want // SLOT_STEP) * SLOT_STEP
    return max(SLOT_STEP, min(want, model.n_ctx_train or want))


def to_request(item: Any, index: int, **common: Any) -> Request:
    """A Request from a prompt string, a message list, a dict or a Request.

    ``common`` holds defaults (``max_tokens``, ``think``, ``stop`` and sampling or
    structured-output options); a dict's own fields override them.
    """
    if isinstance(item, Request):
        return item
    fields = {"max_tokens", "think", "stop", "id"}
    base = {k: v for k, v in common.items() if k in fields}
    options = {k: v for k, v in common.items() if k not in fields and v is not None}
    if isinstance(item, str):
        return Request(prompt=item, id=index, options=options, **base)
    if isinstance(item, list):
        return Request(messages=item, id=index, options=options, **base)
    if isinstance(item, dict):
        own = dict(item)
        req = Request(
            prompt=own.pop("prompt", None),
            messages=own.pop("messages", None),
            id=own.pop("id", index),
            max_tokens=own.pop("max_tokens", base.get("max_tokens", 256)),
            think=own.pop("think", base.get("think")),
            stop=tuple(own.pop("stop", base.get("stop", ()))),
            options={**options, **own},
        )
        return req
    raise InvalidArgument(f"item {index}: expected a prompt, a message list or a dict")


def run_batch(
    model: Model,
    items: Iterable[Any],
    *,
    parallel: int = 8,
    slot_ctx: int | None = None,
    on_start: Callable[[int, int], None] | None = None,
    **common: Any,
) -> Iterator[tuple[int, BatchResult]]:
    """Run ``items`` with up to ``parallel`` at once; yield ``(index, result)`` as they end.

    Without ``slot_ctx``, each slot holds the longest prompt plus ``max_tokens``.
    """
    jobs: list[Prepared] = []
    failures: list[tuple[int, BatchResult]] = []
    for i, item in enumerate(items):
        rid = item.get("id", i) if isinstance(item, dict) else i
        try:
            req = to_request(item, i, **common)
            rid = req.id
            jobs.append(prepare(model, i, req))
        except GgrunError as e:
            failures.append((i, BatchResult(text="", finish_reason="error", id=rid, error=str(e))))
    yield from failures
    if not jobs:
        return
    if slot_ctx is None:
        longest = [len(j.tokens) for j in jobs]
        limits = [j.req.max_tokens for j in jobs]
        most = None if any(x is None for x in limits) else max(x or 0 for x in limits)
        slot_ctx = slot_context(model, longest, most)
    parallel = min(parallel, len(jobs))
    if on_start is not None:
        on_start(parallel, slot_ctx)
    logger.info("batch: %d slots of %d tokens", parallel, slot_ctx)
    with Batcher(model, parallel=parallel, slot_ctx=slot_ctx) as b:
        yield from b.run(jobs)
