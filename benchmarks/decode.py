"""Generation and prompt speed of ggrun against native llama.cpp (llama-bench), in one run.

For one GGUF and one thread count, interleaved rounds (drift on a shared host then hits
every side alike) of:
- ``llama-bench -p 512 -n 128`` (native, its own process: pp512 and tg128);
- the same two loops as llama-bench, through ctypes on ggrun's own context (native, in
  this process: separates ggrun's overhead from process and build effects);
- ggrun's public streaming API: a 512-token prompt processed in one batch (pp512), and
  128 tokens generated one at a time through ``Model.stream`` with greedy sampling (tg128;
  unlike llama-bench this includes sampling and detokenization).
Each side runs while no other process maps the model file: on a 2-core Xeon VM a second
process holding it made decoding ~4% faster, for llama-bench and ggrun alike, and an
earlier version of this program gave llama-bench that edge (its parent held the model).
Then a 10-turn chat, twice, recording the time to first token of each turn (KV reuse).

It prints medians, spreads and the ratios, and writes JSON (``--out``).

    python benchmarks/decode.py --model qwen2.5-coder-1.5b --threads 2
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.llama_tools import tool  # noqa: E402
from ggrun.chat import Chat  # noqa: E402
from ggrun.engine import LoadConfig, Model  # noqa: E402

TURNS = [
    "Give me one tip for writing clear Python.",
    "Why does that help?",
    "Show a two-line example.",
    "What is a common mistake there?",
    "How would a linter catch it?",
    "Name one such linter.",
    "How do I install it?",
    "How do I run it on one file?",
    "What does its exit code mean?",
    "Summarise our conversation in one sentence.",
]


def resolve(model: str) -> Path:
    p = Path(model)
    if p.exists():
        return p
    from tests.conftest import fetch

    return fetch(model)


def llama_bench(path: Path, threads: int, reps: int) -> dict[str, list[float]]:
    out = subprocess.run(
        [
            str(tool("llama-bench")),
            "-m",
            str(path),
            "-t",
            str(threads),
            "-p",
            "512",
            "-n",
            "128",
            "-r",
            str(reps),
            "-o",
            "json",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    res: dict[str, list[float]] = {}
    for row in json.loads(out):
        key = "pp512" if row["n_prompt"] else "tg128"
        res[key] = [float(x) for x in row["samples_ts"]]
    return res


def random_tokens(model: Model, n: int, rng: random.Random) -> list[int]:
    return [rng.randrange(100, model.info.n_vocab - 1000) for _ in range(n)]


def in_process_native(model: Model, rng: random.Random) -> dict[str, list[float]]:
    """llama-bench's own loops (test_prompt, test_gen) on a context of ggrun's llama layer."""
    from ggrun import llama

    params = model.context_params(model.n_ctx)
    with llama.Context(model.weights, params) as ctx, llama.Batch(512) as batch:
        for i, t in enumerate(random_tokens(model, 512, rng)):
            batch.add(t, i, 0, i == 511)
        t0 = time.perf_counter()
        ctx.decode(batch)
        pp = 512 / (time.perf_counter() - t0)
        ctx.clear()
        token = rng.randrange(100, 1000)
        t0 = time.perf_counter()
        for i in range(128):
            batch.clear()
            batch.add(token, i, 0, True)
            ctx.decode(batch)
        tg = 128 / (time.perf_counter() - t0)
    return {"pp512": [pp], "tg128": [tg]}


def ggrun_speed(model: Model, rng: random.Random, presets: bool = False) -> dict[str, list[float]]:
    """The public API: pp = a 512-token prompt; tg = 128 tokens through Model.stream, greedy
    without penalties (llama-bench samples nothing) and, with ``presets``, with each shipped
    sampling preset (its penalties and its sampler chain included, seed 1)."""
    res: dict[str, list[float]] = {"pp512": [], "tg128": []}
    greedy = {"temperature": 0, "repeat_penalty": 1.0}
    last = list(model.stream(random_tokens(model, 512, rng), max_tokens=1, **greedy))[-1]
    res["pp512"].append(last.prompt_tps)
    runs: list[tuple[str, dict[str, Any]]] = [("tg128", greedy)]
    if presets:
        from ggrun.sampling import load_presets

        runs += [(f"tg128 {name}", {"preset": name, "seed": 1}) for name in load_presets()]
    for key, opts in runs:
        res.setdefault(key, [])
        for _ in range(5):  # an early end of text would not be tg128: try other random tokens
            gen = list(model.stream(random_tokens(model, 4, rng), max_tokens=128, **opts))[-1]
            if gen.completion_tokens == 128:
                res[key].append(gen.generation_tps)
                break
    return res


def ttft(model: Model) -> list[float]:
    """Time to first token of each turn: the chat's own work plus the engine's ttft."""
    model.reset()  # turn 1 starts from an empty cache, as a new conversation does
    chat = Chat(model, system="You are a concise assistant.", temperature=0, max_tokens=48)
    times = []
    for text in TURNS:
        t0 = time.perf_counter()
        stream = chat.stream(text)  # renders, trims and tokenizes the conversation
        setup = time.perf_counter() - t0
        for _ in stream:
            pass
        assert chat.last is not None
        times.append(setup + chat.last.ttft)
    return times


def summary(xs: list[float]) -> dict[str, float]:
    return {
        "median": statistics.median(xs),
        "stdev": statistics.stdev(xs) if len(xs) > 1 else 0.0,
        "n": len(xs),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="qwen2.5-coder-1.5b", help="a .gguf path or test alias")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=1, help="llama-bench repetitions per round")
    ap.add_argument("--rounds", type=int, default=8, help="interleaved rounds")
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    ap.add_argument("--ttft-only", action="store_true", help="only the 10-turn chat")
    ap.add_argument(
        "--fresh",
        action="store_true",
        help="measure ggrun (and the native loop) in a new process each round, as llama-bench "
        "itself runs, instead of one long-lived process",
    )
    ap.add_argument(
        "--presets", action="store_true", help="also tg128 with each shipped sampling preset"
    )
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    path = resolve(args.model)
    rng = random.Random(0)
    sides = ("llama_bench", "native_in_process", "ggrun")
    res: dict[str, dict[str, list[float]]] = {k: {"pp512": [], "tg128": []} for k in sides}
    cfg = LoadConfig(n_ctx=4096, n_threads=args.threads, n_threads_batch=args.threads, n_batch=512)
    if args.ttft_only:
        with Model(path, cfg) as model:
            ttft(model)  # burn in
            turns = [ttft(model) for _ in range(3)]
        t1 = statistics.median(t[0] for t in turns)
        t10 = statistics.median(t[-1] for t in turns)
        print(
            f"model {path.name}: chat time to first token: turn 1 {t1 * 1000:.0f} ms, "
            f"turn 10 {t10 * 1000:.0f} ms, ratio {t10 / t1:.2f}"
        )
        print(
            "per turn (ms):", [round(statistics.median(c) * 1000) for c in zip(*turns, strict=True)]
        )
        return
    if args.child:  # one fresh-process measurement, printed as JSON
        with Model(path, cfg) as model:
            ggrun_speed(model, rng)  # burn in
            in_process_native(model, rng)
            got = {"native_in_process": in_process_native(model, rng)}
            got["ggrun"] = ggrun_speed(model, rng, args.presets)
        print(json.dumps(got))
        return
    for r in range(args.rounds):  # interleave, so that drift on a shared host hits all
        print(f"round {r + 1}/{args.rounds}", file=sys.stderr)
        # each side runs while no other process maps the model: on this host, a process
        # holding the same file open makes another one's decoding ~4% faster (RESULTS.md)
        rounds = [("llama_bench", llama_bench(path, args.threads, args.reps))]
        if args.fresh:
            child = [sys.executable, __file__, "--child", "--model", str(path)]
            child += ["--threads", str(args.threads)] + (["--presets"] if args.presets else [])
            out = subprocess.run(child, capture_output=True, text=True, check=True)
            rounds += list(json.loads(out.stdout.strip().splitlines()[-1]).items())
        else:
            with Model(path, cfg) as model:
                ggrun_speed(model, rng)  # burn in
                in_process_native(model, rng)
                rounds.append(("native_in_process", in_process_native(model, rng)))
                rounds.append(("ggrun", ggrun_speed(model, rng, args.presets)))
        for side, got in rounds:
            for k, v in got.items():
                res[side].setdefault(k, [])
                res[side][k] += v
    with Model(path, cfg) as model:
        turns = [ttft(model) for _ in range(2)]
    result: dict[str, Any] = {
        "model": path.name,
        "threads": args.threads,
        "rounds": args.rounds,
        "llama_bench_reps": args.reps,
        "fresh": args.fresh,
    }
    for k in ("pp512", "tg128"):
        result[k] = {side: summary(res[side][k]) for side in sides}
        ours = result[k]["ggrun"]["median"]
        result[k]["ratio_vs_llama_bench"] = ours / result[k]["llama_bench"]["median"]
        result[k]["ratio_vs_native_in_process"] = ours / result[k]["native_in_process"]["median"]
    bench_tg = result["tg128"]["llama_bench"]["median"]
    for k in sorted(k for k in res["ggrun"] if k.startswith("tg128 ") and res["ggrun"][k]):
        s = summary(res["ggrun"][k])
        result[k] = {"ggrun": s, "ratio_vs_llama_bench": s["median"] / bench_tg}
    t1 = statistics.median(t[0] for t in turns)
    t10 = statistics.median(t[-1] for t in turns)
    result["ttft"] = {
        "turn1_s": t1,
        "turn10_s": t10,
        "ratio": t10 / t1,
        "per_turn_s": [statistics.median(col) for col in zip(*turns, strict=True)],
    }
    print(f"model {path.name}, {args.threads} threads, {args.rounds} interleaved rounds")
    print(
        f"{'test':<7}{'llama-bench':>16}{'native in-proc':>17}{'ggrun':>16}"
        f"{'ggrun/bench':>13}{'ggrun/native':>14}"
    )
    for k in ("pp512", "tg128"):
        cells = "".join(
            f"{result[k][s]['median']:>9.2f} ± {result[k][s]['stdev']:<5.2f}" for s in sides
        )
        print(
            f"{k:<7}{cells}{result[k]['ratio_vs_llama_bench']:>11.3f}"
            f"{result[k]['ratio_vs_native_in_process']:>14.3f}"
        )
    for k in (k for k in result if k.startswith("tg128 ")):
        g = result[k]["ggrun"]
        print(f"{k:<28}{g['median']:>9.2f} ± {g['stdev']:<5.2f}  "
              f"ggrun/bench {result[k]['ratio_vs_llama_bench']:.3f}")  # fmt: skip
    print(
        f"chat time to first token: turn 1 {t1 * 1000:.0f} ms, turn 10 {t10 * 1000:.0f} ms, "
        f"ratio {t10 / t1:.2f}"
    )
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
