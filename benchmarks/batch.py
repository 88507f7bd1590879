"""Throughput of continuous batching: ggrun's Batcher against llama.cpp's llama-batched-bench.

For each parallel level P (default 1, 2, 4, 8), P sequences each process a short prompt
and generate ``--tg`` tokens greedily, in one llama.cpp context:
- native: ``llama-batched-bench -npp N -ntg TG -npl P`` (its S_TG column: generated tokens
  per second across all sequences), the same llama.cpp build, its own process;
- ggrun: ``Batcher.run`` over P counting prompts of about N tokens (they never stop early),
  timed from the first decode to the last token, prompt processing included (it is small);
- and ggrun's sequential ``Model.generate``, one request after the other (the baseline
  that batching must beat).
Rounds are interleaved; it prints medians and the ratios, and writes JSON (``--out``).

    python benchmarks/batch.py --model qwen2.5-coder-0.5b --threads 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.decode import resolve  # noqa: E402
from benchmarks.llama_tools import tool  # noqa: E402
from ggrun.batching import Batcher  # noqa: E402
from ggrun.engine import LoadConfig, Model  # noqa: E402
from ggrun.request import Request  # noqa: E402


def native(path: Path, threads: int, npp: int, tg: int, levels: list[int]) -> dict[int, float]:
    out = subprocess.run(
        [
            str(tool("llama-batched-bench")),
            "-m",
            str(path),
            "-t",
            str(threads),
            "-tb",
            str(threads),
            "-c",
            str(max(levels) * (npp + tg + 16)),
            "-b",
            "512",
            "-ub",
            "512",
            "-npp",
            str(npp),
            "-ntg",
            str(tg),
            "-npl",
            ",".join(map(str, levels)),
        ],  # fmt: skip
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    speeds = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 10 and cells[0].isdigit():
            # | PP | TG | B | N_KV | T_PP s | S_PP t/s | T_TG s | S_TG t/s | T s | S t/s |
            speeds[int(cells[2])] = float(cells[7])
    if not speeds:
        raise SystemExit("could not read llama-batched-bench's table:\n" + out[-2000:])
    return speeds


def prompts(n: int) -> list[str]:
    return [f"Count from {i} to 1000: " + ", ".join(str(i + k) for k in range(6)) for i in range(n)]


def ggrun_batch(m: Model, level: int, tg: int) -> tuple[float, float]:
    """(tokens/s end to end, tokens/s after the first token: llama-batched-bench's S_TG)."""
    greedy = {"temperature": 0, "repeat_penalty": 1.0}  # llama-batched-bench does not sample
    reqs = [Request.build(prompt=p, max_tokens=tg, **greedy) for p in prompts(level)]
    with Batcher(m, parallel=level, slot_ctx=256) as b:
        t0 = time.perf_counter()
        results = [r for _, r in b.run(enumerate(reqs))]
        dt = time.perf_counter() - t0
    n = sum(r.completion_tokens for r in results)
    first = max(r.ttft for r in results)  # every prompt is decoded in the first step
    return n / dt, (n - len(results)) / (dt - first)


def ggrun_sequential(m: Model, n: int, tg: int) -> float:
    t0 = time.perf_counter()
    done = sum(
        m.generate(p, max_tokens=tg, temperature=0, repeat_penalty=1.0).completion_tokens
        for p in prompts(n)
    )
    return done / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="qwen2.5-coder-0.5b")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--levels", default="1,2,4,8")
    ap.add_argument("--tg", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    path = resolve(args.model)
    levels = [int(x) for x in args.levels.split(",")]
    m = Model(path, LoadConfig(n_ctx=512, n_threads=args.threads, n_threads_batch=args.threads))
    npp = len(m.tokenize_prompt(prompts(1)[0]))
    ggrun_batch(m, 2, 8)  # warm-up
    runs: dict[str, dict[int, list[float]]] = {
        "native": {},
        "ggrun": {},
        "ggrun_tg": {},
        "sequential": {},
    }
    for rep in range(args.reps):
        nat = native(path, args.threads, npp, args.tg, levels)
        for level in levels:
            runs["native"].setdefault(level, []).append(nat[level])
            e2e, tg_only = ggrun_batch(m, level, args.tg)
            runs["ggrun"].setdefault(level, []).append(e2e)
            runs["ggrun_tg"].setdefault(level, []).append(tg_only)
        runs["sequential"].setdefault(max(levels), []).append(
            ggrun_sequential(m, max(levels), args.tg)
        )
        print(f"round {rep + 1}/{args.reps} done", file=sys.stderr)
    med = {k: {lv: statistics.median(v) for lv, v in d.items()} for k, d in runs.items()}
    print(f"{path.name}, {args.threads} threads, prompt {npp} tokens, tg {args.tg}, "
          f"median of {args.reps}")  # fmt: skip
    print("| parallel | native S_TG | ggrun after 1st token | ratio | ggrun end to end |")
    print("|---:|---:|---:|---:|---:|")
    for level in levels:
        n, g, e = med["native"][level], med["ggrun_tg"][level], med["ggrun"][level]
        print(f"| {level} | {n:.1f} | {g:.1f} | {g / n:.2f} | {e:.1f} |")
    seq = med["sequential"][max(levels)]
    top = med["ggrun"][max(levels)]
    print(f"sequential ggrun generate: {seq:.1f} tok/s; batch of {max(levels)}: "
          f"{top / seq:.2f}x")  # fmt: skip
    if args.out:
        result: dict[str, Any] = {"model": path.name, "threads": args.threads, "runs": runs}
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
