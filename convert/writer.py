"""Write float GGUF files (F32, F16, BF16) from a checkpoint, streamed, several at once.

Each tensor is read from the memory-mapped shards in slices of rows, widened to float32,
and written to every requested output in its type with gguf-py's own conversions
(``gguf.quants.quantize``: numpy's float16 cast, round-to-nearest-even BF16), so one pass
over the source serves all outputs and peak anonymous memory stays at a few slices.
Types follow llama.cpp's converter: 1-D tensors and ``*_norm.weight`` stay F32.

Files are written to ``NAME.tmp`` and renamed into place by the caller once complete.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from ggrun.errors import ConversionError

from . import vocab
from .archs import FLOAT32_MAX, Arch
from .checkpoint import Checkpoint, read_json
from .safetensors import BF16

logger = logging.getLogger(__name__)

SLICE_BYTES = 32 << 20  # float32 bytes per slice
FLOAT_TYPES = {
    "f32": (gguf.GGMLQuantizationType.F32, gguf.LlamaFileType.ALL_F32),
    "f16": (gguf.GGMLQuantizationType.F16, gguf.LlamaFileType.MOSTLY_F16),
    "bf16": (gguf.GGMLQuantizationType.BF16, gguf.LlamaFileType.MOSTLY_BF16),
}
# generation_config.json key -> gguf-py writer method (general.sampling.*), value type
SAMPLING_KEYS: dict[str, tuple[str, type]] = {
    "top_k": ("add_sampling_top_k", int),
    "top_p": ("add_sampling_top_p", float),
    "min_p": ("add_sampling_min_p", float),
    "temperature": ("add_sampling_temp", float),
    "repetition_penalty": ("add_sampling_penalty_repeat", float),
}

Progress = Callable[[int], None]  # bytes of source processed since the last call


@dataclass(frozen=True)
class TensorPlan:
    hf_name: str
    name: str
    shape: tuple[int, ...]  # numpy order
    src_dtype: str
    keep_f32: bool  # 1-D and norm tensors stay F32
    perm: np.ndarray | None = None

    def out_type(self, ftype: str) -> gguf.GGMLQuantizationType:
        return gguf.GGMLQuantizationType.F32 if self.keep_f32 else FLOAT_TYPES[ftype][0]

    def out_bytes(self, ftype: str) -> int:
        block, size = gguf.GGML_QUANT_SIZES[self.out_type(ftype)]
        return int(np.prod(self.shape)) // block * size


def plan(ckpt: Checkpoint, arch: Arch) -> list[TensorPlan]:
    """Map, type and shape-check every tensor, before any output is opened."""
    out = []
    for hf_name, (_shard, entry) in ckpt.index.items():
        name = arch.gguf_name(hf_name)
        if name is None:
            continue
        if entry.dtype not in ("F32", "F16", BF16):
            raise ConversionError(
                f"tensor {hf_name!r} is {entry.dtype}; only BF16, F16 and "
                "F32 weights can be converted"
            )
        expected = arch.expected_shape(name)
        if expected is not None and tuple(entry.shape) != expected:
            raise ConversionError(
                f"tensor {hf_name!r} has shape {list(entry.shape)} but "
                f"config.json implies {list(expected)}"
            )
        keep = (
            len(entry.shape) <= 1 or name.endswith("_norm.weight") or not name.endswith(".weight")
        )
        out.append(
            TensorPlan(
                hf_name, name, tuple(entry.shape), entry.dtype, keep, arch.row_permutation(hf_name)
            )
        )
    if not out:
        raise ConversionError(f"{ckpt.path}: no tensors to convert")
    names = [t.name for t in out]
    if len(set(names)) != len(names):
        raise ConversionError("two checkpoint tensors map to the same GGUF name")
    return out


def _to_f32(raw: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == BF16:
        return (raw.astype(np.uint32) << 16).view(np.float32)
    return raw.astype(np.float32, copy=False)


def _has_nan_bf16(bits: np.ndarray) -> bool:
    """gguf-py canonicalises NaN payloads; only then is the slow path needed."""
    return bool(((bits & 0x7FFF) > 0x7F80).any())


def _add_metadata(
    w: gguf.GGUFWriter, ckpt: Checkpoint, arch: Arch, name: str, file_type: int
) -> None:
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name(name)
    arch.set_parameters(w)
    w.add_file_type(file_type)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    vocab.add_vocab(w, ckpt.path, arch.vocab_size, arch.pre_tokenizer)
    gen = ckpt.path / "generation_config.json"
    if gen.exists():  # optional: what cannot be used is left out
        try:
            cfg = read_json(gen, "the generation config")
        except ConversionError as e:
            logger.warning("%s; no sampling defaults written", e)
            cfg = {}
        for key, (method, kind) in SAMPLING_KEYS.items():
            v = cfg.get(key) if isinstance(cfg, dict) else None
            if _fits(v, kind):
                getattr(w, method)(v)
            elif v is not None:
                logger.warning("generation_config.json: %s = %.40r left out", key, v)


def _fits(v: object, kind: type) -> bool:
    """An int32 for int fields, a finite float32 for float fields."""
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return False
    if kind is int:
        return isinstance(v, int) and -(2**31) <= v < 2**31
    return abs(v) <= FLOAT32_MAX


def write_float(
    ckpt: Checkpoint,
    arch: Arch,
    tensors: list[TensorPlan],
    outputs: dict[str, Path],
    name: str,
    progress: Progress | None = None,
) -> None:
    """Write one GGUF per ``{ftype: path}`` (f32/f16/bf16) in one pass over the source."""
    writers: dict[str, gguf.GGUFWriter] = {}
    try:
        for ftype, path in outputs.items():
            w = gguf.GGUFWriter(path=None, arch=arch.arch_name)
            _add_metadata(w, ckpt, arch, name, int(FLOAT_TYPES[ftype][1]))
            for t in tensors:
                w.add_tensor_info(
                    t.name,
                    t.shape,
                    np.dtype(np.float32),
                    t.out_bytes(ftype),
                    raw_dtype=t.out_type(ftype),
                )
            w.write_header_to_file(path)
            w.write_kv_data_to_file()
            w.write_ti_data_to_file()
            writers[ftype] = w
        for w in writers.values():
            fout = w.fout[0]  # type: ignore[index]
            w.write_padding(fout, fout.tell())
        for t in tensors:
            _stream_tensor(ckpt, t, writers, progress)
        for w in writers.values():
            fout = w.fout[0]  # type: ignore[index]
            fout.flush()
            os.fsync(fout.fileno())
    finally:
        for w in writers.values():
            w.close()


def _stream_tensor(
    ckpt: Checkpoint, t: TensorPlan, writers: dict[str, gguf.GGUFWriter], progress: Progress | None
) -> None:
    raw = ckpt.array(t.hf_name)
    rows = raw.shape[0] if raw.ndim > 1 else 1
    row_elems = int(np.prod(raw.shape[1:])) if raw.ndim > 1 else raw.size
    step = max(1, SLICE_BYTES // max(1, row_elems * 4))
    src_row_bytes = row_elems * raw.itemsize
    for a in range(0, rows, step):
        b = min(rows, a + step)
        if raw.ndim <= 1:
            part = raw
        elif t.perm is not None:
            part = raw[t.perm[a:b]]
        else:
            part = raw[a:b]
        part = np.asarray(part)
        x: np.ndarray | None = None
        for ftype, w in writers.items():
            qtype = t.out_type(ftype)
            if (
                qtype == gguf.GGMLQuantizationType.BF16
                and t.src_dtype == BF16
                and not _has_nan_bf16(part)
            ):
                part.tofile(w.fout[0])  # type: ignore[index]  # BF16 -> BF16 is exact
                continue
            if x is None:
                x = _to_f32(part, t.src_dtype)
            gguf.quants.quantize(x, qtype).tofile(w.fout[0])  # type: ignore[index]
        if progress:
            progress((b - a) * src_row_bytes)
    for ftype, w in writers.items():
        w.write_padding(w.fout[0], t.out_bytes(ftype))  # type: ignore[index]
