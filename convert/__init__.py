"""Hugging Face safetensors checkpoints -> GGUF at F32, F16, BF16, Q8_0, Q6_K, Q5_K_M,
Q4_K_M and Q4_0.

    import ggrun
    ggrun.convert("./Qwen3-1.7B", quant="q8_0,q4_k_m")   # -> [Path("Qwen3-1.7B-Q8_0.gguf"), ...]

This folder is loaded as ``ggrun._convert`` (see :mod:`ggrun.converter`), never under the
bare name ``convert``, so its modules import each other relatively.

Float outputs are written by ggrun (:mod:`.writer`), in one pass over the source however
many are asked for. Quantized outputs come from llama.cpp's quantizer (:mod:`.quantize`),
fed from a lossless intermediate: BF16 when the source is BF16, as Qwen3's is (going
through F16 would lose precision). Every output is written as ``NAME.tmp`` and renamed
into place only when complete; an interruption leaves nothing under a final name, and
temporary files are removed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ggrun.errors import ConversionError

FLOATS = ("f32", "f16", "bf16")
QUANTS = ("q8_0", "q6_k", "q5_k_m", "q4_k_m", "q4_0")
ALL = FLOATS + QUANTS

# label, bytes done, bytes total
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class Output:
    quant: str
    path: Path
    est_bytes: int


@dataclass
class Plan:
    """What a conversion will do; ``--dry-run`` prints it and writes nothing."""

    src: Path
    hf_arch: str
    gguf_arch: str
    source_dtype: str
    source_bytes: int
    n_tensors: int
    intermediate: str | None  # the float type quantized outputs are made from
    outputs: list[Output] = field(default_factory=list)
    types: dict[str, int] = field(default_factory=dict)  # tensor type -> count (float out)


def parse_quants(quant: str | list[str] | tuple[str, ...]) -> list[str]:
    items = quant.split(",") if isinstance(quant, str) else list(quant)
    out: list[str] = []
    for q in (i.strip().lower() for i in items):
        if q not in ALL:
            raise ConversionError(f"unknown quant {q!r} (choose from {', '.join(ALL)})")
        if q not in out:
            out.append(q)
    if not out:
        raise ConversionError("no quant given")
    return out


def _outputs_for(
    name: str, quants: list[str], out: str | Path | None, sizes: dict[str, int]
) -> list[Output]:
    target = Path(out).expanduser() if out is not None else Path.cwd()
    if out is not None and str(out).endswith(".gguf") and not target.is_dir():
        if len(quants) > 1:
            raise ConversionError(
                "-o names one file, but several quants were asked for; give a folder instead"
            )
        return [Output(quants[0], target, sizes[quants[0]])]
    return [Output(q, target / f"{name}-{q.upper()}.gguf", sizes[q]) for q in quants]


def plan(src: str | Path, quant: str | list[str] = "q4_k_m", out: str | Path | None = None) -> Plan:
    """Inspect a checkpoint and plan the outputs; reads headers only."""
    from . import archs, vocab, writer
    from .checkpoint import Checkpoint
    from .quantize import BITS_PER_WEIGHT

    quants = parse_quants(quant)
    with Checkpoint.open(src) as ckpt:
        arch = archs.for_config(ckpt.config, ckpt.architecture)
        tensors = writer.plan(ckpt, arch)
        vocab.load_tokenizer(ckpt.path)
        n_params = sum(int(_prod(t.shape)) for t in tensors)
        sizes = {f: sum(t.out_bytes(f) for t in tensors) for f in FLOATS}
        sizes.update({q: int(n_params * BITS_PER_WEIGHT[q] / 8) for q in QUANTS})
        name = ckpt.path.name if Path(src).expanduser().exists() else str(src).split("/")[-1]
        types: dict[str, int] = {}
        first_float = next((q for q in quants if q in FLOATS), None)
        for t in tensors:
            key = t.out_type(first_float or "bf16").name
            types[key] = types.get(key, 0) + 1
        src_dtype = ckpt.source_dtype
        inter = None
        if any(q in QUANTS for q in quants):
            inter = {"BF16": "bf16", "F16": "f16"}.get(src_dtype, "f32")
        return Plan(
            ckpt.path,
            ckpt.architecture,
            arch.arch_name,
            src_dtype,
            ckpt.nbytes,
            len(tensors),
            inter,
            _outputs_for(name, quants, out, sizes),
            types,
        )


def _prod(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


WORKDIR_PREFIX = ".ggrun-convert-"


def _clean_stale(folder: Path) -> None:
    """Remove work folders left by conversions that were killed (their pid is gone)."""
    for d in folder.glob(WORKDIR_PREFIX + "*"):
        pid = d.name[len(WORKDIR_PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(d, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _release_memory() -> None:
    """Return freed heap memory (the tokenizer tables, the writers) to the OS."""
    import ctypes
    import gc

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # glibc only; elsewhere a no-op


def _tmp(path: Path) -> Path:
    return path.with_name(path.name + ".tmp")


def convert(
    src: str | Path,
    quant: str | list[str] = "q4_k_m",
    out: str | Path | None = None,
    *,
    force: bool = False,
    keep_intermediate: bool = False,
    progress: Progress | None = None,
    threads: int | None = None,
) -> list[Path]:
    """Convert a Hugging Face checkpoint (folder or hub repo id) to GGUF file(s)."""
    from . import archs, writer
    from .checkpoint import Checkpoint
    from .quantize import quantize

    p = plan(src, quant, out)
    for o in p.outputs:
        try:
            o.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConversionError(f"cannot create {o.path.parent}: {e.strerror}") from None
        if not os.access(o.path.parent, os.W_OK):
            raise ConversionError(f"output folder {o.path.parent} is not writable")
        if o.path.exists() and not force:
            raise ConversionError(f"{o.path} exists; use --force to overwrite it")
    floats = {o.quant: o for o in p.outputs if o.quant in FLOATS}
    quants = [o for o in p.outputs if o.quant in QUANTS]
    created: list[Path] = [_tmp(o.path) for o in p.outputs]  # also stale ones of a killed run
    workdir: Path | None = None
    _clean_stale(p.outputs[0].path.parent)
    try:
        write: dict[str, Path] = {q: _tmp(o.path) for q, o in floats.items()}
        inter_path: Path | None = None
        if quants:
            assert p.intermediate is not None
            if p.intermediate in floats:
                inter_path = floats[p.intermediate].path
            else:
                workdir = Path(
                    tempfile.mkdtemp(
                        prefix=f"{WORKDIR_PREFIX}{os.getpid()}-", dir=quants[0].path.parent
                    )
                )
                inter_path = workdir / f"{p.src.name}-{p.intermediate.upper()}.gguf"
                write[p.intermediate] = inter_path
        created += list(write.values())
        with Checkpoint.open(p.src) as ckpt:
            arch = archs.for_config(ckpt.config, ckpt.architecture)
            tensors = writer.plan(ckpt, arch)
            total = ckpt.nbytes
            done = 0

            def on_bytes(n: int) -> None:
                nonlocal done
                done += n
                if progress:
                    progress("+".join(q.upper() for q in write), done, total)

            name = p.outputs[0].path.name.rsplit("-", 1)[0]
            writer.write_float(ckpt, arch, tensors, write, name, on_bytes)
        for o in floats.values():
            os.replace(_tmp(o.path), o.path)
        if quants:
            _release_memory()  # the quantizer needs ~1.5 GB of its own; give back ours
        for o in quants:
            tmp = _tmp(o.path)
            assert inter_path is not None

            def on_poll(size: int, o: Output = o) -> None:
                if progress:
                    progress(o.quant.upper(), min(size, o.est_bytes), o.est_bytes)

            quantize(inter_path, tmp, o.quant, threads=threads, on_poll=on_poll)
            os.replace(tmp, o.path)
            if progress:
                progress(o.quant.upper(), o.est_bytes, o.est_bytes)
        if keep_intermediate and workdir is not None and inter_path is not None:
            kept = quants[0].path.parent / inter_path.name
            if kept.exists() and not force:
                raise ConversionError(f"{kept} exists; use --force to overwrite it")
            os.replace(inter_path, kept)
    finally:
        for t in created:
            with contextlib.suppress(OSError):
                t.unlink()
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
    return [o.path for o in p.outputs]
