"""The models a server can serve: loaded on first use, kept while used, unloaded when idle.

Each loaded model has its own batch :class:`~ggrun.batching.Engine`. A request names a
model: when it is loaded, it is used at once; when it is loading, the request waits for
it; otherwise it is loaded (in a worker thread). At most ``max_loaded`` models are ever
in memory, counting the one being loaded: loads happen one at a time, and room is made
first by unloading the least recently used idle model (pinned or not), and another when
the planner says the next will not fit beside it. When every loaded model is busy, the
least recently used one takes no new requests, goes once its last one ends, and then the
next loads (its requests wait; a request for it afterwards loads it again). A model idle
longer than its ``keep_alive`` (ollama's semantics: seconds, 0 unloads after the request,
negative never) is unloaded by a sweep that runs every second.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ggrun.batching import Engine
from ggrun.engine import Model
from ggrun.errors import InsufficientMemory

logger = logging.getLogger(__name__)

DEFAULT_KEEP_ALIVE = 300.0  # seconds (ollama's 5m)
POLL = 0.05  # seconds between looks at a model that is making way for another


@dataclass
class Loaded:
    """A model in memory, its engine, and when it may go."""

    id: str
    model: Model
    engine: Engine
    load_s: float
    busy: int = 0  # requests using it now
    last_used: float = field(default_factory=time.monotonic)
    expires: float | None = None  # monotonic time after which an idle model goes
    draining: bool = False  # making way for another model: it takes no new requests

    @property
    def idle(self) -> bool:
        return self.busy == 0 and self.engine.active == 0 and self.engine.queued == 0


class Pool:
    """Serve several models; see the module docstring."""

    def __init__(
        self,
        refs: dict[str, str],
        loader: Callable[[str], Model],
        *,
        parallel: int,
        slot_ctx: int | None = None,
        max_loaded: int = 1,
        keep_alive: float = DEFAULT_KEEP_ALIVE,
    ) -> None:
        self.refs = refs  # model id -> alias or path
        self.loader = loader
        self.parallel = parallel
        self.slot_ctx = slot_ctx
        self.max_loaded = max(1, max_loaded)
        self.keep_alive = keep_alive
        self.loaded: collections.OrderedDict[str, Loaded] = collections.OrderedDict()
        self.peak_loaded = 0  # the most models in memory at once, loading ones included
        self._loading: dict[str, asyncio.Future[None]] = {}
        self._waiting: collections.Counter[str] = collections.Counter()  # for a model's load
        self._one_load = asyncio.Lock()  # loads happen one at a time: the cap holds

    @property
    def default(self) -> str:
        return next(iter(self.refs))

    def add(self, model_id: str, model: Model, load_s: float = 0.0) -> Loaded:
        """A model loaded before the server starts."""
        engine = Engine(model, parallel=self.parallel, slot_ctx=self.slot_ctx or model.n_ctx)
        entry = Loaded(model_id, model, engine, load_s)
        self._expire(entry, None)
        self.loaded[model_id] = entry
        self.peak_loaded = max(self.peak_loaded, len(self.loaded))
        return entry

    async def acquire(self, model_id: str) -> Loaded:
        """The loaded model (waiting for it, or loading it); release it when done."""
        while True:
            entry = self.loaded.get(model_id)
            if entry is not None and not entry.draining:
                return self._use(entry)
            pending = self._loading.get(model_id)
            if pending is None and entry is not None:  # making way: wait until it is gone
                await asyncio.sleep(POLL)
                continue
            if pending is None:  # a task of its own: a caller that goes away cannot stop it
                pending = asyncio.ensure_future(self._load(model_id))
                pending.add_done_callback(_retrieved)
                self._loading[model_id] = pending
            self._waiting[model_id] += 1  # nothing unloads it before its waiters have it
            try:
                await asyncio.shield(pending)
            finally:
                self._waiting[model_id] -= 1
            entry = self.loaded.get(model_id)
            if entry is not None:  # loaded for its waiters, even if already making way
                return self._use(entry)

    def _use(self, entry: Loaded) -> Loaded:
        self.loaded.move_to_end(entry.id)
        entry.busy += 1
        return entry

    def share(self, entry: Loaded) -> Loaded:
        """One more claim on a model already held (another choice of the same request);
        released like the first."""
        return self._use(entry)

    def release(self, entry: Loaded, keep_alive: float | None = None) -> None:
        entry.busy -= 1
        entry.last_used = time.monotonic()
        self._expire(entry, keep_alive)
        if entry.expires is not None and entry.expires <= time.monotonic():  # keep_alive 0
            self.sweep()  # now: /api/ps no longer lists it when the answer comes

    def _expire(self, entry: Loaded, keep_alive: float | None) -> None:
        ka = self.keep_alive if keep_alive is None else keep_alive
        entry.expires = None if ka < 0 else time.monotonic() + ka

    async def _load(self, model_id: str) -> None:
        from starlette.concurrency import run_in_threadpool

        try:
            async with self._one_load:
                await self._make_room()
                t0 = time.perf_counter()
                while True:
                    self.peak_loaded = max(self.peak_loaded, len(self.loaded) + 1)
                    try:
                        model = await run_in_threadpool(self.loader, self.refs[model_id])
                        break
                    except InsufficientMemory:
                        if not self._evict():  # the planner says it does not fit beside them
                            raise
                entry = self.add(model_id, model, time.perf_counter() - t0)
            logger.info("loaded %s in %.1f s", model_id, entry.load_s)
        finally:
            del self._loading[model_id]

    async def _make_room(self) -> None:
        """Unload until one more model fits, waiting for a busy one when none is idle."""
        try:
            while len(self.loaded) >= self.max_loaded:
                if not self._evict():
                    next(iter(self.loaded.values())).draining = True  # the least recently used
                    await asyncio.sleep(POLL)
        finally:
            for entry in self.loaded.values():
                entry.draining = False

    def _evict(self) -> bool:
        """Unload the least recently used idle model; False when none is idle."""
        for model_id, entry in self.loaded.items():
            if self._idle(entry):
                self.unload(model_id)
                return True
        return False

    def _idle(self, entry: Loaded) -> bool:
        return entry.idle and not self._waiting[entry.id]

    def unload(self, model_id: str) -> None:
        entry = self.loaded.pop(model_id)
        entry.engine.close()
        entry.model.close()
        logger.info("unloaded %s", model_id)

    def sweep(self) -> None:
        """Unload the idle models whose keep-alive has passed."""
        now = time.monotonic()
        for model_id, entry in list(self.loaded.items()):
            if self._idle(entry) and entry.expires is not None and entry.expires <= now:
                self.unload(model_id)

    async def sweeper(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.sweep()

    def close(self) -> None:
        for model_id in list(self.loaded):
            self.unload(model_id)

    def describe(self, model_id: str) -> dict[str, Any]:
        """What the listing endpoints say of a model (loaded or not)."""
        from pathlib import Path

        from ggrun import models

        entry = self.loaded.get(model_id)
        path = entry.model.path if entry else _path(models, self.refs[model_id])
        info = entry.model.info if entry else None
        try:
            size = path.stat().st_size if isinstance(path, Path) else 0
        except OSError:  # gone since: listed all the same
            size = 0
        return {"id": model_id, "path": path, "size": size, "info": info,
                "loaded": entry is not None}  # fmt: skip


def _retrieved(task: asyncio.Future[None]) -> None:
    """Mark a load's error as seen: its waiters re-raise it (there may be none left)."""
    if not task.cancelled():
        task.exception()


def _path(models: Any, ref: str) -> Any:
    try:
        return models.resolve(ref)
    except Exception:  # noqa: BLE001 - listed even when not downloaded yet
        return None
