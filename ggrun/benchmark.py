"""``ggrun bench``: speed, memory and quality of several quants of one model, on this machine.

Speed follows llama-bench's definitions so the figures compare: **pp** is a prompt of
``pp`` random tokens decoded in one batch on an empty cache; **tg** is ``tg`` tokens
decoded one at a time, without sampling. Each is repeated ``reps`` times after a warm-up
and reported as mean ± standard deviation. Each model's speed runs in a child process, so
its load time and peak resident memory are its own.

Quality follows llama-perplexity's definitions: the text is tokenized once (BOS added as
the vocabulary asks), cut into ``chunks`` chunks of ``ctx`` tokens (the first token of each
replaced by BOS), and the second half of each chunk is scored: perplexity is
exp(mean negative log-likelihood of the next token). Against the reference (the most
precise model in the set, or ``reference``), each scored token also gives the KL
divergence KL(reference ‖ model) and whether both put the same token on top. Logits are
compared chunk by chunk in memory, never written to disk: the reference and one candidate
are open at a time, and the reference's chunks are evaluated again for each candidate
(compute traded for memory: no stored reference logits).
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ggrun import evaluate
from ggrun.engine import LoadConfig
from ggrun.errors import GgrunError, InvalidArgument
from ggrun.evaluate import EvalConfig
from ggrun.files import read_bytes
from ggrun.llama import CACHE_TYPES

logger = logging.getLogger(__name__)

Progress = Callable[[str], None]


@dataclass
class BenchResult:
    """One model's figures; quality fields are None when not measured."""

    model: str
    path: str
    quant: str
    size_bytes: int
    bits_per_weight: float
    n_params: int
    threads: int
    load_s: float = 0.0
    pp: int = 512
    tg: int = 128
    pp_tps: float = 0.0
    pp_tps_std: float = 0.0
    tg_tps: float = 0.0
    tg_tps_std: float = 0.0
    bandwidth_gbs: float = 0.0  # size x tg speed
    peak_rss_bytes: int = 0
    reference: str | None = None
    ppl: float | None = None
    ppl_ratio: float | None = None
    kld_mean: float | None = None
    kld_p99: float | None = None
    same_top: float | None = None  # fraction of scored tokens
    scored_tokens: int = 0
    cache_type: str = "f16"  # the KV cache's type for these figures
    # the KV sanity check (a cache type other than f16 against f16, same model file)
    kv_check: str | None = None  # "ok" or "failed"; None: f16, or not checked
    kv_kld: float | None = None
    kv_same_top: float | None = None
    # accuracy on the user's examples (``--task`` and ``--eval``); None when not measured
    task: str | None = None
    match: str | None = None
    examples: int = 0
    correct: int = 0
    accuracy: float | None = None
    ci: list[float] | None = None  # the 95% Wilson interval
    field_accuracy: dict[str, float] | None = None  # json match: each expected field
    s_per_example: float | None = None
    eval_tps: float | None = None  # generated tokens/s over the examples
    regressions: int = 0  # examples it got wrong that the reference got right
    wrong: list[dict[str, Any]] = field(default_factory=list)  # the first few of those

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class BenchConfig:
    threads: int | None = None
    reps: int = 5
    pp: int = 512
    tg: int = 128
    ctx: int = 512  # perplexity chunk size
    chunks: int = 8
    text: Path | None = None
    quality: bool = True
    speed: bool = True
    device: str | None = None  # as ggrun.load: None lets the planner choose
    cache_types: tuple[str, ...] = ("f16",)  # KV cache types to compare (each model x type)


def load_config(
    path: Path, cfg: BenchConfig, n_ctx: int, n_batch: int, info: Any = None
) -> LoadConfig:
    """The planner's device, offload, threads and mmap for this run (as ``ggrun.load``)."""
    from ggrun.gguffile import read_gguf
    from ggrun.hardware import detect_hardware
    from ggrun.planner import ModelShape, plan

    p = plan(
        ModelShape.from_gguf(info or read_gguf(path)),
        detect_hardware(),
        n_ctx=n_ctx,
        device=cfg.device,
        n_threads=cfg.threads,
        n_threads_batch=cfg.threads,
        n_batch=n_batch,
    )
    return LoadConfig.from_plan(p)


def corpus_path() -> Path:
    from ggrun.presets import presets_dir

    return presets_dir() / "corpus" / "python-reference.txt"


# ---------------------------------------------------------------- speed


def _open(
    path: Path, cfg: BenchConfig, n_ctx: int, n_batch: int, cache: str = "f16"
) -> tuple[Any, Any]:
    """The weights and one context, loaded as the planner says (llama-bench's setup)."""
    from ggrun import hardware, llama

    lc = load_config(path, cfg, n_ctx, n_batch)
    weights = llama.Weights(
        path,
        n_gpu_layers=lc.n_gpu_layers,
        use_mmap=lc.use_mmap,
        extra_buffers=hardware.extra_buffers_safe(),
    )
    params = llama.ContextParams(
        n_ctx=n_ctx,
        n_batch=n_batch,
        n_threads=lc.n_threads or hardware.generation_threads(),
        n_threads_batch=lc.n_threads_batch or hardware.batch_threads(),
        type_k=llama.CACHE_TYPES[cache],
        type_v=llama.CACHE_TYPES[cache],
        flash_attn=True if cache != "f16" else None,
    )
    try:
        return weights, llama.Context(weights, params)
    except BaseException:
        weights.close()
        raise


def _decode(ctx: Any, batch: Any, tokens: list[int], start: int, logits_from: int) -> None:
    """Decode ``tokens`` at positions ``start..`` of sequence 0 in one batch."""
    batch.clear()
    for i, t in enumerate(tokens):
        batch.add(t, start + i, 0, i >= logits_from)
    ctx.decode(batch)


def _speed_child(path: str, cfg: BenchConfig, cache: str, conn: Any) -> None:
    """Runs in a child process: load, pp and tg; sends back a dict or an error string."""
    import random
    import resource

    from ggrun import llama

    try:
        t0 = time.perf_counter()
        weights, ctx = _open(Path(path), cfg, cfg.pp + cfg.tg, cfg.pp, cache)
        load_s = time.perf_counter() - t0
        rng = random.Random(42)
        n_vocab = weights.n_vocab

        def toks(n: int) -> list[int]:
            return [rng.randrange(n_vocab) for _ in range(n)]

        with weights, ctx, llama.Batch(cfg.pp) as batch:

            def pp_once() -> float:
                ctx.clear()
                prompt = toks(cfg.pp)
                t = time.perf_counter()
                _decode(ctx, batch, prompt, 0, cfg.pp - 1)
                return cfg.pp / (time.perf_counter() - t)

            def tg_once() -> float:
                ctx.clear()
                seq = toks(cfg.tg)
                t = time.perf_counter()
                for i in range(cfg.tg):
                    _decode(ctx, batch, seq[i : i + 1], i, 0)
                return cfg.tg / (time.perf_counter() - t)

            pp_once()  # warm-up, as llama-bench
            pps = [pp_once() for _ in range(cfg.reps)]
            tg_once()
            tgs = [tg_once() for _ in range(cfg.reps)]
            threads = ctx.params.n_threads
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
        conn.send({"load_s": load_s, "pp": pps, "tg": tgs, "peak": peak, "threads": threads})
    except GgrunError as e:
        conn.send(str(e))
    except BaseException as e:  # noqa: BLE001 - reported to the parent as one line
        conn.send(f"{type(e).__name__}: {e}")
    finally:
        conn.close()


def measure_speed(path: Path, cfg: BenchConfig, cache: str = "f16") -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_speed_child, args=(str(path), cfg, cache, child))
    proc.start()
    child.close()
    try:
        out = parent.recv()
    except EOFError:
        out = f"the benchmark process died (exit code {proc.exitcode})"
    finally:
        proc.join()
    if isinstance(out, str):
        raise GgrunError(f"{path.name}: {out}")
    return out  # type: ignore[no-any-return]


def _mean_std(xs: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0


# ---------------------------------------------------------------- quality


class _Scorer:
    """A model opened for perplexity: a context of ``ctx`` tokens and every logit out."""

    def __init__(self, path: Path, cfg: BenchConfig, cache: str = "f16") -> None:
        from ggrun import llama

        self.path = path
        self.weights, self.ctx = _open(path, cfg, cfg.ctx, cfg.ctx, cache)
        self.n_vocab = self.weights.n_vocab
        self._batch = llama.Batch(cfg.ctx)

    def close(self) -> None:
        self._batch.close()
        self.ctx.close()
        self.weights.close()

    def tokenize(self, text: str) -> list[int]:
        """As llama-perplexity: special tokens added as the vocab asks, not parsed."""
        return self.weights.tokenize(text, add_special=True, parse_special=False)

    def bos(self) -> int | None:
        return self.weights.bos if self.weights.add_bos else None

    def log_probs(self, chunk: list[int], first: int) -> Any:
        """Log-softmax rows for positions ``first .. ctx-2`` (each predicts the next token)."""
        import numpy as np

        self.ctx.clear()
        try:
            _decode(self.ctx, self._batch, chunk, 0, first)
        except GgrunError:
            raise GgrunError(f"{self.path.name}: llama.cpp failed to decode a chunk") from None
        n_out = len(chunk) - first
        x = np.array(self.ctx.all_logits(n_out)[:-1], dtype=np.float32)
        x -= x.max(axis=1, keepdims=True)
        lse = np.log(np.exp(x).sum(axis=1, keepdims=True, dtype=np.float64))
        x -= lse.astype(np.float32)
        return x


def chunks_of(tokens: list[int], cfg: BenchConfig, bos: int | None) -> Iterator[list[int]]:
    n = min(cfg.chunks, len(tokens) // cfg.ctx)
    if n < 1 or len(tokens) < 2 * cfg.ctx:
        raise InvalidArgument(
            f"the text has {len(tokens)} tokens; the quality pass needs at least "
            f"{2 * cfg.ctx} (2 x --ctx)"
        )
    for i in range(n):
        chunk = tokens[i * cfg.ctx : (i + 1) * cfg.ctx]
        if bos is not None:
            chunk = [bos, *chunk[1:]]
        yield chunk


def _kld_rows(lp_ref: Any, lp: Any, block: int = 32) -> Any:
    """KL(ref || model) of each row, a block of rows at a time (bounded memory)."""
    import numpy as np

    out = np.empty(len(lp_ref), dtype=np.float64)
    for i in range(0, len(lp_ref), block):
        a, b = lp_ref[i : i + block], lp[i : i + block]
        out[i : i + block] = (np.exp(a) * (a - b)).sum(axis=1, dtype=np.float64)
    return out


@dataclass
class _Quality:
    nll: float = 0.0
    count: int = 0
    kld: list[Any] = field(default_factory=list)
    same: int = 0


Target = tuple[Path, str]  # a model file and a KV cache type
MAX_TEXT_BYTES = 64 << 20  # the quality pass reads a few thousand tokens of it


def corpus_text(cfg: BenchConfig) -> str:
    """The quality pass's text: ``--text`` (a regular file within a cap) or the corpus."""
    raw = read_bytes(cfg.text or corpus_path(), what="text", limit=MAX_TEXT_BYTES)
    return raw.decode("utf-8", errors="replace")


def measure_quality(
    ref_t: Target, targets: list[Target], cfg: BenchConfig, progress: Progress | None = None
) -> dict[Target, dict[str, float]]:
    """Perplexity of each model (and cache type), and KLD / same-top against the reference."""
    import numpy as np

    text = corpus_text(cfg)
    first = cfg.ctx // 2
    out: dict[Target, dict[str, float]] = {}
    others = [t for t in targets if t != ref_t] or [ref_t]
    ref_path = ref_t[0]
    ref = _Scorer(ref_path, cfg, ref_t[1])
    try:
        tokens = ref.tokenize(text)
        chunks = list(chunks_of(tokens, cfg, ref.bos()))
        ref_q = _Quality()  # scored during the first candidate's pass
        for n_pass, target in enumerate(others):
            other = target[0]
            cand = _Scorer(other, cfg, target[1]) if target != ref_t else None
            try:
                if cand is not None and cand.n_vocab != ref.n_vocab:
                    raise InvalidArgument(
                        f"{other.name} has a {cand.n_vocab}-token vocabulary and the "
                        f"reference {ref_path.name} {ref.n_vocab}: they cannot be compared"
                    )
                q = _Quality()
                for ci, chunk in enumerate(chunks):
                    if progress:
                        where = f"{other.name} [{target[1]}]"
                        progress(f"quality {where}: chunk {ci + 1}/{len(chunks)}")
                    nexts = np.asarray(chunk[first + 1 :])
                    rows = np.arange(len(nexts))
                    lp_ref = ref.log_probs(chunk, first)
                    if n_pass == 0:
                        ref_q.nll -= float(lp_ref[rows, nexts].sum())
                        ref_q.count += len(nexts)
                    if cand is None:
                        continue
                    lp = cand.log_probs(chunk, first)
                    q.nll -= float(lp[rows, nexts].sum())
                    q.count += len(nexts)
                    q.kld.append(_kld_rows(lp_ref, lp))
                    q.same += int((lp_ref.argmax(axis=1) == lp.argmax(axis=1)).sum())
                if cand is not None:
                    kld = np.concatenate(q.kld)
                    out[target] = {
                        "ppl": math.exp(q.nll / q.count),
                        "kld_mean": float(kld.mean()),
                        "kld_p99": float(np.percentile(kld, 99)),
                        "same_top": q.same / q.count,
                        "scored": q.count,
                    }
            finally:
                if cand is not None:
                    cand.close()
        out[ref_t] = {
            "ppl": math.exp(ref_q.nll / ref_q.count),
            "kld_mean": 0.0,
            "kld_p99": 0.0,
            "same_top": 1.0,
            "scored": ref_q.count,
        }
    finally:
        ref.close()
    for d in out.values():
        d["ppl_ratio"] = d["ppl"] / out[ref_t]["ppl"]
    return out


# ---------------------------------------------------------------- the whole bench


def expand(refs: Sequence[str | Path], quant: str | None = None) -> list[Path]:
    """GGUF paths for what the user named: a .gguf, an alias (every local quant, or the
    one named), or a Hugging Face checkpoint folder with ``quant`` (converted once and
    cached under ``GGRUN_HOME/converted``)."""
    from ggrun import models as store

    out: list[Path] = []
    for ref in refs:
        r = str(ref)
        p = Path(r)
        if p.is_dir():
            if not quant:
                raise InvalidArgument(f"{r} is a checkpoint folder: say which --quant to bench")
            out += _converted(p, quant)
        elif store.looks_like_path(r) or ":" in r:
            out.append(store.resolve(r))
        else:
            alias, _q = store.parse_ref(r)
            local = [lp for q in alias.quants if (lp := store.local_path(alias, q)) is not None]
            if not local:
                store.resolve(r)  # the usual "not downloaded" error
            out += local
    return list(dict.fromkeys(out))


def _converted(src: Path, quant: str) -> list[Path]:
    from ggrun.converter import load as load_converter
    from ggrun.models import ggrun_home

    convert = load_converter()

    cache = ggrun_home() / "converted"
    cache.mkdir(parents=True, exist_ok=True)
    wanted = [q.strip().lower() for q in quant.split(",") if q.strip()]
    plan = convert.plan(src, wanted, cache)
    missing = [o.quant for o in plan.outputs if not o.path.exists()]
    if missing:
        logger.warning("converting %s to %s (cached in %s)", src.name, ", ".join(missing), cache)
        convert.convert(src, missing, cache)
    return [o.path for o in plan.outputs]


def bench(
    models: Sequence[str | Path],
    *,
    reference: str | Path | None = None,
    config: BenchConfig | None = None,
    progress: Progress | None = None,
    evaluation: EvalConfig | None = None,
    **overrides: Any,
) -> list[BenchResult]:
    """Benchmark GGUF files (paths or aliases); returns one result per model and cache
    type. With ``evaluation``, each also answers the eval file's examples."""
    from ggrun.gguffile import read_gguf

    cfg = config or BenchConfig(**overrides)
    if cfg.reps < 1 or cfg.pp < 1 or cfg.tg < 1 or cfg.chunks < 1 or cfg.ctx < 16:
        raise InvalidArgument("--reps, --pp, --tg and --chunks must be >= 1, --ctx >= 16")
    paths = expand(models)
    if not paths:
        raise InvalidArgument("nothing to benchmark")
    unknown = [c for c in cfg.cache_types if c not in CACHE_TYPES]
    if unknown or not cfg.cache_types:
        raise InvalidArgument(f"cache types are {', '.join(CACHE_TYPES)}, not {unknown}")
    plan = evaluate.Plan.of(evaluation) if evaluation else None  # bad input fails now
    infos = {p: read_gguf(p) for p in paths}
    for p in paths:  # a device this build lacks, or a model that cannot fit: fail now
        load_config(p, cfg, cfg.pp + cfg.tg, cfg.pp, infos[p])
    targets = [(p, c) for p in paths for c in cfg.cache_types]
    results = []
    for p, c in targets:
        info = infos[p]
        results.append(
            BenchResult(
                model=p.name,
                path=str(p),
                quant=info.file_type,
                size_bytes=info.file_size,
                bits_per_weight=info.bits_per_weight,
                n_params=info.n_params,
                threads=cfg.threads or 0,
                pp=cfg.pp,
                tg=cfg.tg,
                cache_type=c,
            )
        )
    if cfg.speed:
        for r, (p, c) in zip(results, targets, strict=True):
            if progress:
                progress(f"speed {r.model}")
            s = measure_speed(p, cfg, c)
            r.load_s, r.threads, r.peak_rss_bytes = s["load_s"], s["threads"], s["peak"]
            r.pp_tps, r.pp_tps_std = _mean_std(s["pp"])
            r.tg_tps, r.tg_tps_std = _mean_std(s["tg"])
            r.bandwidth_gbs = r.size_bytes * r.tg_tps / 1e9
    ref_t = _reference(paths, infos, reference, cfg)
    q: dict[Target, dict[str, float]] = {}
    if cfg.quality:
        q = measure_quality(ref_t, [t for t in targets if t != ref_t] or [ref_t], cfg, progress)
        ref = ref_t[0]
        label = ref.name if ref_t[1] == "f16" else f"{ref.name} (KV {ref_t[1]})"
        for r, t in zip(results, targets, strict=True):
            if t in q:
                d = q[t]
                r.reference = label
                r.ppl, r.ppl_ratio = d["ppl"], d["ppl_ratio"]
                r.kld_mean, r.kld_p99, r.same_top = d["kld_mean"], d["kld_p99"], d["same_top"]
                r.scored_tokens = int(d["scored"])
    _kv_check(results, targets, cfg, q if ref_t[1] == "f16" else {}, ref_t, progress)
    if plan is not None:
        _apply_eval(plan, results, targets, ref_t, cfg, progress)
    return results


def _reference(
    paths: list[Path], infos: dict[Path, Any], reference: str | Path | None, cfg: BenchConfig
) -> Target:
    """The model (and cache type) others are compared with: ``reference``, or the most
    precise model with an f16 cache."""
    from ggrun import models as store

    ref = store.resolve(str(reference)) if reference else None
    if ref is None:
        ref = max(paths, key=lambda p: infos[p].bits_per_weight)
    return ref, "f16" if "f16" in cfg.cache_types else cfg.cache_types[0]


# ---------------------------------------------------------------- the KV sanity check

KV_KLD_MAX = 0.1  # mean KLD against the same model's f16 cache; gibberish is far above
KV_SAME_TOP_MIN = 0.85  # and the share of tokens where both put the same token on top
KV_CHUNKS = 4  # chunks of the corpus the check scores (at most --chunks)


def kv_verdict(kld: float, same_top: float) -> str:
    return "ok" if kld <= KV_KLD_MAX and same_top >= KV_SAME_TOP_MIN else "failed"


def _kv_check(
    results: list[BenchResult],
    targets: list[Target],
    cfg: BenchConfig,
    quality: dict[Target, dict[str, float]],
    ref_t: Target,
    progress: Progress | None,
) -> None:
    """Each quantized cache type against f16 on this device, model file by model file:
    a type whose output drifts (llama.cpp#23044 gave gibberish) is marked failed."""
    from dataclasses import replace

    by_path: dict[Path, list[Target]] = {}
    for t in targets:
        if t[1] != "f16":
            by_path.setdefault(t[0], []).append(t)
    for path, others in by_path.items():
        if ref_t == (path, "f16") and all(t in quality for t in others):
            found = quality  # the quality pass already compared them with this f16
        else:
            small = replace(cfg, chunks=min(cfg.chunks, KV_CHUNKS))
            found = measure_quality((path, "f16"), others, small, progress)
        for r, t in zip(results, targets, strict=True):
            if t in others:
                d = found[t]
                r.kv_kld, r.kv_same_top = d["kld_mean"], d["same_top"]
                r.kv_check = kv_verdict(d["kld_mean"], d["same_top"])
                if r.kv_check == "failed":
                    logger.warning(
                        "%s: the %s KV cache fails the sanity check on this device (KLD %.3f, "
                        "same top token %.0f%% against f16)",
                        path.name, t[1], d["kld_mean"], 100 * d["same_top"],
                    )  # fmt: skip


# ---------------------------------------------------------------- accuracy on the user's task


def _apply_eval(
    plan: evaluate.Plan,
    results: list[BenchResult],
    targets: list[Target],
    ref_t: Target,
    cfg: BenchConfig,
    progress: Progress | None,
) -> None:
    outcomes = plan.run_all(targets, ref_t, threads=cfg.threads, device=cfg.device,
                            progress=progress)  # fmt: skip
    for r, o in zip(results, outcomes, strict=True):
        r.task, r.match, r.examples, r.correct = plan.task.name, o.match, o.n, o.correct
        r.accuracy, r.ci = o.accuracy, list(o.ci)
        r.field_accuracy = o.field_accuracy() if o.match == "json" else None
        r.s_per_example, r.eval_tps = o.seconds_per_example, o.tokens_per_second
        r.regressions, r.wrong = len(o.lost), o.lost[: plan.config.shown]


def recommendation(
    results: Sequence[BenchResult], tolerance: float = 2.0, prefer: str = "size"
) -> tuple[BenchResult | None, evaluate.Recommendation]:
    """By accuracy on the user's examples (:func:`ggrun.evaluate.recommend`): the variant
    to use and the evidence; a KV cache type that failed its check is never chosen."""
    cands = [
        evaluate.Candidate(
            _label(r),
            r.correct,
            r.examples,
            r.size_bytes,
            r.tg_tps or (r.eval_tps or 0.0),
            r.kv_check != "failed",
        )  # fmt: skip
        for r in results
    ]
    rec = evaluate.recommend(cands, tolerance, prefer)
    return (results[rec.index] if rec.index is not None else None), rec


KLD_OK = 0.05  # mean KLD below this is "close to the reference" for the recommendation


def recommended(results: Sequence[BenchResult]) -> BenchResult | None:
    """The fastest model whose output stays close to the reference (never a KV cache
    type that failed its sanity check)."""
    measured = [r for r in results if r.tg_tps > 0 and r.kv_check != "failed"]
    close = [r for r in measured if r.kld_mean is None or r.kld_mean <= KLD_OK]
    return max(close or measured, key=lambda r: r.tg_tps) if measured else None


def recommend(results: Sequence[BenchResult]) -> str:
    """One line: :func:`recommended` and why."""
    best = recommended(results)
    if best is None:
        return ""
    measured = [r for r in results if r.tg_tps > 0 and r.kv_check != "failed"]
    ref = next((r for r in results if r.kld_mean == 0.0 and r.reference), None)
    close = [r for r in measured if r.kld_mean is None or r.kld_mean <= KLD_OK]
    slowest = min(measured, key=lambda r: r.tg_tps)
    parts = [f"{_label(best)}: {best.tg_tps:.1f} tok/s"]
    if best is not slowest:
        parts[0] += f", {best.tg_tps / slowest.tg_tps:.1f}x faster than {_label(slowest)}"
    if best.kld_mean is not None and ref is not None and best is not ref:
        parts.append(f"KLD {best.kld_mean:.3f}")
        parts.append(f"same top token {100 * (best.same_top or 0):.0f}%")
    why = "recommended on this machine"
    if not close:
        why += f" (no model stays within KLD {KLD_OK} of the reference)"
    return ", ".join(parts) + f": {why}"


def _label(r: BenchResult) -> str:
    return r.quant if r.cache_type == "f16" else f"{r.quant} with a {r.cache_type} KV cache"
