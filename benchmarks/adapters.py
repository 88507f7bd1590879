"""The server's per-request overhead on each API adapter: time to first byte and to the
whole answer for a 1-token reply, against the OpenAI chat adapter on the same server.

One ``ggrun serve`` process; each round sends one streaming request per adapter in a
shuffled order (interleaved, so the machine's drift hits them all alike), a one-message
chat asking for ``max_tokens`` 1 (greedy). Time to first byte is from sending the
request to the first byte of the response body; "whole" is to its last byte. Medians and
spread (p10-p90) over ``--reps`` rounds, after a burn-in. The chat adapters render the
same messages to the same prompt, so their "whole" times differ only by parsing and
rendering; the completions row has a shorter prompt (no template). The first byte is
protocol: OpenAI chat and Responses send an event before generating (the role chunk,
``response.created``), ollama and Anthropic (whose ``message_start`` carries the prompt's
token counts) with the first token.

    python benchmarks/adapters.py --model smollm2-135m --reps 30
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.decode import resolve  # noqa: E402

MSG = [{"role": "user", "content": "Say one word."}]
# adapter name -> (path, streaming body for a 1-token reply)
BODIES: dict[str, tuple[str, dict[str, Any]]] = {
    "openai chat": ("/v1/chat/completions",
                    {"messages": MSG, "max_tokens": 1, "temperature": 0, "stream": True}),
    "openai completions": ("/v1/completions",
                           {"prompt": "Say one word.", "max_tokens": 1, "temperature": 0,
                            "stream": True}),
    "ollama chat": ("/api/chat", {"messages": MSG, "stream": True,
                                  "options": {"num_predict": 1, "temperature": 0}}),
    "responses": ("/v1/responses", {"input": "Say one word.", "max_output_tokens": 1,
                                    "temperature": 0, "stream": True}),
    "anthropic messages": ("/v1/messages", {"messages": MSG, "max_tokens": 1,
                                            "temperature": 0, "stream": True}),
}  # fmt: skip


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def one(h: httpx.Client, base: str, path: str, body: dict[str, Any]) -> tuple[float, float]:
    t0 = time.perf_counter()
    first = None
    with h.stream("POST", base + path, json=body) as r:
        if r.status_code != 200:
            raise SystemExit(f"{path}: HTTP {r.status_code}: {r.read()[:300]!r}")
        for _ in r.iter_raw():
            if first is None:
                first = time.perf_counter() - t0
    return first or 0.0, time.perf_counter() - t0


def spread(xs: list[float]) -> str:
    q = statistics.quantiles(xs, n=10) if len(xs) > 1 else [xs[0]] * 9
    return f"{statistics.median(xs) * 1e3:.1f} ({q[0] * 1e3:.1f}-{q[-1] * 1e3:.1f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--burn-in", type=int, default=3)
    ap.add_argument("--out", type=Path, help="write the figures as JSON")
    a = ap.parse_args()
    path = resolve(a.model)
    port = _port()
    cmd = [sys.executable, "-m", "ggrun", "serve", str(path), "--port", str(port),
           "--parallel", "1", "--ctx", "512", "--threads", str(a.threads)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ})  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in BODIES}
    try:
        for _ in range(300):
            try:
                if httpx.get(base + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        rng = random.Random(0)
        with httpx.Client(timeout=120) as h:
            for rep in range(a.burn_in + a.reps):
                order = list(BODIES)
                rng.shuffle(order)
                for name in order:
                    t = one(h, base, *BODIES[name])
                    if rep >= a.burn_in:
                        times[name].append(t)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    base_ttfb = statistics.median(t[0] for t in times["openai chat"])
    base_whole = statistics.median(t[1] for t in times["openai chat"])
    print(f"{path.name}, {a.threads} threads, 1-token replies, median (p10-p90) of {a.reps}")
    print("| adapter | time to first byte ms | whole answer ms | TTFB / openai chat "
          "| whole / openai chat |")  # fmt: skip
    print("|---|---:|---:|---:|---:|")
    rows = []
    for name, ts in times.items():
        ttfb = [t[0] for t in ts]
        whole = [t[1] for t in ts]
        ratio = statistics.median(ttfb) / base_ttfb
        wratio = statistics.median(whole) / base_whole
        print(f"| {name} | {spread(ttfb)} | {spread(whole)} | {ratio:.2f} | {wratio:.2f} |")
        rows.append({"adapter": name, "ttfb_ms": [t[0] * 1e3 for t in ts],
                     "whole_ms": [t[1] * 1e3 for t in ts], "ratio": ratio})  # fmt: skip
    if a.out:
        a.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
