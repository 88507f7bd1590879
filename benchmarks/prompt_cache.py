"""The prompt cache across processes: time to first token and batch wall time, with and without.

Every run is a fresh Python process (the cache is all that carries over), in a GGRUN_HOME
of its own. Three cases, each repeated ``--reps`` times, interleaved, medians reported:

- ``task``: a few-shot task file whose fixed part (system prompt and examples) is about
  1,500 tokens, run on one input per process as ``ggrun generate --task`` does. The
  first process finds the cache empty (``cold``: it reads everything and saves the fixed
  part); a second process with another input loads it (``warm``); ``off`` runs with
  ``prompt_cache=False``. Greedy text of ``warm`` and ``off`` on the same input is compared.
- ``chat``: a saved conversation of about 1,500 tokens reopened with ``Chat.load`` (the
  chat's ``/load``). One process sends a message and saves the chat (a turn: its state is
  saved); the next process loads the chat and sends another (``warm``); ``off`` does the
  same without the cache, so it reads the whole history.
- ``batch``: 8 lines sharing a ~1,500-token system prompt, 4 slots, 16 new tokens each:
  wall time of ``run_batch`` in a fresh process, cache cleared first (it reads the shared
  part once and every line loads it), against ``--no-prompt-cache``.

Beside each figure: the disk size per token of state (``--cache-type q8_0`` halves it).

    python benchmarks/prompt_cache.py --model qwen2.5-coder-0.5b --reps 3 --out pc.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.decode import resolve  # noqa: E402

RULES = "\n".join(
    f"- Rule {i}: orders from region {i % 11} ship from depot {i * 7 % 23} within "
    f"{1 + i % 5} days; refunds over {10 * (i % 9) + 20} EUR need form R-{i * 37 % 1000:03d}."
    for i in range(30)
)
EXAMPLES = [
    (f"Customer {i} writes: my parcel from region {i % 11} is late, order #{4000 + i}.",
     {"intent": "late", "region": i % 11, "order": 4000 + i})
    for i in range(10)
]  # fmt: skip
INPUTS = [
    "Customer 90 writes: my parcel from region 3 is late, order #5123.",
    "Customer 91 writes: I want a refund for order #5200 from region 7.",
    "Customer 92 writes: my parcel from region 9 is late, order #5301.",
    "Customer 93 writes: the box for order #5444 from region 1 arrived broken.",
]


def task_file(folder: Path) -> Path:
    import yaml

    doc = {
        "description": "Route a support message (benchmark task with a long fixed part).",
        "system": "You route support messages of a parcel shop. House rules:\n" + RULES
        + "\nAnswer with the message's intent, region and order number as JSON.",
        "examples": [{"input": i, "output": o} for i, o in EXAMPLES],
        "schema": {"type": "object", "properties": {
            "intent": {"enum": ["late", "refund", "broken", "other"]},
            "region": {"type": "integer"}, "order": {"type": "integer"}},
            "required": ["intent", "region", "order"], "additionalProperties": False},
        "temperature": 0, "max_tokens": 32, "think": False,
    }  # fmt: skip
    path = folder / "route.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def chat_file(folder: Path) -> Path:
    turns = []
    for i in range(10):
        turns.append({"role": "user", "content": f"Which depot ships region {i}, and how fast? "
                      f"Also remind me of rule {i * 5}."})  # fmt: skip
        answer = (
            f"Region {i} ships from depot {i * 7 % 23} within {1 + i % 5} days. "
            f"Rule {i * 5} says refunds over {10 * (i * 5 % 9) + 20} EUR need form "
            f"R-{i * 185 % 1000:03d}. Anything else I can check for you, such as an order "
            "number or a refund form?"
        )
        turns.append({"role": "assistant", "content": answer})
    doc = {"version": 1, "messages": [
        {"role": "system", "content": "You are a parcel shop's assistant. Rules:\n" + RULES},
        *turns]}  # fmt: skip
    path = folder / "chat.json"
    path.write_text(json.dumps(doc))
    return path


# -- the child: one process, one run ---------------------------------------------------
def child(spec: dict[str, Any]) -> dict[str, Any]:
    import ggrun
    from ggrun.batching import run_batch
    from ggrun.chat import Chat

    t0 = time.perf_counter()
    model = ggrun.load(
        spec["model"], n_threads=spec["threads"], cache_type=spec["cache_type"],
        prompt_cache=spec["cache"],
    )  # fmt: skip
    loaded = time.perf_counter() - t0
    out: dict[str, Any] = {"load_s": loaded}
    if spec["case"] == "task":
        r = model.run_task(spec["task"], spec["input"])
        out.update(ttft=r.ttft, text=r.text, prompt=r.prompt_tokens, cached=r.cached_tokens)
    elif spec["case"] == "chat":
        chat = Chat(model, temperature=0, max_tokens=24)
        chat.load(spec["chat"])
        r = chat.send(spec["input"])
        if spec.get("save"):
            chat.save(spec["chat"])
        out.update(ttft=r.ttft, text=r.text, prompt=r.prompt_tokens, cached=r.cached_tokens)
    else:
        system = json.loads(Path(spec["chat"]).read_text())["messages"][0]["content"]
        lines = [[{"role": "system", "content": system}, {"role": "user", "content": q}]
                 for q in (INPUTS * 2)]  # fmt: skip
        t = time.perf_counter()
        results = [r for _, r in run_batch(model, lines, parallel=4, max_tokens=16,
                                           temperature=0)]  # fmt: skip
        out.update(wall=time.perf_counter() - t, errors=sum(r.error is not None for r in results),
                   cached=sum(r.cached_tokens for r in results),
                   prompt=sum(r.prompt_tokens for r in results))  # fmt: skip
    out["total_s"] = time.perf_counter() - t0
    model.close()
    return out


def run_child(spec: dict[str, Any], home: Path) -> dict[str, Any]:
    env = dict(os.environ, GGRUN_HOME=str(home))
    p = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(spec)],
        env=env, capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    if p.returncode != 0:
        raise SystemExit(f"child failed: {p.stderr[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def state_bytes_per_token(home: Path) -> float:
    from ggrun.promptcache import listing

    rows = [r for r in listing(home / "cache") if r["tokens"]]
    return statistics.median(r["bytes"] / r["tokens"] for r in rows) if rows else 0.0


def clear(home: Path) -> None:
    from ggrun.promptcache import clear as clear_all

    clear_all(home / "cache")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--child")
    ap.add_argument("--model", default="qwen2.5-coder-0.5b")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache-type", default="f16")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--cases", default="task,chat,batch")
    ap.add_argument("--out")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    model = str(resolve(args.model))
    base = {"model": model, "threads": args.threads, "cache_type": args.cache_type}
    report: dict[str, Any] = {"model": Path(model).name, "cache_type": args.cache_type,
                              "threads": args.threads, "cases": {}}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        task, chat = task_file(Path(tmp)), chat_file(Path(tmp))
        for case in args.cases.split(","):
            runs: dict[str, list[dict[str, Any]]] = {"cold": [], "warm": [], "off": []}
            for rep in range(args.reps):
                clear(home)
                if case == "task":
                    inp, other = INPUTS[rep % 4], INPUTS[(rep + 1) % 4]
                    spec = {**base, "case": "task", "task": str(task)}
                    runs["cold"].append(run_child({**spec, "cache": True, "input": inp}, home))
                    runs["warm"].append(run_child({**spec, "cache": True, "input": other}, home))
                    runs["off"].append(run_child({**spec, "cache": False, "input": other}, home))
                elif case == "chat":
                    saved = Path(tmp) / f"chat-{rep}.json"
                    saved.write_text(chat.read_text())
                    spec = {**base, "case": "chat", "chat": str(saved)}
                    first = {**spec, "cache": True, "input": "Which depot ships region 4?",
                             "save": True}  # fmt: skip
                    runs["cold"].append(run_child(first, home))
                    nxt = "And what does rule 12 say?"
                    runs["warm"].append(run_child({**spec, "cache": True, "input": nxt}, home))
                    runs["off"].append(run_child({**spec, "cache": False, "input": nxt}, home))
                else:
                    spec = {**base, "case": "batch", "chat": str(chat)}
                    runs["cold"].append(run_child({**spec, "cache": True}, home))
                    runs["warm"].append(run_child({**spec, "cache": True}, home))
                    runs["off"].append(run_child({**spec, "cache": False}, home))
                per_token = state_bytes_per_token(home)
                print(f"{case} rep {rep}: " + ", ".join(
                    f"{k} {v[-1].get('ttft', v[-1].get('wall')):.2f}s" for k, v in runs.items()
                ), flush=True)  # fmt: skip
            key = "wall" if case == "batch" else "ttft"
            med = {k: statistics.median(r[key] for r in v) for k, v in runs.items()}
            row = {
                "measure": key, **{f"{k}_s": round(v, 3) for k, v in med.items()},
                "warm_over_off": round(med["warm"] / med["off"], 3),
                "warm_over_cold": round(med["warm"] / med["cold"], 3),
                "prompt_tokens": runs["off"][0].get("prompt"),
                "cached_tokens_warm": runs["warm"][0].get("cached"),
                "state_bytes_per_token": round(per_token),
                "same_text_warm_off": all(
                    w.get("text") == o.get("text")
                    for w, o in zip(runs["warm"], runs["off"], strict=True)
                ),
                "runs": runs,
            }  # fmt: skip
            report["cases"][case] = row
            print(json.dumps({k: v for k, v in row.items() if k != "runs"}), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
