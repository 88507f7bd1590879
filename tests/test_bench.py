"""`ggrun bench` on real models: its perplexity against a slow token-by-token path, its
quality ordering on converted quants, its outputs and its errors. (Its agreement with
llama-bench and llama-perplexity is checked by benchmarks/bench_check.py.)"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from ggrun import benchmark
from ggrun.benchmark import BenchConfig, _Scorer, chunks_of
from ggrun.cli.app import app
from ggrun.errors import InvalidArgument

FAST = {"reps": 1, "pp": 32, "tg": 4, "ctx": 128, "chunks": 2}


def _slow_nll(path: Path, chunk: list[int], first: int) -> float:
    """The same scored tokens, one decode per token, read from the last logits each time."""
    from ggrun import llama

    nll = 0.0
    with (
        llama.Weights(path) as w,
        llama.Context(w, llama.ContextParams(n_ctx=len(chunk), n_batch=len(chunk))) as ctx,
        llama.Batch(1) as b,
    ):
        for i in range(len(chunk) - 1):
            b.clear()
            b.add(chunk[i], i, 0, True)
            ctx.decode(b)
            if i < first:
                continue
            x = np.array(ctx.logits(0), dtype=np.float64)
            x -= x.max()
            nll -= x[chunk[i + 1]] - math.log(np.exp(x).sum())
    return nll


def test_batched_scoring_matches_token_by_token(smol_path: Path) -> None:
    cfg = BenchConfig(ctx=64, chunks=1)
    s = _Scorer(smol_path, cfg)
    try:
        text = benchmark.corpus_path().read_text()
        chunk = next(chunks_of(s.tokenize(text), cfg, None))
        lp = s.log_probs(chunk, 32)
    finally:
        s.close()
    targets = chunk[33:]
    rows = np.arange(len(targets))
    fast = -float(lp[rows, targets].sum())
    assert lp.shape == (31, 49152)
    slow = _slow_nll(smol_path, chunk, 32)
    # one-token and batched matmuls round differently (about 1.5% here); an indexing
    # mistake (a row scored against its neighbour's target) is off by far more
    assert fast == pytest.approx(slow, rel=0.03)
    shifted = -float(lp[rows[:-1], targets[1:]].sum()) * len(rows) / (len(rows) - 1)
    assert shifted > 1.5 * slow


def test_quality_orders_the_quants(tiny_out: dict[str, Path]) -> None:
    paths = [tiny_out[q] for q in ("Q4_K_M", "Q8_0", "F16")]
    results = benchmark.bench(paths, **FAST)
    by = {r.quant: r for r in results}
    f16, q8, q4 = by["F16"], by["Q8_0"], by["Q4_K_M"]
    assert f16.reference == "Tiny-Qwen3-F16.gguf" and f16.kld_mean == 0.0
    assert f16.same_top == 1.0 and f16.ppl_ratio == 1.0
    assert q8.kld_mean is not None and q4.kld_mean is not None
    assert 0.0 < q8.kld_mean < q4.kld_mean
    assert q8.same_top is not None and q4.same_top is not None and q8.same_top >= q4.same_top
    assert q8.scored_tokens == 2 * (128 - 64 - 1)
    for r in results:
        assert r.ppl and math.isfinite(r.ppl)
        assert r.pp_tps > 0 and r.tg_tps > 0 and r.load_s > 0
        assert r.peak_rss_bytes > r.size_bytes
        assert r.bandwidth_gbs == pytest.approx(r.size_bytes * r.tg_tps / 1e9)
    assert q4.size_bytes < q8.size_bytes < f16.size_bytes


def test_recommendation() -> None:
    def r(quant: str, tg: float, kld: float) -> benchmark.BenchResult:
        return benchmark.BenchResult(
            model=quant, path="", quant=quant, size_bytes=1, bits_per_weight=1, n_params=1,
            threads=1, tg_tps=tg, kld_mean=kld, same_top=0.93, reference="F16",
        )  # fmt: skip

    line = benchmark.recommend([r("F16", 10, 0.0), r("Q8_0", 18, 0.004), r("Q4_K_M", 24, 0.03)])
    assert line.startswith("Q4_K_M: 24.0 tok/s, 2.4x faster than F16, KLD 0.030")
    assert "same top token 93%" in line and line.endswith("recommended on this machine")
    line = benchmark.recommend([r("F16", 10, 0.0), r("Q2_K", 30, 0.4)])
    assert line.startswith("F16: 10.0 tok/s")
    failed = r("Q8_0", 40, 0.001)
    failed.kv_check = "failed"  # a KV cache type that failed its check is never the pick
    assert benchmark.recommend([r("F16", 10, 0.0), failed]).startswith("F16: 10.0 tok/s")


def test_models_with_different_vocabularies_cannot_be_compared(
    smol_path: Path, qwen_path: Path
) -> None:
    with pytest.raises(InvalidArgument, match="vocabulary"):
        benchmark.bench([smol_path, qwen_path], speed=False, ctx=64, chunks=1)


def test_text_too_short(smol_path: Path, tmp_path: Path) -> None:
    short = tmp_path / "short.txt"
    short.write_text("Too short.")
    with pytest.raises(InvalidArgument, match="needs at least 256"):
        benchmark.bench([smol_path], speed=False, text=short, ctx=128)


def test_cli_outputs(smol_path: Path) -> None:
    args = ["bench", str(smol_path), "--reps", "1", "--pp", "32", "--tg", "4"]
    args += ["--ctx", "128", "--chunks", "2"]
    r = CliRunner().invoke(app, [*args, "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    (row,) = doc["results"]
    assert row["quant"] == "Q4_1" and row["tg_tps"] > 0 and 1 < row["ppl"] < 100
    assert doc["recommended"]["quant"] == "Q4_1" and doc["recommended"]["by"] == "speed"
    assert row["accuracy"] is None and row["kv_check"] is None  # no --eval, f16 only
    r = CliRunner().invoke(app, [*args, "--markdown", "--no-quality"])
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith("| model | quant | kv | size |") and "recommended" in r.stdout
    r = CliRunner().invoke(app, [*args, "--csv", "--no-quality"])
    assert r.stdout.splitlines()[0].startswith("model,quant,kv,size,bpw")


def test_checkpoint_folder_is_converted_once(tiny_src: Path) -> None:
    with pytest.raises(InvalidArgument, match="--quant"):
        benchmark.expand([tiny_src])
    (path,) = benchmark.expand([tiny_src], "q8_0")
    assert path.name == "Tiny-Qwen3-Q8_0.gguf" and path.exists()
    before = path.stat().st_mtime_ns
    assert benchmark.expand([tiny_src], "q8_0") == [path]  # cached
    assert path.stat().st_mtime_ns == before


def test_bench_uses_the_plan(smol_path: Path) -> None:
    import ggrun

    hw = ggrun.detect_hardware()
    (r,) = benchmark.bench([smol_path], quality=False, reps=1, pp=16, tg=2)
    assert r.threads == hw.generation_threads
    if "cuda" not in hw.backends:
        with pytest.raises(InvalidArgument, match="no cuda support"):
            benchmark.bench([smol_path], device="cuda", quality=False)


def test_cache_types_add_their_cost(smol_path: Path) -> None:
    from ggrun.benchmark import bench

    rows = bench([smol_path], cache_types=("f16", "q8_0", "q4_0"), **FAST)
    assert [r.cache_type for r in rows] == ["f16", "q8_0", "q4_0"]
    f16, q8, q4 = rows
    assert f16.kld_mean == 0.0 and f16.ppl_ratio == 1.0  # the reference: the f16 cache
    assert 0 < q8.kld_mean < q4.kld_mean  # a coarser cache costs more
    # the KV sanity check reuses the quality pass (the same f16 reference)
    assert (q8.kv_kld, q4.kv_kld) == (q8.kld_mean, q4.kld_mean) and f16.kv_check is None
    assert q8.kv_check == "ok"
    assert all(r.tg_tps > 0 and r.pp_tps > 0 for r in rows)
