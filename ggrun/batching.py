"""Continuous batching: many sequences decoded together in one llama.cpp context.

Generating one sequence reads every weight once per token; decoding ``parallel``
sequences in one ``llama_decode`` reads them once for all. :class:`Batcher` owns a
context on the model's weights with ``n_seq_max = parallel`` and a KV cache of
``parallel × slot_ctx`` cells (each sequence has its own ``slot_ctx`` cells), and runs
requests through the one token loop of :mod:`ggrun.decoder`: each request takes a free
slot (a sequence id) with its own sampler (seed, penalties, grammar); a finished
sequence frees its cells and its slot at once, and the next request takes it.
:class:`Engine` runs a batcher in its own thread for the server: requests queue, are
admitted as slots free up, and report their chunks through callbacks.

Determinism: the sampler of a request does not depend on its neighbours, so the same
seed gives the same choices. The logits do, slightly: llama.cpp's CPU matrix kernels
take a different path (and summation order) for a batch of several rows than for
one, so in rare near-ties greedy decoding in a batch can pick a different token than
``Model.generate`` alone. ``tests/test_batch.py`` measures how often.

A request that cannot run (a prompt longer than its slot, an invalid schema) becomes
a result with ``error`` set; it never stops the batch.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from ggrun import llama, promptcache, redraw, structured
from ggrun.decoder import Decoder, Prepared
from ggrun.decoder import Sequence as Seq
from ggrun.engine import Model
from ggrun.errors import (
    ContextOverflow,
    GgrunError,
    InsufficientMemory,
    InvalidArgument,
    SchemaMismatch,
)
from ggrun.request import Request, build_many
from ggrun.textstream import Chunk, Result

logger = logging.getLogger(__name__)

SLOT_STEP = 256  # slot contexts are rounded up to a multiple of this

BatchResult = Result  # a batch result is a Result with ``id`` (and ``error`` if it failed)


class Batcher:
    """Runs requests on ``model`` with up to ``parallel`` sequences at once."""

    def __init__(
        self, model: Model, *, parallel: int = 8, slot_ctx: int = 2048, n_batch: int = 512
    ) -> None:
        if parallel < 1:
            raise InvalidArgument(f"parallel must be at least 1, got {parallel}")
        if slot_ctx < 16:
            raise InvalidArgument(f"the context per slot must be at least 16, got {slot_ctx}")
        model.weights.check_open()
        self.model = model
        self.parallel = parallel
        self.slot_ctx = slot_ctx
        self._check_memory()
        params = model.context_params(parallel * slot_ctx, n_seq_max=parallel)
        self._ctx = llama.Context(model.weights, params)
        self._decoder = Decoder(
            self._ctx, model.is_end, memory=model.memory, store=model.prompt_cache
        )
        self._free = list(range(parallel - 1, -1, -1))
        self._index: dict[int, Seq] = {}  # request index -> its running sequence
        # request index -> (draws so far, its chunk callback): requests that may be redrawn
        self._redraws: dict[int, tuple[int, Callable[[Chunk], Any] | None]] = {}
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
        self._decoder.close()
        self._ctx.close()
        self._index.clear()

    def __enter__(self) -> Batcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown
            self.close()

    @property
    def free_slots(self) -> int:
        return len(self._free)

    @property
    def active(self) -> int:
        return len(self._index)

    @property
    def tokens_generated(self) -> int:
        return self._decoder.tokens_generated

    @property
    def drafted(self) -> int:
        """Speculative decoding: tokens guessed, all requests."""
        return self._decoder.drafted

    @property
    def accepted(self) -> int:
        return self._decoder.accepted

    # -- requests -------------------------------------------------------------
    def admit(
        self,
        index: int,
        job: Request | Prepared,
        on_chunk: Callable[[Chunk], Any] | None = None,
        *,
        redraw: bool = True,
    ) -> tuple[int, Result] | None:
        """Start a request in a free slot; one that cannot run comes back as a failure.
        With ``redraw``, a reply that fails a check no grammar holds is drawn again
        (:mod:`ggrun.redraw`) before it is reported (not for a stream: its chunks are out)."""
        if not self._free:
            raise GgrunError("no free batch slot")
        req = job.request if isinstance(job, Prepared) else job
        try:
            prepared = job if isinstance(job, Prepared) else self.model.prepare(job)
            if len(prepared.tokens) >= self.slot_ctx:
                raise ContextOverflow(
                    f"the prompt has {len(prepared.tokens)} tokens but a batch slot holds "
                    f"{self.slot_ctx}",
                    n_tokens=len(prepared.tokens),
                    n_ctx=self.slot_ctx,
                )
            seq = self._decoder.start(self._free[-1], prepared, on_chunk=on_chunk)
        except GgrunError as e:
            return index, Result.failed(str(e), req.id)
        self._free.pop()
        self._index[index] = seq
        if redraw:
            self._redraws.setdefault(index, (0, on_chunk))
        return None

    def warm(self, jobs: Iterable[Prepared]) -> bool:
        """Read the fixed part (system prompt, examples) that most of ``jobs`` share into
        the prompt cache first, so that each of them loads it instead of reading it."""
        counts = collections.Counter(
            tuple(j.tokens[: j.fixed]) for j in jobs if j.fixed >= promptcache.SAVE_MIN
        )
        if not counts or not self._free:
            return False
        prefix, n = counts.most_common(1)[0]
        return n > 1 and self._decoder.warm(self._free[-1], list(prefix))

    def step(self) -> list[tuple[int, Result]]:
        """Decode once for every active slot; return the requests that finished."""
        self._decoder.step()
        done = [(index, seq) for index, seq in self._index.items() if seq.finished]
        out: list[tuple[int, Result]] = []
        for index, seq in done:
            self._release(index, seq)
            result = _final(seq)
            draws, on_chunk = self._redraws.pop(index, (-1, None))
            job = redraw.again(seq.job, draws + 1) if result.redraw and draws >= 0 else None
            if job is None:
                if result.redraw and draws > 0:
                    result.error = f"{result.error} (in each of {draws + 1} draws)"
                out.append((index, result))
                continue
            logger.info("request %s: %s; drawing it again", index, result.error)
            self._redraws[index] = (draws + 1, on_chunk)
            failed = self.admit(index, job, on_chunk)
            if failed is not None:
                self._redraws.pop(index, None)
                out.append(failed)
        return out

    def cancel(self, index: int) -> bool:
        """Stop the request with input ``index`` now and free its slot (a client left)."""
        self._redraws.pop(index, None)
        seq = self._index.get(index)
        if seq is None:
            return False
        self._release(index, seq)
        return True

    def _release(self, index: int, seq: Seq) -> None:
        self._decoder.release(seq)
        del self._index[index]
        self._free.append(seq.seq)

    def run(
        self, requests: Iterable[tuple[int, Request | Prepared]]
    ) -> Iterator[tuple[int, Result]]:
        """Run ``(index, request)`` pairs; yield ``(index, result)`` as each finishes.

        Requests are taken from the iterable only as slots free up, so it may be a
        lazy reader of a large file.
        """
        it = iter(requests)
        exhausted = False
        while not exhausted or self._index:
            while self._free and not exhausted:
                nxt = next(it, None)
                if nxt is None:
                    exhausted = True
                    break
                failed = self.admit(*nxt)
                if failed is not None:
                    yield failed
            yield from self.step()


def _final(seq: Seq) -> Result:
    """A finished sequence's result, with structured output parsed and checked."""
    result = seq.result()
    if result.error is None:
        try:
            structured.check_result(result, seq.job.request.constraint)
        except structured.IncompleteOutput as e:  # max_tokens cut it off
            result.error, result.cut = str(e), True
        except SchemaMismatch as e:  # a check no grammar holds: another draw may pass
            result.error, result.redraw = str(e), True
        except GgrunError as e:
            result.error = str(e)
    return result


# ---------------------------------------------------------------- the engine thread


@dataclass
class Waiter:
    """Where a queued request reports: each chunk, then its result."""

    on_chunk: Callable[[Chunk], Any]
    on_done: Callable[[Result], Any]
    redraw: bool = True  # a reply that fails a check no grammar holds is drawn again


@dataclass
class Stats:
    requests: int = 0
    finished: int = 0
    cancelled: int = 0
    peak_active: int = 0  # the most requests decoded at once since the start
    started: float = field(default_factory=time.time)
    recent: collections.deque[tuple[float, int]] = field(
        default_factory=lambda: collections.deque(maxlen=256)
    )


class Engine:
    """Runs a :class:`Batcher` in its own thread; others talk to it through a queue."""

    def __init__(self, model: Model, *, parallel: int, slot_ctx: int) -> None:
        self.model = model
        self.batcher = Batcher(model, parallel=parallel, slot_ctx=slot_ctx)
        self.slot_ctx = slot_ctx
        self.parallel = parallel
        self._pending: collections.deque[tuple[int, Prepared]] = collections.deque()
        self._cancel: set[int] = set()
        self._waiters: dict[int, Waiter] = {}
        self._cv = threading.Condition()
        self._ids = itertools.count()
        self._stop = False
        self.stats = Stats()
        self._thread = threading.Thread(target=self._loop, name="ggrun-engine", daemon=True)
        self._thread.start()

    def next_index(self) -> int:
        return next(self._ids)

    def submit(self, index: int, job: Prepared, waiter: Waiter) -> None:
        with self._cv:
            self._waiters[index] = waiter
            self._pending.append((index, job))
            self.stats.requests += 1
            self._cv.notify()

    def cancel(self, index: int) -> None:
        with self._cv:
            self._cancel.add(index)
            self._cv.notify()

    @property
    def queued(self) -> int:
        return len(self._pending)

    @property
    def active(self) -> int:
        return self.batcher.active

    def close(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify()
        self._thread.join(timeout=30)
        self.batcher.close()

    def _loop(self) -> None:
        while True:
            with self._cv:
                while (
                    not self._stop
                    and not self._pending
                    and not self._cancel
                    and not self.batcher.active
                ):
                    self._cv.wait()
                if self._stop:
                    return
                cancels, self._cancel = self._cancel, set()
                self._pending = collections.deque(
                    (i, j) for i, j in self._pending if i not in cancels
                )
                admit: list[tuple[int, Prepared]] = []
                while self._pending and len(admit) < self.batcher.free_slots:
                    admit.append(self._pending.popleft())
            try:
                self._turn(cancels, admit)
            except Exception as e:  # noqa: BLE001 - a bug must not stop the engine for all
                logger.exception("the engine failed a step; the requests in flight end")
                self._fail_all(f"internal error: {type(e).__name__}: {e}")

    def _turn(self, cancels: set[int], admit: list[tuple[int, Prepared]]) -> None:
        """One round: cancel, admit, decode one step."""
        for index in cancels:
            if self.batcher.cancel(index) or index in self._waiters:
                self.stats.cancelled += 1
            self._waiters.pop(index, None)
        for index, job in admit:
            waiter = self._waiters.get(index)
            failed = self.batcher.admit(
                index, job, waiter.on_chunk if waiter else None,
                redraw=waiter.redraw if waiter else True,
            )  # fmt: skip
            if failed is not None:
                self._done(*failed)
        self.stats.peak_active = max(self.stats.peak_active, self.batcher.active)
        if not self.batcher.active:
            return
        try:
            done = self.batcher.step()
        except GgrunError as e:  # a failed decode fails the requests in flight
            logger.error("%s", e)
            self._fail_all(str(e))
            return
        for index, result in done:
            self._done(index, result)
        self.stats.recent.append((time.monotonic(), self.batcher.tokens_generated))

    def _fail_all(self, error: str) -> None:
        """End every request taken from the queue with ``error`` (queued ones wait)."""
        with self._cv:
            queued = {i for i, _ in self._pending}
        for index in [i for i in self._waiters if i not in queued]:
            self.batcher.cancel(index)
            self._done(index, Result.failed(error))

    def _done(self, index: int, result: Result) -> None:
        waiter = self._waiters.pop(index, None)
        self.stats.finished += 1
        if waiter is not None:
            waiter.on_done(result)

    def tokens_per_second(self) -> float:
        r = self.stats.recent
        if len(r) < 2 or time.monotonic() - r[-1][0] > 10:
            return 0.0
        (t0, n0), (t1, n1) = r[0], r[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0


# ---------------------------------------------------------------- batches


def slot_context(model: Model, prompt_lengths: list[int], max_tokens: int | None) -> int:
    """A context per slot for prompts of these lengths and ``max_tokens`` new tokens."""
    longest = max(prompt_lengths, default=1)
    want = longest + (max_tokens if max_tokens is not None else 512) + 1
    want = -(-want // SLOT_STEP) * SLOT_STEP
    return max(SLOT_STEP, min(want, model.n_ctx_train or want))


def run_batch(
    model: Model,
    items: Iterable[Any],
    *,
    parallel: int = 8,
    slot_ctx: int | None = None,
    on_start: Callable[[int, int], None] | None = None,
    **common: Any,
) -> Iterator[tuple[int, Result]]:
    """Run ``items`` with up to ``parallel`` at once; yield ``(index, result)`` as they end.

    Items are prompts, message lists, dicts (a batch line) or Requests; ``common`` holds
    the options they share (a dict's own fields win). Without ``slot_ctx``, each slot
    holds the longest prompt plus ``max_tokens``.
    """
    jobs: list[tuple[int, Prepared]] = []
    failures: list[tuple[int, Result]] = []
    for i, req in enumerate(build_many(list(items), **common)):
        try:
            if isinstance(req, GgrunError):
                raise req
            jobs.append((i, model.prepare(req)))
        except GgrunError as e:
            rid = getattr(e, "request_id", req.id if isinstance(req, Request) else i)
            failures.append((i, Result.failed(str(e), rid)))
    yield from failures
    if not jobs:
        return
    if slot_ctx is None:
        limits = [j.max_tokens for _, j in jobs]
        most = None if any(x is None for x in limits) else max(x or 0 for x in limits)
        slot_ctx = slot_context(model, [len(j.tokens) for _, j in jobs], most)
    parallel = min(parallel, len(jobs))
    if on_start is not None:
        on_start(parallel, slot_ctx)
    logger.info("batch: %d slots of %d tokens", parallel, slot_ctx)
    with Batcher(model, parallel=parallel, slot_ctx=slot_ctx) as b:
        b.warm(j for _, j in jobs)
        yield from b.run(jobs)


def batch_stream(
    model: Model, items: Sequence[Any], *, parallel: int = 8, **options: Any
) -> Iterator[Result]:
    """Run many prompts (strings), message lists or dicts together, up to ``parallel``
    at once (continuous batching); yield each result as it finishes. ``result.id`` is
    the input's position unless a dict gave an ``id``; a request that failed on its
    own has ``error`` set."""
    return (r for _, r in run_batch(model, items, parallel=parallel, **options))


def batch(
    model: Model | str,
    items: Sequence[Any],
    *,
    parallel: int = 8,
    ray: str | None = None,
    workers: int | None = None,
    **options: Any,
) -> list[Result]:
    """:func:`batch_stream`, collected in input order.

    With ``ray`` ("auto", or a cluster's address), ``workers`` Ray actors run the batch,
    each with ``parallel`` slots (:class:`ggrun.distributed.Job`: ``threads``, ``load``
    and ``slot_ctx`` are its keywords too); ``model`` may then be an alias or a path that
    every node has, which the workers load instead of this process."""
    if workers is not None and ray is None:
        raise InvalidArgument("workers needs ray ('auto' or a cluster's address)")
    if ray is not None:
        from ggrun.distributed import Job

        job = Job(model, items, runner=run_batch, address=ray, workers=workers,
                  parallel=parallel, **options)  # fmt: skip
        done = dict(job)
    elif isinstance(model, str):
        raise InvalidArgument("give a loaded model (ggrun.load), or ray= to load it on workers")
    else:
        done = dict(run_batch(model, items, parallel=parallel, **options))
    return [done[i] for i in range(len(done))]
