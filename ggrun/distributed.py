"""Batches on a Ray cluster: ``ggrun batch --ray``, the same job spread over machines.

A :class:`Job` connects to Ray (a running cluster, or a local one it starts), starts
``workers`` actors and feeds them shards of lines. Each worker is a Ray actor that
reserves ``threads`` CPUs (``num_cpus``, so Ray never puts more threads on a node than
it has), loads the model once (:class:`ModelSpec`: a path every node has, or an alias it
pulls into its own cache) and runs each shard through ggrun's own continuous batcher
with ``parallel`` slots. The batcher is handed in by the caller (``runner``:
:func:`ggrun.batching.run_batch`), because :mod:`ggrun.batching` calls this module and no two
modules import each other. Workers return :class:`~ggrun.textstream.Result` values, the
same ones a local batch yields; only the driver writes anything.

Guarantees:
- **One model.** Every worker reports the sha256 of the file it loaded; workers that
  loaded different files are refused before any line runs (a replacement that differs
  later is dropped), so every result comes from the same weights.
- **Nothing lost, nothing twice.** A worker that dies (its node lost, its actor
  killed) has its unfinished shards sent to the other workers, and a replacement is
  started; results are yielded once per line.
- **One line cannot take a node, or the job, with it.** Each worker runs under a memory
  cap (``RLIMIT_DATA``, set once its model is loaded: what it holds then plus twice what
  its slots need, by the planner's arithmetic, plus :data:`HEADROOM`), so a line that
  makes it grow fails in that worker, not on the node. A worker out of memory retries
  its shard with half the slots, then one line at a time, and reports only the lines
  that fail alone. A shard that failed twice (its worker died, or its code raised) goes
  again line by line, and a line that fails :data:`MAX_ATTEMPTS` times is reported as an
  error record: one poisonous line cannot kill the cluster worker after worker, and
  every other line completes.
- **Clear failures.** Ray not installed, no cluster at an address, the model missing on
  a node, workers that do not fit in the cluster: one :class:`~ggrun.errors.GgrunError`
  each, with a line that says what to do.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import math
import os
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ggrun import errors, models
from ggrun.engine import LoadConfig, Model, load
from ggrun.errors import GgrunError, InvalidArgument
from ggrun.planner import ModelShape
from ggrun.request import one
from ggrun.textstream import Result

logger = logging.getLogger(__name__)

INSTALL = "pip install 'ggrun[ray]'"
SHARD_MIN, SHARD_MAX = 8, 32  # lines per shard: a lost worker loses little
MAX_ATTEMPTS = 3  # a line whose worker dies (or fails) this often is reported, not sent again
HEADROOM = 256 << 20  # memory a worker may allocate beyond twice what its slots need
STALL_S = 600.0  # with no worker alive, how long to wait for one to start
PROBE_S = 5.0  # how long to try to reach a cluster's address
PORTS = {"ray": 10001, "": 6379}  # Ray Client's port and the head's GCS port

Runner = Callable[..., Iterator[tuple[int, Result]]]  # ggrun.batching.run_batch


class ClusterError(GgrunError):
    """Ray is missing, the cluster cannot be reached, or its workers cannot run the job."""


def require_ray() -> Any:
    """The ``ray`` module, or one line that says how to install it."""
    try:
        import ray
    except ImportError:
        raise ClusterError(f"Ray is not installed; {INSTALL}") from None
    return ray


# ---------------------------------------------------------------- the model on every node


@dataclass(frozen=True)
class ModelSpec:
    """What every worker loads, and how: the same reference with the same options."""

    ref: str  # an absolute path that exists on every node, or an alias
    threads: int | None = None  # llama.cpp threads per worker (prompts and generation)
    load: tuple[tuple[str, Any], ...] = ()  # more keywords of ggrun.load (n_ctx, ...)
    config: LoadConfig | None = None  # a loaded Model's exact config
    family: str = ""  # ... and its family (sampling presets)
    speculative: str | None = None

    @classmethod
    def of(cls, model: Model | str | Path, threads: int | None, load: dict[str, Any]) -> ModelSpec:
        """A spec from a loaded model (its file, config and family) or a reference."""
        if isinstance(model, Model):
            if model.draft is not None:
                raise InvalidArgument(
                    "a model with a draft cannot be sent to Ray workers; give its alias "
                    "and load={'speculative': ggrun.Draft(...)} instead"
                )
            return cls(
                str(model.path.absolute()),
                threads or model.n_threads,
                config=model.config,
                family=model.family,
                speculative=model.speculative,
            )
        ref = str(model)
        if models.looks_like_path(ref):  # the workers' working directory is not ours
            ref = str(Path(ref).expanduser().absolute())
        return cls(ref, threads, load=tuple(sorted(load.items())))

    def file(self) -> Path:
        """This node's file: the path, or the alias's, pulled once if it is not here."""
        if models.looks_like_path(self.ref):
            return models.resolve(self.ref)
        try:
            return models.resolve(self.ref)
        except errors.ModelNotFound:
            models.parse_ref(self.ref)  # an unknown alias is an error, not a download
        with _node_lock("pull"):  # the other workers of this node wait for this one
            return models.pull(self.ref)

    def open(self) -> tuple[Model, Path]:
        """Load the model on this node; the batcher makes its own contexts."""
        path = self.file()
        threads: dict[str, Any] = {}
        if self.threads:
            threads = {"n_threads": self.threads, "n_threads_batch": self.threads}
        if self.config is not None:
            cfg = dataclasses.replace(self.config, context=False, **threads)
            return Model(path, cfg, family=self.family, speculative=self.speculative), path
        ref = self.ref if not models.looks_like_path(self.ref) else str(path)
        return load(ref, **{**dict(self.load), **threads, "context": False}), path


@contextlib.contextmanager
def _node_lock(name: str) -> Iterator[None]:
    """An exclusive lock shared by the processes of this node (a no-op without fcntl)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    folder = models.models_dir()
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f".ggrun-{name}.lock", "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        yield


# ---------------------------------------------------------------- the worker's memory


def working_memory(model: Model, parallel: int, slot_ctx: int | None) -> int:
    """What ``parallel`` slots hold on top of the loaded weights, by the planner's own
    arithmetic: their KV cache (slots of ``slot_ctx`` tokens, or of the model's planned
    context) and the compute buffer of one micro-batch."""
    shape = ModelShape.from_gguf(model.info).with_cache(model.config.cache_type)
    ctx = slot_ctx or model.n_ctx
    return shape.kv_bytes(parallel * ctx) + shape.compute_bytes(model.n_batch)


def data_bytes() -> int | None:
    """This process's data (``VmData``: heap and private writable mappings, what
    ``RLIMIT_DATA`` counts; the mapped model file and Ray's shared memory are not in it),
    or None where /proc does not say."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmData:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def cap_memory(extra: int) -> int | None:
    """Let this process allocate ``extra`` more bytes and no more (``RLIMIT_DATA``); an
    allocation past it fails in this process: MemoryError in Python, a failed context in
    llama.cpp. Return the cap, or None where the system has no such limit."""
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return None
    now = data_bytes()
    if now is None:  # pragma: no cover - not Linux
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    cap = now + max(0, extra)
    for limit in (soft, hard):  # a limit the node already sets stays
        if limit != resource.RLIM_INFINITY:
            cap = min(cap, limit)
    resource.setrlimit(resource.RLIMIT_DATA, (cap, hard))
    return cap


# ---------------------------------------------------------------- the worker


def _rid(item: Any, index: int) -> Any:
    """The id a line's result carries: its own, else its position (as build_many does)."""
    if isinstance(item, dict):
        return item.get("id", index)
    return getattr(item, "id", None) if getattr(item, "id", None) is not None else index


class Worker:
    """A Ray actor: one model, ggrun's continuous batcher, one shard at a time."""

    def __init__(self, spec: ModelSpec, runner: Runner) -> None:
        self.spec = spec
        self.runner = runner
        self.model: Model | None = None
        self.cap: int | None = None  # RLIMIT_DATA, once start() set it
        self.memory = 0  # ... what it lets the worker allocate beyond its model

    def start(
        self, parallel: int = 1, slot_ctx: int | None = None, memory: int | None = None
    ) -> dict[str, Any]:
        """Load the model and cap this process's memory; report this node, the file's
        sha256 and the cap, or why it failed.

        The cap is what the process holds once the model is loaded plus ``memory`` bytes,
        by default twice what ``parallel`` slots need (:func:`working_memory`) plus
        :data:`HEADROOM`.
        """
        import ray

        where = {"node": socket.gethostname(), "ip": ray.util.get_node_ip_address()}
        try:
            model, path = self.spec.open()
            sha = models.sha256_file(path)
        except GgrunError as e:
            return {**where, "error": str(e), "kind": type(e).__name__}
        except OSError as e:
            return {**where, "error": f"{e.strerror or e}", "kind": "ModelNotFound"}
        self.model = model
        if memory is None:
            memory = 2 * working_memory(model, parallel, slot_ctx) + HEADROOM
        self.cap, self.memory = cap_memory(memory), memory
        info = {**where, "sha256": sha, "path": str(path), "pid": os.getpid()}
        return {**info, "memory_cap": self.cap, "memory": memory}

    def run(
        self,
        items: list[tuple[int, Any]],
        parallel: int,
        slot_ctx: int | None,
        common: dict[str, Any],
    ) -> list[tuple[int, Result]]:
        """Run ``(index, line)`` pairs; return ``(index, result)`` for each."""
        assert self.model is not None, "start() first"
        out: list[tuple[int, Result]] = []
        jobs: list[tuple[int, Any]] = []
        for index, item in items:
            try:
                jobs.append((index, one(item, index, **common)))
            except GgrunError as e:
                out.append((index, Result.failed(str(e), _rid(item, index))))
        return out + self._run(jobs, parallel, slot_ctx)

    def _run(
        self, jobs: list[tuple[int, Any]], parallel: int, slot_ctx: int | None
    ) -> list[tuple[int, Result]]:
        """Run requests. A batcher that fails as a whole (memory, most likely: a line
        that needs a larger context than the cap allows) runs the lines left again with
        half the slots; with one slot, each line alone, so that only a line that cannot
        run on its own fails, with the batcher's message."""
        assert self.model is not None
        out: list[tuple[int, Result]] = []
        while jobs:
            done: set[int] = set()
            try:
                requests = [r for _, r in jobs]
                for k, result in self.runner(
                    self.model, requests, parallel=parallel, slot_ctx=slot_ctx
                ):
                    out.append((jobs[k][0], result))
                    done.add(k)
                return out
            except (GgrunError, MemoryError) as e:
                why = str(e) if isinstance(e, GgrunError) else "out of memory"
                jobs = [j for k, j in enumerate(jobs) if k not in done]
                if parallel > 1:
                    parallel = max(1, parallel // 2)
                    logger.warning("%s; retrying %d lines with %d slots", why, len(jobs), parallel)
                elif len(jobs) > 1:
                    logger.warning("%s; running the %d lines left one by one", why, len(jobs))
                    for job in jobs:
                        out += self._run([job], 1, slot_ctx)
                    return out
                else:
                    if self.cap is not None:
                        why += f" (a worker may allocate {_gib(self.memory)} beyond its model)"
                    return out + [(i, Result.failed(why, r.id)) for i, r in jobs]
        return out


# ---------------------------------------------------------------- the cluster


def _probe(address: str) -> None:
    """Fail in a few seconds, with one line, when nothing listens at ``address``."""
    parts = urlsplit(address if "://" in address else f"//{address}")
    try:
        host, port = parts.hostname, parts.port or PORTS.get(parts.scheme, 6379)
    except ValueError:
        raise ClusterError(f"--ray {address}: not a HOST:PORT address") from None
    if not host:
        raise ClusterError(f"--ray {address}: not a HOST:PORT address")
    try:
        socket.create_connection((host, port), timeout=PROBE_S).close()
    except OSError as e:
        why = "timed out" if isinstance(e, TimeoutError) else (e.strerror or str(e))
        raise ClusterError(
            f"no Ray cluster at {address} ({host}:{port}: {why}); start one with "
            "`ray start --head` there, or use --ray auto"
        ) from None


def connect(address: str, notify: Callable[[str], None]) -> bool:
    """Join the cluster at ``address`` or ``auto``; return whether Ray was started here.

    ``auto`` joins ``$RAY_ADDRESS`` or the cluster running on this machine, and starts
    a local one when there is none. Each case is announced through ``notify``.
    """
    ray = require_ray()
    if ray.is_initialized():
        notify("using the Ray instance this process already joined")
        return False
    quiet = {"logging_level": logging.ERROR, "log_to_driver": False}
    explicit = address if address != "auto" else os.environ.get("RAY_ADDRESS", "")
    if explicit:
        if not explicit.startswith("ray://"):
            _probe(explicit)
        try:
            ray.init(address=explicit, **quiet)
        except (ConnectionError, RuntimeError, ImportError, ValueError) as e:
            why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ClusterError(f"cannot join a Ray cluster at {explicit}: {why}") from None
        notify(f"joined the Ray cluster at {explicit}: {_shape(ray)}")
        return True
    try:
        ray.init(address="auto", **quiet)
    except ConnectionError:
        ray.init(include_dashboard=False, **quiet)
        notify(f"no Ray cluster is running; started a local one: {_shape(ray)}")
        return True
    notify(f"joined the Ray cluster running on this machine: {_shape(ray)}")
    return True


def node_cpus(ray: Any) -> list[int]:
    """The CPUs of each alive node of the cluster."""
    return [int(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n.get("Alive")]


def _shape(ray: Any) -> str:
    cpus = node_cpus(ray)
    return f"{_n(len(cpus), 'node')}, {_n(sum(cpus), 'CPU')}"


def _gib(n: int) -> str:
    return f"{n / (1 << 30):.2f} GiB"


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'s' * (count != 1)}"


def size(cpus: list[int], workers: int | None, threads: int | None) -> tuple[int, int]:
    """``(workers, threads)`` that fit on nodes with these CPUs (a worker stays on one node).

    No threads: the most that still places every worker (one worker per node by
    default). No workers: as many as the nodes hold.
    """
    cpus = [c for c in cpus if c > 0]
    if not cpus:
        raise ClusterError("the Ray cluster has no CPUs for workers")
    if threads is None:
        want = workers or len(cpus)
        fits = [t for t in range(max(cpus), 0, -1) if sum(c // t for c in cpus) >= want]
        threads = fits[0] if fits else 1
    room = sum(c // threads for c in cpus)
    workers = workers or room
    if room < workers:
        nodes = ", ".join(map(str, cpus))
        raise ClusterError(
            f"{_n(workers, 'worker')} of {_n(threads, 'thread')} do not fit: the cluster holds "
            f"{room} (CPUs per node: {nodes}); lower --workers or --threads"
        )
    return workers, threads


# ---------------------------------------------------------------- the driver


@dataclass
class Shard:
    items: list[tuple[int, Any]]  # (position, line)
    parallel: int
    attempts: int = 0  # how often a worker died running it


@dataclass(eq=False)
class Handle:
    """The driver's view of one worker."""

    number: int
    actor: Any
    info: dict[str, Any] = field(default_factory=dict)
    sent: list[Any] = field(default_factory=list)  # its shards' refs, oldest (running) first

    @property
    def where(self) -> str:
        node, ip = self.info.get("node"), self.info.get("ip")
        return f"node {node} ({ip})" if node else f"worker {self.number}"


def shard_size(n: int, workers: int, parallel: int) -> int:
    """Lines per shard: enough to keep ``parallel`` slots busy, few enough to lose little,
    and four shards a worker at least when there are few lines (so that none idles)."""
    want = min(SHARD_MAX, max(SHARD_MIN, SHARD_MIN * parallel))
    return max(1, min(parallel, n), min(want, math.ceil(n / (4 * max(1, workers)))))


class Job:
    """One batch on Ray workers; iterate it for ``(position, result)`` as shards end.

    ``model`` is a loaded :class:`Model` (its file, config and family travel) or a path
    or alias that each worker loads with ggrun.load's keywords in ``load``. ``runner``
    is :func:`ggrun.batching.run_batch`. ``common`` holds the request options the lines
    share (a line's own fields win). ``worker_memory`` is the memory (bytes) each worker
    may allocate once its model is loaded (default: twice what its slots need, plus
    :data:`HEADROOM`). ``worker_env`` gives workers environment variables (the i-th
    worker the i-th dict, cycling): a hook for tests and odd clusters.
    """

    def __init__(
        self,
        model: Model | str | Path,
        items: Sequence[Any],
        *,
        runner: Runner,
        address: str = "auto",
        workers: int | None = None,
        threads: int | None = None,
        parallel: int = 8,
        slot_ctx: int | None = None,
        shard: int | None = None,
        load: dict[str, Any] | None = None,
        notify: Callable[[str], None] | None = None,
        worker_memory: int | None = None,
        worker_env: Sequence[dict[str, str]] = (),
        **common: Any,
    ) -> None:
        if parallel < 1:
            raise InvalidArgument(f"parallel must be at least 1, got {parallel}")
        sizes = (("workers", workers), ("threads", threads), ("shard", shard),
                 ("worker_memory", worker_memory))  # fmt: skip
        for name, v in sizes:
            if v is not None and v < 1:
                raise InvalidArgument(f"{name} must be at least 1, got {v}")
        self.spec = ModelSpec.of(model, threads, load or {})
        self.items = items
        self.runner = runner
        self.address = address
        self.workers = workers
        self.parallel = parallel
        self.slot_ctx = slot_ctx
        self.shard = shard
        self.notify = notify or logger.info
        self.worker_memory = worker_memory
        self.worker_env = list(worker_env)
        self.common = common
        self.alive: list[Handle] = []
        self.sha256 = ""
        self.tokens = 0  # generated so far
        self.ready_at: float | None = None  # when the workers were ready
        self.startup_s = 0.0  # joining the cluster and starting the workers
        self.lost = 0  # workers that died
        self._seen: set[int] = set()
        self._starting: dict[Any, Handle] = {}
        self._inflight: dict[Any, tuple[Handle, Shard]] = {}
        self._pending: collections.deque[Shard] = collections.deque()
        self._spawned = 0
        self._handles: list[Handle] = []  # every worker started, to stop them at the end
        self._target = 0  # workers asked for
        self._spare = 0  # replacements left before the next shard ends well
        self._remote: Any = None  # the Worker actor class
        self._options: dict[str, Any] = {}  # ... and its options (CPUs, no restarts)
        self._common: Any = None  # the shared options, in Ray's object store
        self._ray: Any = None  # the ray module, while this job holds workers
        self._joined = False  # whether this job joined the cluster (and leaves it)

    @property
    def rate(self) -> float:
        """Generated tokens per second since the workers were ready, all together."""
        if self.ready_at is None:
            return 0.0
        return self.tokens / max(time.monotonic() - self.ready_at, 1e-9)

    def status(self) -> str:
        return f"{_n(len(self.alive), 'worker')} · {self.rate:.1f} tok/s"

    # -- lifetime -------------------------------------------------------------------
    def start(self) -> None:
        """Join the cluster and start the workers (iterating does it when not done yet);
        raise when the model is missing on a node or the workers loaded different files."""
        if self._ray is not None:
            return
        ray = require_ray()
        begin = time.monotonic()
        self._joined = connect(self.address, self.notify)
        self._ray = ray
        try:
            self._launch(ray)
        except BaseException:
            self.close()
            raise
        self.ready_at = time.monotonic()
        self.startup_s = self.ready_at - begin

    def close(self) -> None:
        """Stop every worker; leave the cluster when this job joined it."""
        ray, self._ray = self._ray, None
        if ray is None:
            return
        for h in self._handles:
            with contextlib.suppress(Exception):
                ray.kill(h.actor)
        self._handles = []
        if self._joined:
            ray.shutdown()

    def __enter__(self) -> Job:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[tuple[int, Result]]:
        if not self.items:
            return
        self.start()
        try:
            yield from self._loop(self._ray)
        finally:
            self.close()

    # -- the work -----------------------------------------------------------------
    def _launch(self, ray: Any) -> None:
        workers, threads = size(node_cpus(ray), self.workers, self.spec.threads)
        self._target = workers
        self._spare = self._spares()
        self.spec = dataclasses.replace(self.spec, threads=threads)
        self._remote = ray.remote(Worker)
        self._options = {"num_cpus": threads, "max_restarts": 0, "scheduling_strategy": "SPREAD"}
        self._common = ray.put(self.common)
        n = len(self.items)
        step = self.shard or shard_size(n, workers, self.parallel)
        for lo in range(0, n, step):
            chunk = [(i, self.items[i]) for i in range(lo, min(n, lo + step))]
            self._pending.append(Shard(chunk, self.parallel))
        for _ in range(workers):
            self._spawn()
        self._first_start(ray)
        memory = self.alive[0].info.get("memory_cap") and self.alive[0].info.get("memory")
        cap = f" (memory capped at {_gib(memory)} over the model)" if memory else ""
        self.notify(
            f"{_n(len(self.alive), 'worker')} × {_n(threads, 'thread')}, "
            f"{_n(self.parallel, 'slot')} each{cap}, {_n(step, 'line')} a shard; "
            f"model sha256 {self.sha256[:16]}… on every worker"
        )

    def _spares(self) -> int:
        """Workers lost in a row (no shard ending well between them) that are replaced:
        enough for one poisonous line to use up its attempts, even with one worker."""
        return max(self._target, MAX_ATTEMPTS)

    def _loop(self, ray: Any) -> Iterator[tuple[int, Result]]:
        idle_since = None
        while self._pending or self._inflight:
            self._dispatch()
            waiting = [*self._inflight, *self._starting]
            if not waiting:
                raise ClusterError(self._stopped("every worker died"))
            ready, _ = ray.wait(waiting, num_returns=1, timeout=10)
            if not ready:
                idle_since = idle_since or time.monotonic()
                if not self.alive and time.monotonic() - idle_since > STALL_S:
                    raise ClusterError(self._stopped("no worker has been alive for 10 minutes"))
                continue
            idle_since = None
            ref = ready[0]
            if ref in self._starting:
                self._late_start(ray, ref)
            elif ref in self._inflight:
                yield from self._finished(ray, ref)

    def _stopped(self, why: str) -> str:
        left = len(self.items) - len(self._seen)
        return f"{why}; {left} lines are not done (re-run the same command to finish them)"

    def _spawn(self) -> None:
        k = self._spawned
        self._spawned += 1
        options = dict(self._options)
        if self.worker_env:
            env = self.worker_env[k % len(self.worker_env)]
            options["runtime_env"] = {"env_vars": dict(env)}
        h = Handle(k, self._remote.options(**options).remote(self.spec, self.runner))
        self._handles.append(h)
        start = h.actor.start.remote(self.parallel, self.slot_ctx, self.worker_memory)
        self._starting[start] = h

    def _first_start(self, ray: Any) -> None:
        """Wait for every worker to load; refuse a missing model or different files."""
        infos: list[Handle] = []
        while self._starting:
            ready, _ = ray.wait(list(self._starting), num_returns=1)
            h = self._starting.pop(ready[0])
            try:
                h.info = ray.get(ready[0])
            except ray.exceptions.RayError as e:
                logger.warning("worker %d could not start: %s", h.number, _reason(e))
                self.lost += 1
                continue
            if "error" in h.info:
                kind = getattr(errors, h.info["kind"], None)
                cls = kind if isinstance(kind, type) and issubclass(kind, GgrunError) else None
                where = f"on node {h.info['node']} ({h.info['ip']})"
                raise (cls or ClusterError)(f"{where}: {h.info['error']}")
            infos.append(h)
        if not infos:
            raise ClusterError("no worker could start (see the warnings above)")
        shas: dict[str, list[str]] = {}
        for h in infos:
            shas.setdefault(h.info["sha256"], []).append(h.where)
        if len(shas) > 1:
            which = "; ".join(f"{s[:12]}… on {', '.join(w)}" for s, w in shas.items())
            raise ClusterError(
                f"the workers loaded different model files ({which}); every node needs "
                "the same file, so that every result comes from the same weights"
            )
        self.sha256 = next(iter(shas))
        self.alive = infos

    def _late_start(self, ray: Any, ref: Any) -> None:
        """A replacement worker: kept only when it loaded the same file."""
        h = self._starting.pop(ref)
        try:
            h.info = ray.get(ref)
        except ray.exceptions.RayError as e:
            logger.warning("a replacement worker could not start: %s", _reason(e))
            return
        problem = h.info.get("error")
        if problem is None and h.info["sha256"] != self.sha256:
            problem = f"it loaded another file (sha256 {h.info['sha256'][:12]}…)"
        if problem is not None:
            logger.warning("a replacement worker on %s is not used: %s", h.where, problem)
            with contextlib.suppress(Exception):
                ray.kill(h.actor)
            return
        self.alive.append(h)

    def _dispatch(self) -> None:
        """Give shards to the workers: two each (one queued behind the running one)
        while there are plenty, one each near the end so that none hoards the last."""
        depth = 2 if len(self._pending) >= 2 * len(self.alive) else 1
        for h in sorted(self.alive, key=lambda h: len(h.sent)):
            while self._pending and len(h.sent) < depth:
                shard = self._pending.popleft()
                ref = h.actor.run.remote(shard.items, shard.parallel, self.slot_ctx, self._common)
                h.sent.append(ref)
                self._inflight[ref] = (h, shard)

    def _finished(self, ray: Any, ref: Any) -> Iterator[tuple[int, Result]]:
        h, shard = self._inflight.pop(ref)
        try:
            pairs = ray.get(ref)
        except ray.exceptions.RayTaskError as e:  # the worker lives; its code raised
            h.sent.remove(ref)
            yield from self._again(shard, f"the worker failed: {_reason(e)}")
            return
        except ray.exceptions.RayError as e:  # the worker (or its node) is gone
            self._inflight[ref] = (h, shard)
            yield from self._lost(ray, h, e)
            return
        h.sent.remove(ref)
        self._spare = self._spares()  # the workers work: a later loss is the line's
        for index, result in pairs:
            if index not in self._seen:
                self._seen.add(index)
                self.tokens += result.completion_tokens
                yield index, result

    def _lost(self, ray: Any, h: Handle, e: Exception) -> Iterator[tuple[int, Result]]:
        """A dead worker: its shards go back to the queue, and a replacement starts."""
        if h in self.alive:
            self.alive.remove(h)
        self.lost += 1
        with contextlib.suppress(Exception):
            ray.kill(h.actor)
        why = _reason(e)
        oom = isinstance(e, ray.exceptions.OutOfMemoryError) or "memory" in str(e).lower()
        shards = [self._inflight.pop(r)[1] for r in h.sent if r in self._inflight]
        h.sent = []
        lines = sum(len(s.items) for s in shards)
        logger.warning("the worker on %s was lost (%s); %d lines go again", h.where, why, lines)
        for k, shard in enumerate(reversed(shards)):
            running = k == len(shards) - 1  # the oldest was running; the others waited
            if running and oom:
                shard.parallel = max(1, shard.parallel // 2)
            yield from self._again(shard, f"its worker died: {why}", count=running)
        if self._spare > 0:
            self._spare -= 1
            self._spawn()
        else:
            logger.warning(
                "%d workers were lost with no shard done between; none replaces this one",
                self._spares(),
            )

    def _again(self, shard: Shard, why: str, *, count: bool = True) -> Iterator[tuple[int, Result]]:
        """Queue a shard again: whole the first time, then line by line (so that the
        lines that run alone complete), and report a line once it failed too often."""
        shard.attempts += count
        if len(shard.items) > 1 and shard.attempts >= MAX_ATTEMPTS - 1:
            lines = [Shard([item], shard.parallel, shard.attempts) for item in shard.items]
            self._pending.extendleft(reversed(lines))
            return
        if shard.attempts < MAX_ATTEMPTS:
            self._pending.appendleft(shard)
            return
        for index, item in shard.items:
            if index not in self._seen:
                self._seen.add(index)
                msg = f"failed {shard.attempts} times on Ray workers ({why})"
                yield index, Result.failed(msg, _rid(item, index))


GENERIC = ("The actor died unexpectedly before finishing this task.",)


def _reason(e: BaseException) -> str:
    """What a Ray error says happened, in one line, without its traceback or ids."""
    text = str(getattr(e, "cause", None) or e)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("\t")]
    lines = [ln for ln in lines if ln not in GENERIC] or lines
    return lines[0][:300] if lines else type(e).__name__
