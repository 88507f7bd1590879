"""Ray's own cost: ``ggrun batch`` locally against ``ggrun batch --ray`` on the same machine.

Three commands on the same lines (greedy, ``--max-tokens`` each), each a fresh process,
as a user runs them:
- local: ``ggrun batch MODEL in.jsonl -o out.jsonl --parallel P --threads T``;
- ray 1×T: the same with ``--ray auto --workers 1 --threads T`` (one worker, P slots);
- ray T×1: ``--ray auto --workers T --threads 1`` (T workers of one thread, P slots each).
No Ray cluster runs beforehand, so ``--ray auto`` starts a local one and stops it at the
end, and the local command runs with no Ray in the background. Each command's last line
gives its generated tokens and time; a Ray run also says how long joining the cluster and
starting the workers took. "steady" is tokens over the time after that (what Ray costs
while it runs), "end to end" over the whole command (loading the model excluded for
every side: the local command loads it before its clock starts; Ray's workers load it
in their start). Rounds are interleaved after a burn-in; it prints medians with their
spread, the ratio to local, whether the texts equal the local run's, and writes JSON.

    flock /tmp/ggrun-cpu.lock python benchmarks/ray_batch.py --model smollm2-135m --reps 3
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.decode import resolve  # noqa: E402

TOPICS = ["a lighthouse", "the sea", "a red fox", "winter", "a city at night", "trains",
          "a garden", "the moon", "an old map", "bread"]  # fmt: skip
SUMMARY = re.compile(
    r"done \((\d+) with errors\) in ([\d.]+) s"
    r"(?: on (\d+) Ray workers? \(after ([\d.]+) s to start)?.*?, (\d+) tokens generated"
)


def write_lines(path: Path, n: int) -> None:
    """Raw completions that run to ``--max-tokens`` (a labelling job's prompts are longer;
    here decoding dominates, where Ray's cost would show)."""
    with path.open("w") as f:
        for i in range(n):
            prompt = f"A story about {TOPICS[i % len(TOPICS)]}, part {i}.\n\nIt began"
            f.write(json.dumps({"id": i, "prompt": prompt}) + "\n")


def run(cmd: list[str], out: Path) -> dict[str, Any]:
    out.unlink(missing_ok=True)
    p = subprocess.run(cmd, capture_output=True, text=True, check=False)
    m = SUMMARY.search(p.stderr)
    if p.returncode != 0 or m is None:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{p.stderr[-2000:]}")
    errors, dt, start, tokens = int(m[1]), float(m[2]), float(m[4] or 0), int(m[5])
    if errors:
        raise SystemExit(f"{errors} lines failed:\n{p.stderr[-2000:]}")
    texts = {str(r["id"]): r["text"] for r in map(json.loads, out.read_text().splitlines())}
    # ggrun's clock starts when the workers are ready; their start is reported apart
    return {"tokens": tokens, "seconds": dt, "start_s": start, "steady": tokens / dt,
            "e2e": tokens / (dt + start), "texts": texts}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--lines", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    path = resolve(args.model)
    t, p = args.threads, args.parallel
    tmp = Path(tempfile.mkdtemp(prefix="ggrun-ray-bench-"))
    src, out = tmp / "in.jsonl", tmp / "out.jsonl"
    write_lines(src, args.lines)
    base = [sys.executable, "-m", "ggrun", "batch", str(path), str(src), "-o", str(out),
            "-p", str(p), "-n", str(args.max_tokens), "--temp", "0"]  # fmt: skip
    sides = {
        f"local `--parallel {p} --threads {t}`": [*base, "--threads", str(t)],
        f"`--ray auto --workers 1 --threads {t}`": [
            *base,
            "--ray",
            "auto",
            "--workers",
            "1",
            "--threads",
            str(t),
        ],  # fmt: skip
        f"`--ray auto --workers {t} --threads 1`": [
            *base,
            "--ray",
            "auto",
            "--workers",
            str(t),
            "--threads",
            "1",
        ],  # fmt: skip
    }
    burn = tmp / "burn.jsonl"
    write_lines(burn, 4)
    for cmd in sides.values():  # burn-in: page cache, the Ray session files
        run([c if c != str(src) else str(burn) for c in cmd], out)
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in sides}
    for rep in range(args.reps):
        for name, cmd in sides.items():
            r = run(cmd, out)
            runs[name].append(r)
            line = f"{r['steady']:.1f} tok/s steady, {r['e2e']:.1f} end to end"
            print(f"round {rep + 1}: {name}: {line}", file=sys.stderr)
    first = next(iter(runs.values()))
    print(f"{path.name}, {args.lines} lines × {args.max_tokens} tokens (greedy), --parallel {p}, "
          f"{t} CPUs, median of {args.reps} interleaved rounds")  # fmt: skip
    print("| command | steady tok/s | / local (each round) | end to end tok/s | start s "
          "| texts = local |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|")
    for name, rs in runs.items():
        steady = [r["steady"] for r in rs]
        med = statistics.median(steady)
        spread = statistics.stdev(steady) if len(steady) > 1 else 0.0
        # the host drifts: compare each round with the local run of the same round
        ratios = [r["steady"] / f["steady"] for r, f in zip(rs, first, strict=True)]
        each = ", ".join(f"{x:.2f}" for x in ratios)
        e2e = statistics.median(r["e2e"] for r in rs)
        start = statistics.median(r["start_s"] for r in rs)
        ref = first[0]["texts"]
        same = sum(rs[0]["texts"].get(k) == v for k, v in ref.items())
        print(f"| {name} | {med:.1f} ± {spread:.1f} | {statistics.median(ratios):.3f} ({each}) "
              f"| {e2e:.1f} | {start:.1f} | {same}/{len(ref)} |")  # fmt: skip
    if args.out:
        slim = {k: [{x: v for x, v in r.items() if x != "texts"} for r in rs]
                for k, rs in runs.items()}  # fmt: skip
        meta = {k: v for k, v in vars(args).items() if k != "out"}
        args.out.write_text(json.dumps({"model": path.name, **meta, "runs": slim}, indent=2))


if __name__ == "__main__":
    main()
