"""A validating, memory-mapped safetensors reader (numpy only, no torch).

Format: u64 little-endian header length N, N bytes of JSON (``{name: {dtype, shape,
data_offsets: [begin, end]}, "__metadata__": {...}}``), then the data. Every header is
checked before use: its size against the file, known dtypes, shapes that match the byte
counts, offsets inside the file, no overlapping tensors and no duplicate names. A bad
file raises :class:`~ggrun.errors.ConversionError` naming the file and the tensor.

Tensors are views over an ``mmap`` of the file: nothing is read until it is used, and
pages can be reclaimed, so peak anonymous memory stays small. BF16 has no numpy dtype;
it is returned as ``uint16`` bit patterns (see :data:`BF16`).
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ggrun.errors import ConversionError

MAX_HEADER = 100 << 20  # the reference implementation's limit
BF16 = "BF16"
DTYPES: dict[str, tuple[Any, int]] = {  # name -> (numpy dtype for the raw bits, item size)
    "F32": (np.float32, 4),
    "F16": (np.float16, 2),
    BF16: (np.uint16, 2),
    "F64": (np.float64, 8),
    "I64": (np.int64, 8),
    "I32": (np.int32, 4),
    "I16": (np.int16, 2),
    "I8": (np.int8, 1),
    "U8": (np.uint8, 1),
    "BOOL": (np.bool_, 1),
}


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int  # absolute offsets in the file
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ConversionError(f"duplicate tensor name {k!r}")
        out[k] = v
    return out


class SafetensorsFile:
    """One validated ``.safetensors`` file; use as a context manager."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            self._f = open(self.path, "rb")  # noqa: SIM115 - closed in close()
        except FileNotFoundError:
            raise ConversionError(f"{self.path}: no such file") from None
        except OSError as e:
            raise ConversionError(f"{self.path}: cannot read: {e.strerror}") from None
        try:
            self.size = os.fstat(self._f.fileno()).st_size
            self.metadata, self.tensors = self._parse()
            self._mm = (
                mmap.mmap(self._f.fileno(), 0, access=mmap.ACCESS_READ) if self.size else None
            )
        except BaseException:
            self._f.close()
            raise

    def fail(self, what: str) -> ConversionError:
        return ConversionError(f"{self.path}: invalid safetensors file: {what}")

    def _parse(self) -> tuple[dict[str, str], dict[str, TensorEntry]]:
        head = self._f.read(8)
        if len(head) < 8:
            raise self.fail(f"{self.size} bytes is too short for a header")
        n = int.from_bytes(head, "little")
        if n > MAX_HEADER or 8 + n > self.size:
            raise self.fail(
                f"header length {n} is impossible for a {self.size}-byte file "
                "(truncated or not safetensors)"
            )
        raw = self._f.read(n)
        try:
            header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
        except ConversionError as e:
            raise self.fail(str(e)) from None
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
            raise self.fail(f"the header is not JSON: {e}") from None
        if not isinstance(header, dict):
            raise self.fail("the header is not a JSON object")
        meta = header.pop("__metadata__", {}) or {}
        if not isinstance(meta, dict):
            raise self.fail("__metadata__ is not an object")
        base = 8 + n
        tensors: dict[str, TensorEntry] = {}
        for name, info in header.items():
            tensors[name] = self._entry(name, info, base)
        spans = sorted((t.begin, t.end, t.name) for t in tensors.values())
        for (_b0, e0, n0), (b1, _e1, n1) in zip(spans, spans[1:], strict=False):
            if b1 < e0:
                raise self.fail(f"tensors {n0!r} and {n1!r} overlap")
        return {str(k): str(v) for k, v in meta.items()}, tensors

    def _entry(self, name: str, info: Any, base: int) -> TensorEntry:
        if not isinstance(info, dict):
            raise self.fail(f"entry {name!r} is not an object")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if dtype not in DTYPES:
            raise self.fail(f"tensor {name!r} has unknown dtype {dtype!r}")
        if (
            not isinstance(shape, list)
            or len(shape) > 8
            or not all(
                isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**40 for d in shape
            )
        ):
            raise self.fail(f"tensor {name!r} has an invalid shape {shape!r}")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1]
        ):
            raise self.fail(f"tensor {name!r} has invalid data_offsets {offsets!r}")
        count = 1
        for d in shape:
            count *= d
        expected = count * DTYPES[dtype][1]
        if offsets[1] - offsets[0] != expected:
            raise self.fail(
                f"tensor {name!r}: shape {shape} of {dtype} needs {expected} "
                f"bytes but data_offsets span {offsets[1] - offsets[0]}"
            )
        begin, end = base + offsets[0], base + offsets[1]
        if end > self.size:
            raise self.fail(
                f"tensor {name!r} ends at byte {end}, past the end of the "
                f"{self.size}-byte file (truncated?)"
            )
        return TensorEntry(name, dtype, tuple(shape), begin, end)

    def array(self, name: str) -> np.ndarray:
        """The raw tensor as a read-only numpy view over the mapped file."""
        t = self.tensors[name]
        if self._mm is None or t.nbytes == 0:
            return np.zeros(t.shape, dtype=DTYPES[t.dtype][0])
        return np.frombuffer(
            self._mm, dtype=DTYPES[t.dtype][0], count=t.nbytes // DTYPES[t.dtype][1], offset=t.begin
        ).reshape(t.shape)

    def close(self) -> None:
        if getattr(self, "_mm", None) is not None:
            with contextlib.suppress(BufferError):  # views still alive: the GC closes it
                self._mm.close()  # type: ignore[union-attr]
        self._f.close()

    def __enter__(self) -> SafetensorsFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
