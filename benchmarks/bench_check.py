"""Does `ggrun bench` measure right? Its figures against llama-bench and llama-perplexity.

On the same files, threads and text:
- pp512 / tg128 of ``ggrun.bench`` against ``llama-bench -p 512 -n 128`` (goal: within 5%);
- perplexity against ``llama-perplexity -c CTX --chunks N`` (goal: within 1%);
- mean KLD, 99th-percentile KLD and same-top rate against ``llama-perplexity
  --kl-divergence`` (goal: KLD within 5%).
The candidate for the KLD check is the reference requantized to Q4_0 with llama-quantize
(``--allow-requantize``), so both share a vocabulary.

    python benchmarks/bench_check.py --model qwen2.5-coder-0.5b --chunks 4
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.decode import resolve  # noqa: E402
from benchmarks.llama_tools import tool  # noqa: E402
from ggrun.benchmark import BenchConfig, bench, corpus_path  # noqa: E402


def run(args: list[str]) -> str:
    p = subprocess.run(args, capture_output=True, text=True, check=True)
    return p.stdout + p.stderr


def number(pattern: str, text: str) -> float:
    m = re.search(pattern, text)
    if not m:
        raise SystemExit(f"pattern {pattern!r} not found in:\n{text[-3000:]}")
    return float(m.group(1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="qwen2.5-coder-0.5b")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--chunks", type=int, default=4)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    ref = resolve(a.model)
    text = corpus_path()
    t = str(a.threads)
    with tempfile.TemporaryDirectory() as tmp:
        cand = Path(tmp) / f"{ref.stem}-requant-Q4_0.gguf"
        run([str(tool("llama-quantize")), "--allow-requantize", str(ref), str(cand), "Q4_0", t])
        base = Path(tmp) / "base.kld"
        common = ["-f", str(text), "-c", str(a.ctx), "-b", str(a.ctx), "--chunks", str(a.chunks)]
        common += ["-t", t]
        ppl_tool = str(tool("llama-perplexity"))
        out_ref = run([ppl_tool, "-m", str(ref), *common, "--kl-divergence-base", str(base)])
        kl = run([ppl_tool, "-m", str(cand), *common, "--kl-divergence-base", str(base),
                  "--kl-divergence"])  # fmt: skip
        lb = run([str(tool("llama-bench")), "-m", str(ref), "-p", "512", "-n", "128", "-t", t,
                  "-r", str(a.reps), "-o", "json"])  # fmt: skip
        cfg = BenchConfig(threads=a.threads, reps=a.reps, ctx=a.ctx, chunks=a.chunks)
        ours = {r.model: r for r in bench([ref, cand], reference=ref, config=cfg)}
    native = {
        "ppl_ref": number(r"Final estimate: PPL = ([\d.]+)", out_ref),
        "ppl_cand": number(r"Mean PPL\(Q\)\s*:\s*([\d.]+)", kl),
        "kld_mean": number(r"Mean\s+KLD:\s*([\d.]+)", kl),
        "kld_p99": number(r"99\.0%\s+KLD:\s*([\d.]+)", kl),
        "same_top": number(r"Same top p:\s*([\d.]+)", kl) / 100,
    }
    speeds = json.loads(lb[lb.index("[") :])
    native["pp512"] = next(x["avg_ts"] for x in speeds if x["n_prompt"] == 512)
    native["tg128"] = next(x["avg_ts"] for x in speeds if x["n_gen"] == 128)
    r, c = ours[ref.name], ours[cand.name]
    mine = {
        "ppl_ref": r.ppl,
        "ppl_cand": c.ppl,
        "kld_mean": c.kld_mean,
        "kld_p99": c.kld_p99,
        "same_top": c.same_top,
        "pp512": r.pp_tps,
        "tg128": r.tg_tps,
    }
    print(f"{ref.name} vs its Q4_0 requant, ctx {a.ctx}, {a.chunks} chunks, {a.threads} threads")
    print("| figure | llama.cpp | ggrun bench | ggrun / llama.cpp |")
    print("|---|---:|---:|---:|")
    for k, v in native.items():
        g = mine[k] or 0.0
        print(f"| {k} | {v:.4f} | {g:.4f} | {g / v:.4f} |")
    if a.out:
        a.out.write_text(json.dumps({"native": native, "ggrun": mine}, indent=2))


if __name__ == "__main__":
    main()
