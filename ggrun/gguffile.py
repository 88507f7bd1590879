"""Validate a GGUF file in pure Python before llama.cpp sees it, and read its metadata.

llama.cpp's GGUF loader trusts lengths, counts and offsets that come from the file;
crafted files have crashed it (SIGABRT) or worse. :func:`read_gguf` walks the header,
the metadata and the tensor table with explicit bounds, never reads the weights, and
never allocates from a length it has not checked against the bytes that remain in the
file. Every rejection is an :class:`~ggrun.errors.InvalidModelFile` that says what is
wrong and at which byte offset.

The format (https://github.com/ggml-org/ggml/blob/master/docs/gguf.md):
magic ``GGUF``, u32 version, u64 tensor count, u64 metadata count, the metadata
key/value pairs, the tensor infos (name, n_dims, dims, ggml type, offset), padding to
``general.alignment`` (32 by default), then the tensor data.

Names and type tables come from gguf-py (``Keys``, ``GGUFValueType``,
``GGML_QUANT_SIZES``), not from literals here. Beyond the layout, the metadata that
llama.cpp asserts on is refused (:mod:`ggrun.ggufcheck`); a vocabulary that is not
unique as C strings is refused while it is read.
"""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gguf.constants import (
    GGML_QUANT_SIZES,
    GGUF_DEFAULT_ALIGNMENT,
    GGUF_MAGIC,
    GGMLQuantizationType,
    GGUFValueType,
    Keys,
    LlamaFileType,
)

from ggrun import ggufcheck
from ggrun.errors import InvalidModelFile, ModelNotFound
from ggrun.ggufcheck import ArrayValue

MAGIC = GGUF_MAGIC.to_bytes(4, "little")  # b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = GGUF_DEFAULT_ALIGNMENT

# Bounds. Each length is also checked against the bytes left in the file.
MAX_KEY_LEN = 1024
MAX_STRING_LEN = 16 << 20  # a chat template is a few KiB; 16 MiB is generous
MAX_ARRAY_LEN = 1 << 24  # vocabularies are ~10^5 entries
MAX_KV = 1 << 16
MAX_TENSORS = 1 << 20
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_TENSOR_NAME = 63  # GGML_MAX_NAME - 1
MAX_ELEMENTS = 1 << 62
KEEP_ARRAY_VALUES = 64  # string arrays longer than this are validated but not kept
KEEP_NUMBER_VALUES = 512  # numeric arrays up to this long (per-layer values) are kept

_SCALARS: dict[int, struct.Struct] = {
    GGUFValueType.UINT8: struct.Struct("<B"),
    GGUFValueType.INT8: struct.Struct("<b"),
    GGUFValueType.UINT16: struct.Struct("<H"),
    GGUFValueType.INT16: struct.Struct("<h"),
    GGUFValueType.UINT32: struct.Struct("<I"),
    GGUFValueType.INT32: struct.Struct("<i"),
    GGUFValueType.FLOAT32: struct.Struct("<f"),
    GGUFValueType.BOOL: struct.Struct("<?"),
    GGUFValueType.UINT64: struct.Struct("<Q"),
    GGUFValueType.INT64: struct.Struct("<q"),
    GGUFValueType.FLOAT64: struct.Struct("<d"),
}
_U32 = _SCALARS[GGUFValueType.UINT32]
_INT_TYPES = {
    GGUFValueType.UINT8, GGUFValueType.INT8, GGUFValueType.UINT16, GGUFValueType.INT16,
    GGUFValueType.UINT32, GGUFValueType.INT32, GGUFValueType.UINT64, GGUFValueType.INT64,
}  # fmt: skip
_U64 = _SCALARS[GGUFValueType.UINT64]


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # ggml order: ne[0] first
    type: int
    offset: int  # absolute byte offset in the file
    nbytes: int

    @property
    def type_name(self) -> str:
        return GGMLQuantizationType(self.type).name

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass(frozen=True)
class GGUFInfo:
    """What ggrun knows about a validated GGUF file."""

    path: Path
    version: int
    file_size: int
    data_offset: int
    metadata: dict[str, Any] = field(repr=False)
    tensors: tuple[TensorInfo, ...] = field(repr=False)

    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key, default)

    def param(self, key: str, default: Any = None) -> Any:
        """A gguf-py key, ``{arch}`` filled in: ``param(Keys.LLM.BLOCK_COUNT)``."""
        return self.metadata.get(key.format(arch=self.arch), default)

    def arch_get(self, suffix: str, default: Any = None) -> Any:
        """``{arch}.suffix``, e.g. ``arch_get("context_length")``."""
        return self.metadata.get(f"{self.arch}.{suffix}", default)

    @property
    def arch(self) -> str:
        return str(self.metadata.get(Keys.General.ARCHITECTURE, ""))

    @property
    def name(self) -> str:
        return str(self.metadata.get(Keys.General.NAME) or self.path.stem)

    @property
    def chat_template(self) -> str | None:
        t = self.metadata.get(Keys.Tokenizer.CHAT_TEMPLATE)
        return t if isinstance(t, str) and t.strip() else None

    @property
    def context_length(self) -> int | None:
        v = self.param(Keys.LLM.CONTEXT_LENGTH)
        return int(v) if isinstance(v, int) and v > 0 else None

    @property
    def n_vocab(self) -> int:
        tokens = self.metadata.get(Keys.Tokenizer.LIST)
        return tokens.count if isinstance(tokens, ArrayValue) else 0

    @property
    def n_params(self) -> int:
        return sum(t.n_elements for t in self.tensors)

    @property
    def weights_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    @property
    def quant(self) -> str:
        """The dominant weight type, e.g. ``Q4_K`` (what most bytes are stored as)."""
        by_type: dict[str, int] = {}
        for t in self.tensors:
            by_type[t.type_name] = by_type.get(t.type_name, 0) + t.nbytes
        return max(by_type, key=lambda k: by_type[k]) if by_type else "?"

    @property
    def file_type(self) -> str:
        """The quantization named by ``general.file_type`` (e.g. ``Q4_K_M``), else ``quant``."""
        ft = self.metadata.get(Keys.General.FILE_TYPE)
        try:
            name = LlamaFileType(int(ft)).name if isinstance(ft, int) else ""
        except ValueError:
            name = ""
        if not name:
            return self.quant
        return name.removeprefix("MOSTLY_").removeprefix("ALL_")

    @property
    def bits_per_weight(self) -> float:
        n = self.n_params
        return 8.0 * self.weights_bytes / n if n else 0.0


class _Reader:
    """Bounds-checked little-endian reads over a read-only buffer."""

    def __init__(self, buf: Any, size: int, path: Path) -> None:
        self.buf = buf
        self.size = size
        self.pos = 0
        self.path = path

    def fail(self, what: str, pos: int | None = None) -> InvalidModelFile:
        at = self.pos if pos is None else pos
        return InvalidModelFile(f"{self.path}: invalid GGUF: {what} (at byte {at})")

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise self.fail(
                f"{what} runs past the end of the file ({self.size} bytes); "
                "the file is truncated or corrupt"
            )

    def scalar(self, s: struct.Struct, what: str) -> Any:
        self.need(s.size, what)
        (v,) = s.unpack_from(self.buf, self.pos)
        self.pos += s.size
        return v

    def u32(self, what: str) -> int:
        return int(self.scalar(_U32, what))

    def u64(self, what: str) -> int:
        return int(self.scalar(_U64, what))

    def string(self, what: str, limit: int = MAX_STRING_LEN) -> str:
        start = self.pos
        n = self.u64(f"length of {what}")
        if n > limit:
            raise self.fail(f"{what} is {n} bytes long, over the limit of {limit}", start)
        self.need(n, what)
        raw = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        return raw.decode("utf-8", errors="replace")

    def skip_string(self, what: str) -> tuple[int, int]:
        """Step over a string; return its (start, end) in the buffer."""
        start = self.pos
        n = self.u64(f"length of {what}")
        if n > MAX_STRING_LEN:
            raise self.fail(f"{what} is {n} bytes long, over the limit of {MAX_STRING_LEN}", start)
        self.need(n, what)
        self.pos += n
        return self.pos - n, self.pos

    def value(self, vtype: int, what: str, depth: int = 0, unique: bool = False) -> Any:
        if vtype in _SCALARS:
            return self.scalar(_SCALARS[vtype], what)
        if vtype == GGUFValueType.STRING:
            return self.string(what)
        if vtype == GGUFValueType.ARRAY:
            if depth > 0:
                raise self.fail(f"{what} is a nested array, which llama.cpp does not support")
            return self.array(what, unique)
        raise self.fail(f"{what} has unknown value type {vtype}", self.pos - 4)

    def array(self, what: str, unique: bool = False) -> ArrayValue:
        start = self.pos
        etype = self.u32(f"element type of {what}")
        count = self.u64(f"length of {what}")
        if count > MAX_ARRAY_LEN:
            raise self.fail(
                f"{what} has {count} elements, over the limit of {MAX_ARRAY_LEN}", start
            )
        if etype in _SCALARS:
            s = _SCALARS[etype]
            self.need(count * s.size, what)
            start, self.pos = self.pos, self.pos + count * s.size
            if count <= KEEP_NUMBER_VALUES:
                vals = tuple(s.unpack_from(self.buf, start + i * s.size)[0] for i in range(count))
                return ArrayValue(etype, count, vals)
            if etype in _INT_TYPES:  # token types: which kinds occur
                import numpy as np

                found = np.unique(np.frombuffer(self.buf, np.dtype(s.format), count, start))
                return ArrayValue(etype, count, distinct=frozenset(found[:256].tolist()))
            return ArrayValue(etype, count)
        if etype == GGUFValueType.STRING:
            self.need(count * 8, what)  # every string has at least its 8-byte length
            if count <= KEEP_ARRAY_VALUES and not unique:
                return ArrayValue(etype, count, tuple(self.string(what) for _ in range(count)))
            seen: dict[bytes, int] = {}
            byte_tokens: dict[str, set[int]] = {m: set() for m in ggufcheck.BYTE_TOKENS}
            for i in range(count):
                a, b = self.skip_string(f"element of {what}")
                if unique:  # llama.cpp asserts (aborts) on duplicate tokens
                    item = _as_c_string(bytes(self.buf[a:b]), i)
                    if item in seen:
                        raise self.fail(
                            f"{what} holds {item[:40]!r} twice (entries {seen[item]} and {i}; "
                            "llama.cpp reads each up to its first NUL byte)",
                            a,
                        )
                    seen[item] = i
                    if len(item) in ggufcheck.BYTE_TOKEN_LENGTHS:
                        for model, read in ggufcheck.BYTE_TOKENS.items():
                            if (byte := read(item)) is not None:
                                byte_tokens[model].add(byte)
            covered = {m: frozenset(b) for m, b in byte_tokens.items()}
            return ArrayValue(etype, count, byte_tokens=covered if unique else None)
        if etype == GGUFValueType.ARRAY:
            raise self.fail(f"{what} is a nested array, which llama.cpp does not support", start)
        raise self.fail(f"{what} has unknown element type {etype}", start)


def _as_c_string(raw: bytes, index: int) -> bytes:
    """A token as llama.cpp stores it: cut at its first NUL; empty ones become [EMPTY_i]."""
    return raw.split(b"\0", 1)[0] or b"[EMPTY_%d]" % index


@contextmanager
def _open(path: Path) -> Iterator[tuple[Any, int]]:
    """Yield a read-only view of the file and its size (mmap; nothing is read eagerly)."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            yield b"", 0
            return
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            yield mm, size


def read_gguf(path: str | os.PathLike[str]) -> GGUFInfo:
    """Validate ``path`` as a GGUF file and return its metadata and tensor table.

    Raises :class:`ModelNotFound` when the file does not exist and
    :class:`InvalidModelFile` when it is not a well-formed GGUF file.
    """
    p = Path(path)
    if not p.exists():
        raise ModelNotFound(f"{p}: no such file")
    if not p.is_file():
        raise InvalidModelFile(f"{p}: not a regular file")
    try:
        with _open(p) as (buf, size):
            return _parse(_Reader(buf, size, p))
    except OSError as e:
        raise InvalidModelFile(f"{p}: cannot read: {e.strerror or e}") from e


def _parse(r: _Reader) -> GGUFInfo:
    if r.size < 4 or bytes(r.buf[:4]) != MAGIC:
        raise InvalidModelFile(f"{r.path}: not a GGUF file (no GGUF magic at byte 0)")
    r.pos = 4
    version = r.u32("version")
    if version not in SUPPORTED_VERSIONS:
        raise r.fail(f"unsupported GGUF version {version} (supported: 2, 3)", 4)
    n_tensors = r.u64("tensor count")
    n_kv = r.u64("metadata count")
    if n_tensors > MAX_TENSORS or n_tensors * 32 > r.size:
        raise r.fail(f"tensor count {n_tensors} is impossible for a {r.size}-byte file", 8)
    if n_kv > MAX_KV or n_kv * 13 > r.size:
        raise r.fail(f"metadata count {n_kv} is impossible for a {r.size}-byte file", 16)

    metadata: dict[str, Any] = {}
    for i in range(n_kv):
        start = r.pos
        key = r.string(f"metadata key #{i}", MAX_KEY_LEN)
        if not key:
            raise r.fail(f"metadata key #{i} is empty", start)
        if key in metadata:
            raise r.fail(f"duplicate metadata key {key!r}", start)
        vtype = r.u32(f"type of {key!r}")
        metadata[key] = r.value(vtype, repr(key), unique=key == Keys.Tokenizer.LIST)

    alignment = metadata.get(Keys.General.ALIGNMENT, DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise r.fail(f"{Keys.General.ALIGNMENT} {alignment!r} is not a power of two")

    raw_tensors = []
    names: set[str] = set()
    for i in range(n_tensors):
        start = r.pos
        name = r.string(f"name of tensor #{i}", 1 << 16)
        if not name or len(name.encode()) > MAX_TENSOR_NAME:
            raise r.fail(
                f"tensor #{i} has a name of {len(name.encode())} bytes "
                f"(1 to {MAX_TENSOR_NAME} allowed)",
                start,
            )
        if name in names:
            raise r.fail(f"duplicate tensor name {name!r}", start)
        names.add(name)
        n_dims = r.u32(f"dimension count of {name!r}")
        if not 1 <= n_dims <= MAX_DIMS:
            raise r.fail(f"tensor {name!r} has {n_dims} dimensions (1 to {MAX_DIMS} allowed)")
        shape = tuple(r.u64(f"dimension of {name!r}") for _ in range(n_dims))
        n_el = 1
        for d in shape:
            if d >= MAX_ELEMENTS:
                raise r.fail(f"tensor {name!r} has an impossible dimension {d}")
            n_el *= d
        if n_el >= MAX_ELEMENTS:
            raise r.fail(f"tensor {name!r} has {n_el} elements, an impossible size")
        ttype = r.u32(f"type of {name!r}")
        try:
            block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(ttype)]
        except (ValueError, KeyError):
            raise r.fail(f"tensor {name!r} has unknown ggml type {ttype}", r.pos - 4) from None
        if shape[0] % block:
            raise r.fail(
                f"tensor {name!r}: first dimension {shape[0]} is not a multiple of "
                f"the {GGMLQuantizationType(ttype).name} block size {block}"
            )
        offset = r.u64(f"offset of {name!r}")
        if offset % alignment:
            raise r.fail(
                f"tensor {name!r}: offset {offset} is not aligned to {alignment}", r.pos - 8
            )
        raw_tensors.append((name, shape, ttype, offset, n_el // block * type_size))

    data_offset = -(-r.pos // alignment) * alignment
    tensors = tuple(
        TensorInfo(name, shape, ttype, data_offset + off, nbytes)
        for name, shape, ttype, off, nbytes in raw_tensors
    )
    end = data_offset
    for t in sorted(tensors, key=lambda t: t.offset):
        if t.offset < end:
            raise r.fail(f"tensor {t.name!r} overlaps the previous tensor", t.offset)
        end = t.offset + t.nbytes
        if end > r.size:
            raise r.fail(
                f"tensor {t.name!r} ends at byte {end}, past the end of the "
                f"{r.size}-byte file; the file is truncated",
                t.offset,
            )
    try:
        ggufcheck.check(metadata, names)
    except InvalidModelFile as e:
        raise r.fail(str(e), 24) from None
    return GGUFInfo(r.path, version, r.size, data_offset, metadata, tensors)
