"""The models a server can serve: loaded on first use, kept while used, unloaded when idle.

Each loaded model has its own batch :class:`~ggrun.batch.Engine`. A request names a
model: when it is loaded, it is used at once; when it is loading, the request waits for
it; otherwise it is loaded (in a worker thread). At most ``max_loaded`` models stay in
memory; to load another, the least recently used idle one is unloaded, and so is one when
the planner says the next will not fit beside it. A model idle longer than its
``keep_alive`` (ollama's semantics: seconds, 0 unloads after the request, negative never)
is unloaded by a sweep that runs every second.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ggrun.batch import Engine
from ggrun.engine import Model
from ggrun.errors import InsufficientMemory

logger = logging.getLogger(__name__)

DEFAULT_KEEP_ALIVE = 300.0  # seconds (ollama's 5m)


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
        self._loading: dict[str, asyncio.Future[None]] = {}

    @property
    def default(self) -> str:
        return next(iter(self.refs))

    def add(self, model_id: str, model: Model, load_s: float = 0.0) -> Loaded:
        """A model loaded before the server starts."""
        engine = Engine(model, parallel=self.parallel, slot_ctx=self.slot_ctx or model.n_ctx)
        entry = Loaded(model_id, model, engine, load_s)
        self._expire(entry, None)
        self.loaded[model_id] = entry
        return entry

    async def acquire(self, model_id: str) -> Loaded:
        """The loaded model (waiting for it, or loading it); release it when done."""
        while True:
            entry = self.loaded.get(model_id)
            if entry is not None:
                self.loaded.move_to_end(model_id)
                entry.busy += 1
                return entry
            pending = self._loading.get(model_id)
            if pending is not None:
                await asyncio.shield(pending)
                continue
            await self._load(model_id)

    def release(self, entry: Loaded, keep_alive: float | None = None) -> None:
        entry.busy -= 1
        entry.last_used = time.monotonic()
        self._expire(entry, keep_alive)
        if entry.expires is not None and entry.expires <= entry.last_used:
            self.sweep()

    def _expire(self, entry: Loaded, keep_alive: float | None) -> None:
        ka = self.keep_alive if keep_alive is None else keep_alive
        entry.expires = None if ka < 0 else time.monotonic() + ka

    async def _load(self, model_id: str) -> None:
        from starlette.concurrency import run_in_threadpool

        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._loading[model_id] = fut
        try:
            while len(self.loaded) >= self.max_loaded:
                if not self._evict():
                    await asyncio.sleep(0.05)  # every loaded model is busy: wait for one
            t0 = time.perf_counter()
            while True:
                try:
                    model = await run_in_threadpool(self.loader, self.refs[model_id])
                    break
                except InsufficientMemory:
                    if not self._evict():  # the planner says it does not fit beside them
                        raise
            entry = self.add(model_id, model, time.perf_counter() - t0)
            logger.info("loaded %s in %.1f s", model_id, entry.load_s)
            fut.set_result(None)
        except BaseException as e:
            fut.set_exception(e)
            fut.exception()  # mark it retrieved: the caller re-raises it
            raise
        finally:
            del self._loading[model_id]

    def _evict(self) -> bool:
        """Unload the least recently used idle model; False when none is idle."""
        for model_id, entry in self.loaded.items():
            if entry.idle:
                self.unload(model_id)
                return True
        return False

    def unload(self, model_id: str) -> None:
        entry = self.loaded.pop(model_id)
        entry.engine.close()
        entry.model.close()
        logger.info("unloaded %s", model_id)

    def sweep(self) -> None:
        """Unload the idle models whose keep-alive has passed."""
        now = time.monotonic()
        for model_id, entry in list(self.loaded.items()):
            if entry.idle and entry.expires is not None and entry.expires <= now:
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
        return {
            "id": model_id,
            "path": path,
            "size": path.stat().st_size if isinstance(path, Path) and path.exists() else 0,
            "info": info,
            "loaded": entry is not None,
        }


def _path(models: Any, ref: str) -> Any:
    try:
        return models.resolve(ref)
    except Exception:  # noqa: BLE001 - listed even when not downloaded yet
        return None
