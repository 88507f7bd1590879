"""The cost of constraints: generation tokens/s with a JSON Schema against unconstrained.

Same model, prompt and settings; alternating repetitions; medians. The constrained run
uses a schema that asks for a long array of objects, so both sides generate a similar
number of tokens.

    python benchmarks/structured.py --model qwen2.5-coder-1.5b --reps 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.decode import resolve  # noqa: E402
from ggrun.engine import LoadConfig, Model  # noqa: E402

SCHEMA = {
    "type": "object",
    "properties": {
        "cities": {
            "type": "array",
            "minItems": 10,
            "maxItems": 10,
            "items": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "country": {"type": "string"},
                    "fact": {"type": "string"},
                },
                "required": ["name", "country", "fact"],
                "additionalProperties": False,
            },
        }
    },
    "required": ["cities"],
    "additionalProperties": False,
}
PROMPT = "List ten large cities with their country and one fact each, as JSON."


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="qwen2.5-coder-1.5b")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--max-tokens", type=int, default=400)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    path = resolve(args.model)
    msgs = [{"role": "user", "content": PROMPT}]
    res: dict[str, list[float]] = {"free": [], "schema": []}
    counts: dict[str, list[int]] = {"free": [], "schema": []}
    cfg = LoadConfig(n_ctx=2048, n_threads=args.threads, n_threads_batch=args.threads)
    with Model(path, cfg) as m:
        m.chat(msgs, max_tokens=16, temperature=0)  # burn in
        for _ in range(args.reps):
            free = m.chat(msgs, max_tokens=args.max_tokens, temperature=0)
            constrained = m.chat(msgs, schema=SCHEMA, max_tokens=args.max_tokens * 2, temperature=0)
            res["free"].append(free.generation_tps)
            res["schema"].append(constrained.generation_tps)
            counts["free"].append(free.completion_tokens)
            counts["schema"].append(constrained.completion_tokens)
    out = {k: {"median_tps": statistics.median(v), "tokens": counts[k]} for k, v in res.items()}
    out["ratio"] = out["schema"]["median_tps"] / out["free"]["median_tps"]
    print(f"model {path.name}, {args.threads} threads, {args.reps} reps")
    print(f"unconstrained: {out['free']['median_tps']:.2f} tok/s ({counts['free']} tokens)")
    print(f"with schema:   {out['schema']['median_tps']:.2f} tok/s ({counts['schema']} tokens)")
    print(f"ratio {out['ratio']:.3f}")
    if args.out:
        args.out.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
