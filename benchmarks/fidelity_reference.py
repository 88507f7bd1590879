"""Produce the converter's stored expectations with llama.cpp's own tools.

Runs the ``convert_hf_to_gguf.py`` vendored in llama-cpp-python's sdist (it needs torch
and transformers, which ggrun does not: run this in a separate environment) on the tiny
synthetic Qwen3 checkpoint of the tests, at F16 and BF16, then ``llama-quantize`` on the
BF16 file at Q8_0 and Q4_K_M, and writes the digests (tensor hashes, types, shapes,
tokenizer arrays, chat template) to ``tests/data/tiny_qwen3_reference.json``. It does
the same at BF16 for the real-weights round trip (Qwen2.5-Coder-0.5B dequantized back to
a BF16 folder): ``tests/data/qwen25_roundtrip_reference.json``.
``tests/test_convert.py`` compares ggrun's outputs with them.

    python -m venv /tmp/ref && /tmp/ref/bin/pip install torch==2.13.0 transformers==4.57.6 \
        sentencepiece protobuf numpy gguf pyyaml
    /tmp/ref/bin/python benchmarks/fidelity_reference.py --qwen-gguf PATH
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.llama_tools import CACHE, tool  # noqa: E402
from tests.checkpoints import dequantize_to_hf, digest, write_qwen3  # noqa: E402

OUT = ROOT / "tests" / "data" / "tiny_qwen3_reference.json"
OUT_ROUNDTRIP = ROOT / "tests" / "data" / "qwen25_roundtrip_reference.json"


def upstream_converter() -> Path:
    tool("llama-quantize")  # makes sure the sdist is unpacked and the tools are built
    found = sorted(CACHE.glob("llama_cpp_python-*/vendor/llama.cpp/convert_hf_to_gguf.py"))
    if not found:
        raise SystemExit("convert_hf_to_gguf.py not found; run benchmarks/llama_tools.py")
    return found[-1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--qwen-gguf",
        type=Path,
        required=True,
        help="the Qwen2.5-Coder-0.5B GGUF (its tokenizer is reused)",
    )
    args = ap.parse_args()
    template = (ROOT / "tests" / "data" / "qwen3_template.jinja").read_text()
    script = upstream_converter()
    result: dict[str, object] = {"converter": str(script.relative_to(CACHE))}
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        src = write_qwen3(t / "Tiny-Qwen3", args.qwen_gguf, template)
        for outtype in ("f16", "bf16"):
            dst = t / f"up-{outtype}.gguf"
            subprocess.run(
                [
                    sys.executable,
                    str(script),
                    str(src),
                    "--outtype",
                    outtype,
                    "--outfile",
                    str(dst),
                ],
                check=True,
            )
            result[outtype] = digest(dst)
        for quant in ("q8_0", "q4_k_m"):
            dst = t / f"up-{quant}.gguf"
            subprocess.run(
                [str(tool("llama-quantize")), str(t / "up-bf16.gguf"), str(dst), quant.upper()],
                check=True,
                capture_output=True,
            )
            result[quant] = digest(dst)
        # the real-weights round trip: Qwen2.5-Coder-0.5B back to a BF16 folder
        folder = dequantize_to_hf(args.qwen_gguf, t / "Qwen2.5-Coder-0.5B-Instruct")
        dst = t / "up-roundtrip-bf16.gguf"
        subprocess.run(
            [sys.executable, str(script), str(folder), "--outtype", "bf16", "--outfile", str(dst)],
            check=True,
        )
        roundtrip = {"converter": result["converter"], "bf16": digest(dst)}
    OUT.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    OUT_ROUNDTRIP.write_text(json.dumps(roundtrip, indent=1, sort_keys=True) + "\n")
    print(OUT, OUT_ROUNDTRIP)


if __name__ == "__main__":
    main()
