"""Speculative decoding: ggrun's lookup, auto and draft modes against plain decoding and
against llama.cpp's own speculative tools, on the same prompts, interleaved in one run.

Tasks, five prompts each: a code edit (return a ~40-line function with one variable
renamed), an extraction (copy fields of a document as JSON), the same under a JSON
schema, the same facts in prose under the schema (no field labelled in the text), a
forced tool call with the record as its arguments (``tool_choice: required``; llama.cpp's
tools have no tool-call grammar and do not run it), a summary of a pasted text, and free
generation (a story: nothing to copy). For every prompt, in turn: plain
decoding, then lookup, auto, the draft model, and auto on the model loaded with the draft
("auto+draft"), through ggrun's public API (greedy, 2 threads; ``--modes`` picks them),
then llama.cpp's ``llama-speculative-simple`` with ``ngram-mod`` and with the draft model,
and ``llama-lookup``. A model remembers its replies to the task's earlier prompts
(``--memory warm``, as in a batch job over these documents; never the reply to the prompt
being run) or nothing (``--memory cold``). It reports generation tok/s, the ratio to plain
decoding in the same round, the acceptance, and whether the output equals plain decoding's.

    python benchmarks/speculative.py --out spec.json     # ~1 h on 2 cores
    python benchmarks/speculative.py --verify-cost       # what n rows cost against one
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.llama_tools import tool  # noqa: E402
from ggrun.engine import LoadConfig, Model  # noqa: E402

FUNCS = [
    ("total", "def summarize_orders(orders, tax_rate):\n"),
    ("result", "def parse_config(lines):\n"),
    ("count", "def histogram(words, min_len):\n"),
    ("buffer", "def render_table(rows, widths):\n"),
    ("queue", "def walk_graph(graph, start):\n"),
]


def _function(i: int) -> tuple[str, str]:
    """A ~40-line function that uses the variable to rename often."""
    var, head = FUNCS[i]
    body = [head, f'    """Process the input and return {var}."""', f"    {var} = []"]
    for k in range(12):
        body += [
            f"    for item_{k} in range({k + 2}):",
            f"        if item_{k} % {k + 2} == 1:",
            f"            {var}.append(item_{k} * {k + 3})",
        ]
    body += [f"    {var}.sort()", f"    return {var}"]
    return var, "\n".join(body) + "\n"


PEOPLE = ["Ada Lovelace", "Alan Turing", "Grace Hopper", "Edsger Dijkstra", "Barbara Liskov"]
CITIES = ["London", "Manchester", "Arlington", "Nuenen", "Boston"]


def _doc(i: int) -> str:
    return (
        f"Customer record #{1000 + i}. Name: {PEOPLE[i]}. City: {CITIES[i]}. Email: "
        f"{PEOPLE[i].split()[0].lower()}@example.org. Phone: +44 20 7946 0{i}58. Account "
        f"opened 201{i}-0{i + 1}-1{i}. Plan: premium. Notes: {PEOPLE[i]} prefers email, "
        f"asked about invoices twice, lives in {CITIES[i]} near the station, and renewed "
        "the premium plan last year without changes."
    )


def _prose(i: int) -> str:
    """The facts of :func:`_doc` in prose, with no field named: nothing to find by label."""
    return (
        f"{PEOPLE[i]} wrote to us from {CITIES[i]} last week. She can be reached at "
        f"{PEOPLE[i].split()[0].lower()}@example.org or on +44 20 7946 0{i}58, and has been "
        f"with us since 201{i}-0{i + 1}-1{i}, on the premium plan. {PEOPLE[i]} prefers email, "
        f"asked about invoices twice, lives in {CITIES[i]} near the station, and renewed "
        "the premium plan last year without changes."
    )


PASSAGE = (
    "The Python standard library's json module encodes and decodes JSON. json.dumps turns "
    "a Python object into a string and json.loads parses a string back. Both take options: "
    "indent pretty-prints, sort_keys orders the keys, and ensure_ascii escapes non-ASCII "
    "characters. Invalid input raises json.JSONDecodeError, which tells the line and the "
    "column. For files, json.dump and json.load read and write streams directly. "
)

TASKS: dict[str, list[str]] = {
    "code edit": [
        f"Rename the variable `{_function(i)[0]}` to `acc` in this function. Return the whole "
        f"function and nothing else.\n\n{_function(i)[1]}"
        for i in range(5)
    ],
    "extraction": [
        "Copy these fields from the document as JSON with keys name, city, email, phone, "
        f"opened, plan, notes (copy each value exactly):\n\n{_doc(i)}"
        for i in range(5)
    ],
    "schema extraction": [
        f"Copy the fields of this customer record exactly, as JSON:\n\n{_doc(i)}" for i in range(5)
    ],
    "prose extraction": [
        "Copy the customer's name, city, email, phone, the date the account was opened, the "
        f"plan and the notes exactly, as JSON:\n\n{_prose(i)}"
        for i in range(5)
    ],
    "tool call": [
        f"File this customer record in the CRM, copying every field exactly:\n\n{_doc(i)}"
        for i in range(5)
    ],
    "summary": [
        f"Summarise this text in three sentences:\n\n{PASSAGE * (i + 2)}" for i in range(5)
    ],
    "free generation": [
        f"Write a short story about {topic}."
        for topic in (
            "a lighthouse keeper",
            "a lost robot",
            "a winter market",
            "a tiny dragon",
            "a train at night",
        )  # fmt: skip
    ],
}


FIELDS = ("name", "city", "email", "phone", "opened", "plan", "notes")
RECORD = {
    "type": "object",
    "properties": {f: {"type": "string"} for f in FIELDS},
    "required": list(FIELDS),
}
SAVE = {
    "type": "function",
    "function": {
        "name": "save_customer",
        "description": "Save a customer record in the CRM.",
        "parameters": RECORD,
    },
}
# what a task's requests carry: ggrun's keywords, and the same for llama.cpp's tools
CONSTRAINTS: dict[str, tuple[dict[str, Any], list[str]]] = {
    "schema extraction": ({"schema": RECORD}, ["--json-schema", json.dumps(RECORD)]),
    "prose extraction": ({"schema": RECORD}, ["--json-schema", json.dumps(RECORD)]),
    "tool call": ({"tools": [SAVE], "tool_choice": "required"}, []),
}

# ggrun's modes: "auto+draft" is auto on a model loaded with the draft model
MODES = ("lookup", "auto", "draft", "auto+draft")


def ggrun_run(m: Model, prompt: str, mode: str, n: int, **kw: Any) -> dict[str, Any]:
    msgs = [{"role": "user", "content": prompt}]
    r = m.chat(msgs, max_tokens=n, temperature=0, repeat_penalty=1.0, speculative=mode, **kw)
    acc = r.accepted_tokens / r.drafted_tokens if r.drafted_tokens else None
    text = r.text + "".join(f"{c.name}{c.arguments}" for c in r.tool_calls)
    return {"tps": r.generation_tps, "tokens": r.completion_tokens, "text": text,
            "accept": acc, "drafted": r.drafted_tokens, "forced": r.forced_tokens}  # fmt: skip


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The first run, with the median tok/s of all (each one listed) and "same" for all."""
    out = dict(runs[0])
    speeds = [r["tps"] for r in runs if r.get("tps")]
    out["tps"] = statistics.median(speeds) if speeds else None
    out["tps_all"] = speeds
    if "same" in out:
        out["same"] = all(r["same"] for r in runs)
    return out


def remember(m: Model, replies: list[list[int]]) -> None:
    """The model's memory of its earlier replies set to these."""
    assert m.memory is not None
    m.memory.clear()
    for r in replies:
        m.memory.learn(r)


def native(args: list[str], prompt: str, n: int, threads: int, extra: list[str]) -> dict[str, Any]:
    """A llama.cpp speculative example on a chat-formatted prompt: its own tok/s."""
    text = f"<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"
    cmd = [*args, "-p", text, "-n", str(n), "-t", str(threads), "--temp", "0", "-c", "4096"]
    cmd += extra
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900).stderr
    speed = re.search(r"decoded\s+(\d+) tokens in\s+([\d.]+) seconds, speed:\s+([\d.]+) t/s", out)
    drafted = re.search(r"n_drafted\s*=\s*(\d+)", out)
    accept = re.search(r"n_accept\s*=\s*(\d+)", out)
    if not speed:
        return {"tps": None, "error": out[-500:]}
    d = int(drafted.group(1)) if drafted else 0
    return {"tps": float(speed.group(3)), "tokens": int(speed.group(1)),
            "accept": int(accept.group(1)) / d if d and accept else None, "drafted": d}  # fmt: skip


def verify_cost(path: Path, threads: int) -> None:
    """What decoding n rows (the pending token and n - 1 guesses) costs against one row,
    after 384 tokens of context: medians of 5, through ggrun's llama layer."""
    from ggrun import llama

    w = llama.Weights(path)
    params = llama.ContextParams(n_ctx=2048, n_threads=threads, n_threads_batch=threads)
    ctx, b = llama.Context(w, params), llama.Batch(64)
    for start in range(0, 384, 64):
        b.clear()
        for i in range(64):
            b.add(100 + ((start + i) * 7) % 5000, start + i, 0, False)
        ctx.decode(b)
    times: dict[int, list[float]] = {}
    for _ in range(5):
        for n in (1, 2, 3, 4, 5, 8, 9, 12, 16, 17, 24, 32, 33):
            b.clear()
            for i in range(n):
                b.add(500 + i, 384 + i, 0, True)
            t0 = time.perf_counter()
            ctx.decode(b)
            times.setdefault(n, []).append(time.perf_counter() - t0)
            ctx.drop(0, 384)
    one = statistics.median(times[1])
    print(f"{path.name}: one row {one * 1000:.1f} ms; n rows against one:")
    print({n: round(statistics.median(v) / one, 2) for n, v in times.items()})
    ctx.close()
    w.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="qwen2.5-coder-1.5b")
    ap.add_argument("--draft", default="qwen2.5-coder-0.5b")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=320)
    ap.add_argument("--prompts", type=int, default=5, help="prompts per task")
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--modes", default=",".join(MODES), help="ggrun's modes to run")
    ap.add_argument("--no-native", action="store_true")
    ap.add_argument("--natives", default="ngram-mod,draft,lookup", help="llama.cpp's tools to run")
    ap.add_argument(
        "--memory",
        choices=("warm", "cold"),
        default="warm",
        help="warm: each run's model remembers its replies to the task's earlier prompts (as "
        "in a batch job over these documents; never this prompt's); cold: it remembers nothing",
    )
    ap.add_argument("--reps", type=int, default=1, help="runs of each side per prompt")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--verify-cost", action="store_true", help="only the cost of n rows")
    args = ap.parse_args()
    from tests.conftest import fetch

    if args.verify_cost:
        verify_cost(fetch(args.model), args.threads)
        return

    modes = [m for m in args.modes.split(",") if m]
    if unknown := set(modes) - set(MODES):
        ap.error(f"unknown modes: {', '.join(sorted(unknown))}")
    target, draft = fetch(args.model), fetch(args.draft)
    cfg = LoadConfig(n_ctx=4096, n_threads=args.threads, n_threads_batch=args.threads)
    plain_m = Model(target, cfg)
    draft_m = Model(target, cfg, speculative="draft", draft=draft)
    b = tool("llama-speculative-simple")
    natives = {
        "llama.cpp ngram-mod": [str(b), "-m", str(target), "--spec-type", "ngram-mod"],
        "llama.cpp draft": [
            str(b),
            "-m",
            str(target),
            "-md",
            str(draft),
            "--spec-type",
            "draft-simple",
            "--spec-draft-n-max",
            "16",
        ],  # fmt: skip
        "llama-lookup": [str(tool("llama-lookup")), "-m", str(target)],
    }
    ggrun_run(plain_m, "Say hi.", "off", 8)  # warm-up
    rows: list[dict[str, Any]] = []
    for task in args.tasks.split(","):
        earlier: list[list[int]] = []  # the plain replies to the task's earlier prompts
        kw, extra = CONSTRAINTS.get(task, ({}, []))
        for i, prompt in enumerate(TASKS[task][: args.prompts]):
            runs: dict[str, list[dict[str, Any]]] = {}
            for _ in range(args.reps):  # the sides interleaved: the host drifts
                plain = ggrun_run(plain_m, prompt, "off", args.max_tokens, **kw)
                assert plain_m.memory is not None
                reply = list(plain_m.memory.replies[-1])
                runs.setdefault("plain", []).append(plain)
                for name in modes:
                    m = draft_m if name in ("draft", "auto+draft") else plain_m
                    remember(m, earlier)
                    r = ggrun_run(m, prompt, name.split("+")[0], args.max_tokens, **kw)
                    r["same"] = r["text"] == plain["text"]
                    runs.setdefault(name, []).append(r)
                if not args.no_native:
                    for name, cmd in natives.items():
                        if name.split()[-1].removeprefix("llama-") in args.natives.split(","):
                            if task == "tool call":  # no tool-call grammar there
                                continue
                            r = native(cmd, prompt, args.max_tokens, args.threads, extra)
                            runs.setdefault(name, []).append(r)
            row: dict[str, Any] = {"task": task, "prompt": i}
            row |= {name: _median_run(rs) for name, rs in runs.items()}
            plain = row["plain"]
            for r in row.values():
                if isinstance(r, dict) and r.get("tps") and plain["tps"]:
                    r["ratio"] = r["tps"] / plain["tps"]
                if isinstance(r, dict):
                    r.pop("text", None)
            rows.append(row)
            if args.memory == "warm":
                earlier.append(reply)
            print(json.dumps({k: (v if not isinstance(v, dict) else
                  {kk: (round(vv, 3) if isinstance(vv, float) else vv) for kk, vv in v.items()})
                  for k, v in row.items()}), file=sys.stderr, flush=True)  # fmt: skip
    report(rows)
    if args.out:
        args.out.write_text(json.dumps({"when": time.ctime(), "args": vars(args) | {"out": None},
                                        "rows": rows}, indent=1, default=str))  # fmt: skip


def report(rows: list[dict[str, Any]]) -> None:
    modes = list(dict.fromkeys(k for r in rows for k in r if k not in ("task", "prompt")))
    print("| task | " + " | ".join(f"{m} tok/s (x plain)" for m in modes) + " |")
    print("|---" * (len(modes) + 1) + "|")
    for task in dict.fromkeys(r["task"] for r in rows):
        rs = [r for r in rows if r["task"] == task]
        cells = []
        for m in modes:
            got = [r[m] for r in rs if m in r]  # llama.cpp's tools skip some tasks
            tps = [g["tps"] for g in got if g.get("tps")]
            ratios = [g["ratio"] for g in got if g.get("ratio")]
            acc = [g["accept"] for g in got if g.get("accept") is not None]
            same = [g["same"] for g in got if "same" in g]
            cell = f"{statistics.median(tps):.1f}" if tps else "-"
            if ratios and m != "plain":
                cell += f" ({statistics.median(ratios):.2f}x"
                cell += f", acc {statistics.median(acc):.0%}" if acc else ""
                cell += f", same {sum(same)}/{len(same)}" if same else ""
                cell += ")"
            cells.append(cell)
        print(f"| {task} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
