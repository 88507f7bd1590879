"""Which quant for a task: Qwen2.5-Coder-0.5B at five quants, scored on two labelled sets.

The Q4_K_M GGUF of MODELS.md is dequantized back to a Hugging Face BF16 folder
(``tests.checkpoints.dequantize_to_hf``), which ``ggrun bench`` converts to each quant
(cached under ``$GGRUN_HOME/converted``) and compares: speed, memory, perplexity and KLD
against the most precise quant, then accuracy on ``benchmarks/data/eval_sentiment.jsonl``
(the ``sentiment`` preset, 30 examples) and ``eval_contact.jsonl`` (``extract-contact``,
15 examples, scored field by field). It is what these two commands do, in one process::

    ggrun bench ./Qwen2.5-Coder-0.5B-Instruct --quant q4_0,q4_k_m,q5_k_m,q6_k,q8_0 \\
        --task sentiment --eval benchmarks/data/eval_sentiment.jsonl --json
    ggrun bench ... --task extract-contact --eval benchmarks/data/eval_contact.jsonl

    python benchmarks/eval_quants.py --out /tmp/eval_quants.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.decode import resolve  # noqa: E402
from ggrun import benchmark  # noqa: E402
from ggrun.evaluate import EvalConfig  # noqa: E402
from tests.checkpoints import dequantize_to_hf  # noqa: E402

QUANTS = "q4_0,q4_k_m,q5_k_m,q6_k,q8_0"
DATA = ROOT / "benchmarks" / "data"
TASKS = (
    ("sentiment", DATA / "eval_sentiment.jsonl"),
    ("extract-contact", DATA / "eval_contact.jsonl"),
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="qwen2.5-coder-0.5b")
    ap.add_argument("--work", type=Path, default=Path("/tmp/ggrun-eval-quants"))
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--chunks", type=int, default=4)
    ap.add_argument("--out", type=Path, default=Path("/tmp/eval_quants.json"))
    ap.add_argument(
        "--accuracy-only", action="store_true", help="no speed or quality pass (a busy machine)"
    )
    args = ap.parse_args()
    os.environ.setdefault("GGRUN_HOME", str(args.work / "home"))
    folder = args.work / "Qwen2.5-Coder-0.5B-Instruct"
    if not (folder / "config.json").exists():
        t = time.perf_counter()
        dequantize_to_hf(resolve(args.model), folder)
        print(f"dequantized to {folder} in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    t = time.perf_counter()
    paths = benchmark.expand([folder], QUANTS)
    print(f"converted (or cached) in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    cfg = benchmark.BenchConfig(reps=args.reps, chunks=args.chunks)
    if args.accuracy_only:
        cfg = replace(cfg, speed=False, quality=False)
    doc: dict[str, object] = {"quants": QUANTS, "tasks": {}}
    for i, (task, file) in enumerate(TASKS):
        ev = EvalConfig(task, file)
        run_cfg = cfg if i == 0 else replace(cfg, speed=False, quality=False)
        t = time.perf_counter()
        results = benchmark.bench(paths, config=run_cfg, evaluation=ev, progress=_progress)
        best, rec = benchmark.recommendation(results)
        doc["tasks"][task] = {  # type: ignore[index]
            "seconds": time.perf_counter() - t,
            "results": [r.as_dict() for r in results],
            "recommended": None if best is None else best.quant,
            "line": rec.line,
        }
        print(rec.line, file=sys.stderr)
    args.out.write_text(json.dumps(doc, indent=1))
    _table(doc)


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _table(doc: dict) -> None:  # type: ignore[type-arg]
    tasks = doc["tasks"]
    first = tasks["sentiment"]["results"]
    print("| quant | size MB | tg t/s | pp t/s | peak RSS MB | KLD | "
          + " | ".join(f"{t} acc [95% CI] | s/ex" for t in tasks) + " |")  # fmt: skip
    print("|---" * (6 + 2 * len(tasks)) + "|")
    for i, r in enumerate(first):
        cells = [r["quant"], f"{r['size_bytes'] / 1e6:.0f}", f"{r['tg_tps']:.1f}",
                 f"{r['pp_tps']:.0f}", f"{r['peak_rss_bytes'] / 1e6:.0f}",
                 "-" if r["kld_mean"] is None else f"{r['kld_mean']:.4f}"]  # fmt: skip
        for t in tasks.values():
            e = t["results"][i]
            lo, hi = e["ci"]
            cells.append(f"{e['correct']}/{e['examples']} [{100 * lo:.0f}-{100 * hi:.0f}%]")
            cells.append(f"{e['s_per_example']:.2f}")
        print("| " + " | ".join(cells) + " |")
    for name, t in tasks.items():
        print(f"\n{name}: {t['line']}")


if __name__ == "__main__":
    main()
