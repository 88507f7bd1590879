"""Several models behind one `ggrun serve`: time to first token cold and warm, and a swap.

Starts `ggrun serve A B --max-loaded 1` (A loads at start), then, repeated and interleaved:
- warm: a streamed request to A (loaded);
- cold/swap: a streamed request to B (not loaded: A is unloaded, B loads, then answers);
- back: a request to A again (another swap).
Time to first token is measured at the client, from sending the request to the first
content event.

    python benchmarks/serve_models.py --models smollm2-135m,qwen2.5-coder-0.5b --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def ttft(base: str, model: str) -> float:
    body = {"model": model, "messages": [{"role": "user", "content": "Say hello."}],
            "max_tokens": 8, "temperature": 0, "stream": True}  # fmt: skip
    t0 = time.perf_counter()
    with httpx.stream("POST", base + "/v1/chat/completions", json=body, timeout=600) as r:
        for line in r.iter_lines():
            if line.startswith("data:") and '"content":"' in line.replace(" ", ""):
                ev = json.loads(line[5:])
                if ev["choices"] and ev["choices"][0]["delta"].get("content"):
                    return time.perf_counter() - t0
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="smollm2-135m,qwen2.5-coder-0.5b")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    from tests.conftest import fetch

    a, b = (fetch(m) for m in args.models.split(","))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "ggrun", "serve", str(a), str(b), "--port", str(port),
           "--max-loaded", "1", "--ctx", "1024", "--threads", str(args.threads)]  # fmt: skip
    proc = subprocess.Popen(cmd, env=os.environ.copy(), stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        while True:
            try:
                if httpx.get(base + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        ida, idb = a.stem, b.stem
        ttft(base, ida)  # burn in
        warm, cold_b, cold_a = [], [], []
        for _ in range(args.rounds):
            warm.append(ttft(base, ida))
            cold_b.append(ttft(base, idb))  # swap: unload A, load B
            cold_a.append(ttft(base, ida))  # swap back
        med = statistics.median
        print(f"| {ida} warm | {med(warm):.3f} s |")
        print(f"| {idb} cold (swap from {ida}) | {med(cold_b):.3f} s |")
        print(f"| {ida} cold (swap back) | {med(cold_a):.3f} s |")
        print(json.dumps({"warm": warm, "cold_b": cold_b, "cold_a": cold_a}))
    finally:
        proc.terminate()
        proc.wait(timeout=30)


if __name__ == "__main__":
    main()
