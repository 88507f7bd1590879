"""`ggrun serve` under load: aggregate tokens/s and time to first token at 1, 4 and 8
concurrent clients, against `Model.batch` (the same engine without HTTP) at the same
parallelism.

Each client sends ``--requests`` streaming chat requests one after the other (greedy,
``repeat_penalty`` 1, ``--max-tokens`` each). The server runs in its own process with
``--parallel`` equal to the client count. Medians over ``--reps`` rounds.

    python benchmarks/serve.py --model qwen2.5-coder-0.5b --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.decode import resolve  # noqa: E402
from ggrun.batching import batch  # noqa: E402
from ggrun.engine import LoadConfig, Model  # noqa: E402


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _question(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"Write a short paragraph about the number {i}."}]


def client_run(base: str, clients: int, requests: int, max_tokens: int) -> dict[str, Any]:
    ttfts: list[float] = []
    tokens = [0]
    lock = threading.Lock()

    def one(c: int) -> None:
        with httpx.Client(timeout=600) as h:
            for k in range(requests):
                body = {"messages": _question(c * requests + k), "max_tokens": max_tokens,
                        "temperature": 0, "repeat_penalty": 1.0, "stream": True,
                        "stream_options": {"include_usage": True}}  # fmt: skip
                t0, first = time.perf_counter(), None
                with h.stream("POST", base + "/v1/chat/completions", json=body) as r:
                    for line in r.iter_lines():
                        if not line.startswith("data:") or line.endswith("[DONE]"):
                            continue
                        ev = json.loads(line[5:])
                        choices = ev["choices"]  # [] in the last one, with the usage
                        if first is None and choices and choices[0]["delta"].get("content"):
                            first = time.perf_counter() - t0
                        if ev.get("usage"):
                            with lock:
                                tokens[0] += ev["usage"]["completion_tokens"]
                with lock:
                    ttfts.append(first or 0.0)

    threads = [threading.Thread(target=one, args=(c,)) for c in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ttfts.sort()
    return {
        "tps": tokens[0] / wall,
        "ttft_p50": statistics.median(ttfts),
        "ttft_p95": ttfts[min(len(ttfts) - 1, int(0.95 * len(ttfts)))],
    }


def batch_run(m: Model, clients: int, requests: int, max_tokens: int) -> float:
    chats = [_question(i) for i in range(clients * requests)]
    t0 = time.perf_counter()
    rs = batch(m, chats, parallel=clients, max_tokens=max_tokens, temperature=0,
               repeat_penalty=1.0, slot_ctx=512)  # fmt: skip
    return sum(r.completion_tokens for r in rs) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="qwen2.5-coder-0.5b")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--clients", default="1,4,8")
    ap.add_argument("--requests", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    path = resolve(a.model)
    m = Model(path, LoadConfig(n_ctx=512, n_threads=a.threads, n_threads_batch=a.threads))
    rows = []
    for n in [int(x) for x in a.clients.split(",")]:
        port = _port()
        cmd = [sys.executable, "-m", "ggrun", "serve", str(path), "--port", str(port),
               "--parallel", str(n), "--ctx", "512", "--threads", str(a.threads)]  # fmt: skip
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env={**os.environ})  # fmt: skip
        base = f"http://127.0.0.1:{port}"
        try:
            for _ in range(300):
                try:
                    if httpx.get(base + "/health", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.2)
            client_run(base, 1, 1, 4)  # warm-up
            served, batched = [], []
            for _ in range(a.reps):
                served.append(client_run(base, n, a.requests, a.max_tokens))
                batched.append(batch_run(m, n, a.requests, a.max_tokens))
        finally:
            proc.terminate()
            proc.wait(timeout=60)
        row = {
            "clients": n,
            "serve_tps": statistics.median(s["tps"] for s in served),
            "ttft_p50": statistics.median(s["ttft_p50"] for s in served),
            "ttft_p95": statistics.median(s["ttft_p95"] for s in served),
            "batch_tps": statistics.median(batched),
        }
        rows.append(row)
        print(f"clients {n} done", file=sys.stderr)
    print(f"{path.name}, {a.threads} threads, {a.requests} requests per client, "
          f"{a.max_tokens} tokens each, median of {a.reps}")  # fmt: skip
    print("| clients | serve tok/s | TTFT p50 s | TTFT p95 s | Model.batch tok/s | serve/batch |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['clients']} | {r['serve_tps']:.1f} | {r['ttft_p50']:.2f} | "
              f"{r['ttft_p95']:.2f} | {r['batch_tps']:.1f} | "
              f"{r['serve_tps'] / r['batch_tps']:.2f} |")  # fmt: skip
    if a.out:
        a.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
