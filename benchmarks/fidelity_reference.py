"""Produce the converter's stored expectations with llama.cpp's own tools.

Runs the ``convert_hf_to_gguf.py`` vendored in llama-cpp-python's sdist (it needs torch
and transformers, which ggrun does not: run this in a separate environment) on the tiny
synthetic Qwen3 checkpoint of the tests, at F16 and BF16, then ``llama-quantize`` on the
BF16 file at each of the converter's quants (Q8_0, Q6_K, Q5_K_M, Q4_K_M, Q4_0), and writes
the digests (tensor hashes, types, shapes,
tokenizer arrays, chat template) to ``tests/data/tiny_qwen3_reference.json``. It does
the same at BF16 for the real-weights round trip (Qwen2.5-Coder-0.5B dequantized back to
a BF16 folder): ``tests/data/qwen25_roundtrip_reference.json``.
``tests/test_convert.py`` compares ggrun's outputs with them.

    python -m venv /tmp/ref && /tmp/ref/bin/pip install torch==2.13.0 transformers==4.57.6 \
        sentencepiece protobuf numpy gguf pyyaml
    /tmp/ref/bin/python benchmarks/fidelity_reference.py --qwen-gguf PATH

``--quants-only`` needs neither torch nor transformers: it refreshes only the quant
entries, running ``llama-quantize`` on ggrun's own BF16 conversion after checking that it
is byte for byte the stored upstream BF16 (so the input is the same file upstream's
would be). ``--llama-quantize PATH`` names an already built binary.
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
    ap.add_argument("--quants-only", action="store_true", help="refresh the quants only")
    ap.add_argument("--llama-quantize", type=Path, help="a built llama-quantize")
    args = ap.parse_args()
    quantizer = args.llama_quantize or tool("llama-quantize")
    if args.quants_only:
        quants_only(args.qwen_gguf, quantizer)
        return
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
        result.update(quantize_all(quantizer, t / "up-bf16.gguf", t))
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


def quantize_all(quantizer: Path, bf16: Path, tmp: Path) -> dict[str, object]:
    from ggrun.converter import load

    out: dict[str, object] = {}
    for quant in load().QUANTS:
        dst = tmp / f"up-{quant}.gguf"
        subprocess.run(
            [str(quantizer), str(bf16), str(dst), quant.upper()], check=True, capture_output=True
        )
        out[quant] = digest(dst)
    return out


def quants_only(qwen_gguf: Path, quantizer: Path) -> None:
    from ggrun.converter import load

    result = json.loads(OUT.read_text())
    template = (ROOT / "tests" / "data" / "qwen3_template.jinja").read_text()
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        src = write_qwen3(t / "Tiny-Qwen3", qwen_gguf, template)
        (bf16,) = load().convert(src, "bf16", t)
        if digest(bf16) != result["bf16"]:
            raise SystemExit("ggrun's BF16 differs from upstream's: run without --quants-only")
        result.update(quantize_all(quantizer, bf16, t))
    OUT.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    print(OUT)


if __name__ == "__main__":
    main()
