"""ggrun's quants of a real checkpoint against ``llama-quantize``'s, whole files by sha256.

The tests compare digests on the tiny checkpoint, whose 64-wide rows make llama.cpp fall
back from K-quant blocks; this compares whole files on a real one (Qwen2.5-Coder-0.5B
dequantized by ``benchmarks/eval_quants.py``), where Q6_K, Q5_K and Q4_K blocks are used.
``llama-quantize`` gets ggrun's BF16 conversion of the same folder, the input ggrun's
quantizer starts from::

    python benchmarks/quant_identity.py \\
        --folder /tmp/ggrun-eval-quants/Qwen2.5-Coder-0.5B-Instruct \\
        --converted /tmp/ggrun-eval-quants/home/converted --llama-quantize PATH
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ggrun.converter import load  # noqa: E402


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folder", type=Path, required=True)
    ap.add_argument("--converted", type=Path, required=True, help="ggrun's quantized outputs")
    ap.add_argument("--llama-quantize", type=Path, default=None)
    args = ap.parse_args()
    if args.llama_quantize is None:
        from benchmarks.llama_tools import tool

        args.llama_quantize = tool("llama-quantize")
    convert = load()
    same = True
    with tempfile.TemporaryDirectory(dir=args.converted) as tmp:
        (bf16,) = convert.convert(args.folder, "bf16", Path(tmp))
        for quant in convert.QUANTS:
            ours = args.converted / f"{args.folder.name}-{quant.upper()}.gguf"
            theirs = Path(tmp) / f"llama-quantize-{quant.upper()}.gguf"
            subprocess.run(
                [str(args.llama_quantize), str(bf16), str(theirs), quant.upper()],
                check=True,
                capture_output=True,
            )
            a, b = sha256(ours), sha256(theirs)
            same &= a == b
            print(f"{quant.upper():7} {'identical' if a == b else 'DIFFERENT'}  {a[:16]}  {b[:16]}")
    sys.exit(0 if same else 1)


if __name__ == "__main__":
    main()
