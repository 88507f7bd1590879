"""Parsers for what operating systems say about their hardware.

Each parser takes the text a real machine prints and returns plain values, so it is
tested against recorded samples (``tests/data/hardware/``) without that machine:

- ``/proc/cpuinfo`` (Linux, x86 and ARM): CPU model, features, Raspberry Pi revision;
- ``/proc/device-tree/model`` (ARM boards): e.g. ``Raspberry Pi 5 Model B Rev 1.0``;
- ``nvidia-smi --query-gpu=name,memory.total,memory.free --format=csv,noheader,nounits``;
- ``sysctl`` output on macOS (``hw.memsize``, ``hw.perflevel0.physicalcpu``, ...).
"""

from __future__ import annotations

from dataclasses import dataclass

MIB = 1 << 20


@dataclass(frozen=True)
class CpuInfo:
    model: str = ""
    flags: frozenset[str] = frozenset()
    processors: int = 0
    board: str = ""  # the "Model" line ARM kernels add, e.g. a Raspberry Pi's name


def parse_cpuinfo(text: str) -> CpuInfo:
    """``/proc/cpuinfo``: x86 has ``model name`` and ``flags``; ARM ``Features``, ``Model``."""
    model = board = ""
    flags: set[str] = set()
    processors = 0
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key, value = key.strip().lower(), value.strip()
        if key == "processor":
            processors += 1
        elif key in ("model name", "cpu model") and not model:
            model = value
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
        elif key == "model" and not value.isdigit():
            board = value
        elif key == "hardware" and not model:
            model = value
    return CpuInfo(model, frozenset(flags), processors, board)


def parse_device_tree_model(raw: bytes | str) -> str:
    """``/proc/device-tree/model`` is a NUL-terminated string."""
    if isinstance(raw, bytes):
        raw = raw.decode(errors="replace")
    return raw.split("\0", 1)[0].strip()


def raspberry_pi(model: str) -> str | None:
    """``Raspberry Pi 5 Model B Rev 1.0`` -> ``Raspberry Pi 5 Model B``; else None."""
    if not model.startswith("Raspberry Pi"):
        return None
    return model.split(" Rev ", 1)[0].strip()


@dataclass(frozen=True)
class SmiGpu:
    name: str
    total_bytes: int
    free_bytes: int


def parse_nvidia_smi(text: str) -> list[SmiGpu]:
    """CSV lines ``name, total MiB, free MiB`` (``--format=csv,noheader,nounits``)."""
    gpus = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 3:
            continue
        try:
            total, free = int(float(parts[-2])), int(float(parts[-1]))
        except ValueError:
            continue  # "[N/A]" or a header
        gpus.append(SmiGpu(",".join(parts[:-2]), total * MIB, free * MIB))
    return gpus


def parse_sysctl(text: str) -> dict[str, str]:
    """``key: value`` lines (``sysctl -a`` or ``sysctl hw.memsize ...``)."""
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() and " " not in key.strip():
            out[key.strip()] = value.strip()
    return out


def sysctl_int(values: dict[str, str], key: str) -> int | None:
    try:
        return int(values[key])
    except (KeyError, ValueError):
        return None
