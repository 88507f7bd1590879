"""Converter speed and memory at Qwen3-1.7B scale, against llama.cpp's own tools.

Writes (once, cached) a checkpoint with Qwen3-1.7B's exact shapes, seeded random BF16
weights in 2 shards and a real Qwen tokenizer (MODELS.md), then times, each as its own
process, sampling the peak *anonymous* memory (RssAnon of the process tree; file-backed
mmap pages can be reclaimed and do not count):

- ``ggrun convert --quant bf16``, ``--quant q4_k_m`` and ``--quant f16,q8_0,q4_k_m``;
- with ``--upstream-python`` (a Python with torch and transformers): llama.cpp's
  ``convert_hf_to_gguf.py --outtype bf16`` and ``llama-quantize`` Q4_K_M on that file.

    python benchmarks/convert.py [--upstream-python /tmp/ref/bin/python] [--out r.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.llama_tools import CACHE, tool  # noqa: E402


def rss_anon(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            with open(f"/proc/{p.pid}/status") as f:
                for line in f:
                    if line.startswith("RssAnon:"):
                        total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def measure(cmd: list[str]) -> dict[str, Any]:
    """Wall time and peak anonymous memory of a command and its children."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ps = psutil.Process(proc.pid)
    peak = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, rss_anon(ps))
            time.sleep(0.05)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    _, err = proc.communicate()
    stop.set()
    th.join()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[:3]} failed: {err.decode(errors='replace')[-2000:]}")
    return {"wall_s": round(wall, 2), "peak_anon_mb": round(peak / 1e6)}


def checkpoint(workdir: Path, qwen_gguf: Path) -> Path:
    from tests.checkpoints import QWEN3_1_7B, write_qwen3

    src = workdir / "Qwen3-1.7B-shaped"
    if not (src / "config.json").exists():
        print("writing the Qwen3-1.7B-shaped checkpoint (once)", file=sys.stderr)
        template = (ROOT / "tests" / "data" / "qwen3_template.jinja").read_text()
        write_qwen3(src, qwen_gguf, template, QWEN3_1_7B, seed=0, shards=2)
    return src


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=CACHE / "convert")
    ap.add_argument("--upstream-python", help="a Python with torch + transformers")
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    args = ap.parse_args()
    from tests.conftest import fetch

    args.workdir.mkdir(parents=True, exist_ok=True)
    src = checkpoint(args.workdir, fetch("qwen2.5-coder-0.5b"))
    out = args.workdir / "out"
    out.mkdir(exist_ok=True)
    rows: dict[str, dict[str, Any]] = {}
    for quants in ("bf16", "q4_k_m", "f16,q8_0,q4_k_m"):
        cmd = [
            sys.executable,
            "-m",
            "ggrun",
            "convert",
            str(src),
            "--quant",
            quants,
            "-o",
            str(out),
            "--force",
        ]
        rows[f"ggrun convert --quant {quants}"] = measure(cmd)
        print(f"ggrun {quants}: {rows[f'ggrun convert --quant {quants}']}", file=sys.stderr)
    if args.upstream_python:
        script = sorted(CACHE.glob("llama_cpp_python-*/vendor/llama.cpp/convert_hf_to_gguf.py"))[-1]
        up = out / "upstream-BF16.gguf"
        rows["convert_hf_to_gguf.py --outtype bf16"] = measure(
            [args.upstream_python, str(script), str(src), "--outtype", "bf16", "--outfile", str(up)]
        )
        rows["llama-quantize Q4_K_M (from that BF16)"] = measure(
            [str(tool("llama-quantize")), str(up), str(out / "upstream-Q4_K_M.gguf"), "Q4_K_M"]
        )
        up_total = sum(rows[k]["wall_s"] for k in list(rows)[-2:])
        rows["upstream BF16 + Q4_K_M, together"] = {
            "wall_s": round(up_total, 2),
            "peak_anon_mb": max(rows[k]["peak_anon_mb"] for k in list(rows)[-2:]),
        }
    print(f"{'step':<45}{'wall s':>9}{'peak anon MB':>14}")
    for k, v in rows.items():
        print(f"{k:<45}{v['wall_s']:>9.1f}{v['peak_anon_mb']:>14}")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
