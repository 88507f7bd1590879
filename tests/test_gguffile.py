"""The GGUF validator on real files and on damaged copies of them."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from ggrun.errors import InvalidModelFile, ModelNotFound
from ggrun.gguffile import read_gguf


def test_reads_real_models(smol_path: Path, qwen_path: Path) -> None:
    smol = read_gguf(smol_path)
    assert smol.arch == "llama"
    assert smol.n_vocab == 49152
    assert smol.context_length == 8192
    assert smol.chat_template and "<|im_start|>" in smol.chat_template
    assert len(smol.tensors) == 272
    qwen = read_gguf(qwen_path)
    assert qwen.arch == "qwen2"
    assert qwen.n_vocab == 151936
    assert qwen.get("tokenizer.ggml.eos_token_id") == 151645
    assert qwen.arch_get("block_count") == 24
    assert qwen.file_type == "Q4_K_M" and smol.file_type == "Q4_1"
    # tensors are inside the file and do not overlap
    ends = sorted((t.offset, t.offset + t.nbytes) for t in qwen.tensors)
    assert all(a[1] <= b[0] for a, b in zip(ends, ends[1:], strict=False))
    assert ends[-1][1] <= qwen.file_size


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFound, match="no such file"):
        read_gguf(tmp_path / "nope.gguf")


@pytest.mark.parametrize("content", [b"", b"GG", b"not a gguf file at all", b"\x00" * 64])
def test_not_gguf(tmp_path: Path, content: bytes) -> None:
    p = tmp_path / "x.gguf"
    p.write_bytes(content)
    with pytest.raises(InvalidModelFile, match="not a GGUF file"):
        read_gguf(p)


def _copy_head(src: Path, dst: Path, n: int) -> Path:
    with open(src, "rb") as f:
        dst.write_bytes(f.read(n))
    return dst


@pytest.mark.parametrize("keep", [8, 24, 1000, 100_000, 5_000_000, 98_000_000])
def test_truncated(smol_path: Path, tmp_path: Path, keep: int) -> None:
    p = _copy_head(smol_path, tmp_path / "t.gguf", keep)
    with pytest.raises(InvalidModelFile, match="truncated|past the end"):
        read_gguf(p)


def _patched(src: Path, dst: Path, offset: int, data: bytes) -> Path:
    raw = bytearray(src.read_bytes())
    raw[offset : offset + len(data)] = data
    dst.write_bytes(bytes(raw))
    return dst


@pytest.mark.parametrize(
    ("offset", "data", "message"),
    [
        (4, struct.pack("<I", 99), "unsupported GGUF version"),
        (8, struct.pack("<Q", 2**40), "tensor count"),
        (16, struct.pack("<Q", 2**40), "metadata count"),
        (24, struct.pack("<Q", 2**62), "over the limit"),  # first key length
    ],
)
def test_extreme_header_values(
    smol_path: Path, tmp_path: Path, offset: int, data: bytes, message: str
) -> None:
    p = _patched(smol_path, tmp_path / "m.gguf", offset, data)
    with pytest.raises(InvalidModelFile, match=message) as err:
        read_gguf(p)
    assert "at byte" in str(err.value)
