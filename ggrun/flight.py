"""One request in flight on the server: its draws, its choices, their stream.

A :class:`Run` is one answer being drawn on a model's engine: its queue of chunks and its
claim on the model. Its current draw is one engine request; a redraw (a repeated tool
call, :mod:`ggrun.redraw`) replaces it with another, and what the one before still
reports is dropped. OpenAI's ``n`` is several runs of one request (:func:`choices`),
streamed together (:func:`merged`). :mod:`ggrun.server` turns them into HTTP.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from ggrun import redraw
from ggrun.batching import Waiter
from ggrun.errors import ApiError, GgrunError
from ggrun.pool import Loaded, Pool
from ggrun.request import Request
from ggrun.textstream import Chunk, Result

logger = logging.getLogger(__name__)


class Run:
    """One request in flight: its queue of chunks, and its claim on the model.

    Its current draw is one engine request; a redraw (:mod:`ggrun.redraw`) replaces it
    with another, and what the one before still reports is dropped."""

    def __init__(self, pool: Pool, entry: Loaded, keep_alive: float | None, load_s: float,
                 t0: float) -> None:  # fmt: skip
        self.pool, self.entry, self.keep_alive = pool, entry, keep_alive
        self.load_s, self.t0 = load_s, t0
        self.queue: asyncio.Queue[tuple[int, Chunk | Result]] = asyncio.Queue()
        self.index = -1
        self.job: Any = None
        self.redraw = True  # the engine draws a reply that fails a schema check again
        self.stop_repeats = False  # a call already answered is drawn again, tools closed
        self.remake: Callable[[Request], Any] = lambda r: None  # prepare, for this slot
        self._released = False

    def submit(self, job: Any) -> None:
        """Queue ``job`` as the current draw (ending the one before, if any)."""
        if self.index >= 0:
            self.entry.engine.cancel(self.index)
        loop = asyncio.get_running_loop()
        index = self.index = self.entry.engine.next_index()

        def put(item: Chunk | Result) -> None:
            loop.call_soon_threadsafe(self.queue.put_nowait, (index, item))

        self.job = job
        self.entry.engine.submit(index, job, Waiter(put, put, redraw=self.redraw))

    def twin(self, job: Any) -> Run:
        """Another run of this request that draws ``job`` (one more of its choices): its
        own queue, engine request and claim on the model."""
        twin = Run(self.pool, self.pool.share(self.entry), self.keep_alive, self.load_s,
                    self.t0)  # fmt: skip
        twin.redraw, twin.stop_repeats, twin.remake = self.redraw, self.stop_repeats, self.remake
        try:
            twin.submit(job)
        except BaseException:
            twin.done()
            raise
        return twin

    def repeats(self, calls: list[Any]) -> bool:
        return self.stop_repeats and redraw.repeated(self.job.request, calls)

    async def close_tools(self) -> None:
        """Draw the reply again with tool calls closed (once): the model repeated a call
        the conversation has already answered."""
        from starlette.concurrency import run_in_threadpool

        logger.info("a tool call repeats one already answered; drawing the reply again")
        self.stop_repeats = False
        try:
            job = await run_in_threadpool(self.remake, redraw.closed(self.job.request))
        except GgrunError as e:
            raise ApiError.of(e) from None
        self.submit(job)

    async def next(self) -> Chunk | Result:
        """The current draw's next chunk, or its result."""
        while True:
            index, item = await self.queue.get()
            if index == self.index:
                return item

    def cancel(self) -> None:
        if not self._released and self.index >= 0:
            self.entry.engine.cancel(self.index)
        self.done()

    def done(self) -> None:
        if not self._released:
            self._released = True
            self.pool.release(self.entry, self.keep_alive)


def served(r: Result) -> Result:
    """A reply cut off by max_tokens is a finish (``length``) as OpenAI and ollama answer
    it, not an error: the client sees the reason and acts on it. A failure of another kind
    keeps its error; the CLI and the Python API keep the strict error for a cut too."""
    return dataclasses.replace(r, error=None) if r.cut and r.error is not None else r


def failed(r: Result) -> ApiError:
    """The error of a reply that failed: a 400, or a 422 for output that failed its checks."""
    assert r.error is not None
    if r.finish_reason == "error":
        return ApiError(400, r.error)
    return ApiError(422, f"the output failed its checks: {r.error}", code="invalid_output")


def choices(run: Run, n: int) -> list[Run]:
    """``run`` (choice 0) and ``n - 1`` more of its job, choice ``i`` drawn with its
    seed plus ``i`` (:meth:`~ggrun.sampling.SamplingConfig.nth`): OpenAI's ``n``."""
    runs = [run]
    try:
        for i in range(1, n):
            runs.append(run.twin(run.job.with_sampling(run.job.sampling.nth(i))))
    except BaseException:
        for r in runs:
            r.cancel()
        raise
    return runs


async def merged(runs: list[Run]) -> AsyncIterator[tuple[int, Chunk | Result]]:
    """Each run's chunks and result as they come, with the run's place in ``runs``; a
    run is done once its result has been taken."""
    waits = {asyncio.ensure_future(r.next()): i for i, r in enumerate(runs)}
    try:
        while waits:
            ready, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for f in sorted(ready, key=waits.__getitem__):
                i = waits.pop(f)
                item = f.result()
                yield i, item
                if isinstance(item, Result):
                    runs[i].done()
                else:
                    waits[asyncio.ensure_future(runs[i].next())] = i
    finally:
        for f in waits:
            f.cancel()
