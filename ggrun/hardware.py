"""What this machine offers: CPU, cores, memory, GPU backends and devices.

:func:`detect_hardware` describes the machine ggrun runs on; :func:`load_profile`
reads the same description from a YAML file (``presets/hardware/*.yaml``) so that
``ggrun fit --hardware pi5-4gb`` plans for another machine. The planner
(:mod:`ggrun.plan`) is pure code over a :class:`Hardware`.

Where each fact comes from:

- GPU backends and devices: llama.cpp's own device registry (``ggml_backend_dev_*`` in
  the libggml that llama-cpp-python ships), with each device's free and total memory.
  For Metal, ggml reports the GPU's ``recommendedMaxWorkingSetSize`` as its total.
  ``nvidia-smi`` is asked too, only to warn when an NVIDIA GPU is present but this
  build cannot use it.
- SIMD features: llama.cpp's ``llama_print_system_info()`` (what the build compiled
  in), plus the CPU's flags from ``/proc/cpuinfo``.
- Cores: physical cores from psutil; performance cores from ``sysctl
  hw.perflevel0.physicalcpu`` on Apple Silicon (efficiency cores slow generation down).
- Raspberry Pi: ``/proc/device-tree/model``.

Threads. Token generation is memory-bound; it runs best with one thread per physical
performance core (hyper-threads and efficiency cores add contention). Prompt
processing is compute-bound and may use every logical CPU. llama-cpp-python's own
default, ``cpu_count() // 2``, gives a 4-core Raspberry Pi only 2 threads.
Sources: llama.cpp ``common/common.cpp`` (``cpu_get_num_math``: physical cores,
minus efficiency cores on hybrid CPUs), ollama ``discover/cpu_linux.go``.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable, Sequence, Set
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from gguf.constants import MODEL_TENSOR, TENSOR_NAMES, GGMLQuantizationType

from ggrun import sysparse
from ggrun.errors import PresetError
from ggrun.presets import build, load_yaml, presets_dir

logger = logging.getLogger(__name__)

GIB = 1 << 30
BACKENDS = ("cuda", "metal", "rocm", "vulkan")  # GPU backends, in order of preference
_REG_NAMES = {"cuda": "cuda", "metal": "metal", "rocm": "rocm", "hip": "rocm", "vulkan": "vulkan"}


@dataclass(frozen=True)
class GPU:
    """One GPU: ``usable`` when this llama.cpp build has its backend."""

    name: str
    backend: str  # cuda, metal, rocm, vulkan
    total_bytes: int
    free_bytes: int
    unified: bool = False  # shares the system RAM (Apple Silicon, integrated GPUs)
    usable: bool = True


@dataclass(frozen=True)
class Hardware:
    """A machine, detected or described by a profile."""

    name: str = "this machine"
    os: str = ""
    machine: str = ""  # x86_64, aarch64, arm64
    cpu: str = ""
    physical_cores: int = 1
    logical_cores: int = 1
    performance_cores: int = 0  # 0: all physical cores are performance cores
    features: tuple[str, ...] = ()  # SIMD features llama.cpp uses (AVX2, NEON, DOTPROD...)
    cpu_flags: tuple[str, ...] = ()  # notable flags of the CPU itself (avx2, asimddp, i8mm)
    ram_total: int = 0
    ram_available: int = 0
    backends: tuple[str, ...] = ()  # GPU backends this llama.cpp build has
    gpus: tuple[GPU, ...] = ()
    raspberry_pi: str | None = None
    description: str = ""

    @property
    def generation_threads(self) -> int:
        """Physical performance cores (all 4 on a Pi; P-cores only on Apple Silicon)."""
        return max(1, self.performance_cores or self.physical_cores)

    @property
    def batch_threads(self) -> int:
        return max(1, self.logical_cores)

    @property
    def usable_gpus(self) -> tuple[GPU, ...]:
        return tuple(g for g in self.gpus if g.usable)

    def has_feature(self, name: str) -> bool:
        return name.upper() in {f.upper() for f in self.features}


# ----------------------------------------------------------------- this machine


def physical_cores() -> int:
    try:
        import psutil

        n = psutil.cpu_count(logical=False)
    except Exception:  # noqa: BLE001 - psutil may not know this platform
        n = None
    return max(1, n or os.cpu_count() or 1)


def logical_cores() -> int:
    return max(1, os.cpu_count() or 1)


def generation_threads() -> int:
    return detect_hardware().generation_threads


def batch_threads() -> int:
    return logical_cores()


@lru_cache(maxsize=1)
def system_info() -> str:
    """llama.cpp's feature string, e.g. ``CPU : AVX2 = 1 | AVX512 = 1 | ...``."""
    import llama_cpp as ll

    return bytes(ll.llama_print_system_info()).decode(errors="replace")


def build_features(info: str) -> tuple[str, ...]:
    """The features llama.cpp reports as on: ``AVX2 = 1 | NEON = 0`` -> ``("AVX2",)``."""
    return tuple(dict.fromkeys(m.group(1) for m in re.finditer(r"(\w+) = 1\b", info)))


@lru_cache(maxsize=1)
def extra_buffers_safe() -> bool:
    """Whether llama.cpp's extra weight buffers (REPACK, AMX) may be used.

    ggml's AMX kernels crash (SIGSEGV in ``ggml_backend_amx_mul_mat``) on some virtual
    machines that advertise AMX, and the AMX buffer type is only reachable through
    the extra buffers. So when this build contains AMX kernels, ggrun turns the extra
    buffers off unless ``GGRUN_AMX=1`` says AMX works here, and names the weights that
    REPACK can hold itself (:func:`repack_plan`). Builds without AMX (the README's
    install) keep llama.cpp's own placement.
    """
    if "AMX_INT8 = 1" not in system_info():
        return True
    if os.environ.get("GGRUN_AMX") == "1":
        return True
    logger.info(
        "this llama.cpp build has AMX kernels; its extra weight buffers are off "
        "(set GGRUN_AMX=1 if AMX works on this machine)"
    )
    return False


def _ggml_lib() -> Any:
    import llama_cpp as ll

    libdir = Path(ll.__file__).parent / "lib"
    for name in ("libggml.so", "libggml.dylib", "ggml.dll"):
        if (libdir / name).exists():
            lib = ctypes.CDLL(str(libdir / name))
            break
    else:
        return None
    ptr, cstr, size = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t
    for fn, args, res in (
        ("ggml_backend_dev_count", [], size),
        ("ggml_backend_dev_get", [size], ptr),
        ("ggml_backend_dev_description", [ptr], cstr),
        ("ggml_backend_dev_type", [ptr], ctypes.c_int),
        ("ggml_backend_dev_backend_reg", [ptr], ptr),
        ("ggml_backend_reg_name", [ptr], cstr),
        ("ggml_backend_dev_memory", [ptr, ctypes.POINTER(size), ctypes.POINTER(size)], None),
        ("ggml_backend_reg_count", [], size),
        ("ggml_backend_reg_get", [size], ptr),
    ):
        f = getattr(lib, fn)
        f.argtypes, f.restype = args, res
    return lib


# ----------------------------------------------------------------- repacking without AMX
#
# Turning the extra buffers off (above) also turns off llama.cpp's CPU REPACK buffer:
# Q4_0/Q4_K weights interleaved 8 rows at a time for its AVX2/AVX-512 kernels, about a
# quarter faster decoding (llama-bench tg 10.9 -> 14.0 tok/s on a Qwen3-1.7B-shaped
# Q4_K_M, 2 threads, here). ggrun puts those weights there itself, by name, through the
# model's ``tensor_buft_overrides``. llama.cpp takes such an override as-is: a tensor
# that ``ggml_repack_get_optimal_repack_type`` (ggml-cpu/repack.cpp) has no layout for is
# dereferenced as NULL while it loads (SIGSEGV), and a tensor that some op other than
# MUL_MAT reads (``token_embd``: GET_ROWS) has no backend to run it (abort). So only the
# tensors below qualify, each named exactly, with that function's x86 branches mirrored.

X86 = ("x86_64", "AMD64", "i386", "i686")

# Weights llama.cpp declares as 2-D MUL_MAT operands (llama-arch.cpp, LLM_TENSOR_INFOS);
# gguf-py's names. Never token_embd: a tied output is token_embd.weight too.
_REPACK_TENSORS = (
    MODEL_TENSOR.ATTN_Q,
    MODEL_TENSOR.ATTN_K,
    MODEL_TENSOR.ATTN_V,
    MODEL_TENSOR.ATTN_QKV,
    MODEL_TENSOR.ATTN_OUT,
    MODEL_TENSOR.FFN_GATE,
    MODEL_TENSOR.FFN_UP,
    MODEL_TENSOR.FFN_DOWN,
    MODEL_TENSOR.OUTPUT,
)
_REPACK_NAMES = tuple(
    (name, re.compile(re.escape(name).replace(r"\{bid\}", r"(\d+)") + r"\.weight"))
    for name in (TENSOR_NAMES[t] for t in _REPACK_TENSORS)
)
# Type -> the CPU feature its x86 layout needs (ggml_repack_get_optimal_repack_type);
# every x86 layout interleaves 8 rows. Q5_K, Q6_K, Q8_0 and Q1_0 have ARM and RISC-V
# layouts only; MXFP4 is left out (only MoE experts use it, and those are 3-D).
_REPACK_X86 = {
    GGMLQuantizationType.Q4_0: "avx2",
    GGMLQuantizationType.Q4_K: "avx2",
    GGMLQuantizationType.IQ4_NL: "avx2",
    GGMLQuantizationType.Q2_K: "avx512",
}
_REPACK_ROWS = 8


def _repack_name(name: str) -> tuple[str, str] | None:
    """``("blk.{bid}.ffn_up", "12")`` for ``blk.12.ffn_up.weight``, ``("output", "")``
    for ``output.weight``; None for any other name."""
    for kind, pattern in _REPACK_NAMES:
        if m := pattern.fullmatch(name):
            return kind, (m.group(1) if pattern.groups else "")
    return None


def repackable(name: str, ggml_type: int, shape: Sequence[int], features: Set[str]) -> bool:
    """Whether llama.cpp's CPU REPACK buffer can hold this tensor on an x86 CPU whose
    build has ``features`` (``{"avx2", "avx512"}``), and only MUL_MAT reads it."""
    dims = list(shape)
    while len(dims) > 1 and dims[-1] == 1:  # ggml_n_dims ignores trailing 1s
        dims.pop()
    try:
        need = _REPACK_X86.get(GGMLQuantizationType(ggml_type))
    except ValueError:
        return False
    return (
        need is not None
        and need in features
        and len(dims) == 2
        and dims[1] % _REPACK_ROWS == 0  # the layout's own condition
        and dims[0] % 8 == 0  # repack()'s: it fails (an abort) otherwise
        and _repack_name(name) is not None
    )


def override_patterns(names: Iterable[str]) -> tuple[str, ...]:
    """Anchored regexes (std::regex, ECMAScript) that match exactly ``names``, one per
    kind of tensor: ``^blk\\.(0|1|7)\\.ffn_up\\.weight$``. llama.cpp compiles every
    pattern for every tensor it loads, so a few patterns beat one per tensor."""
    layers: dict[str, list[str]] = {}
    for name in names:
        found = _repack_name(name)
        if found is None:
            raise ValueError(f"{name!r} is not a tensor ggrun repacks")
        kind, bid = found
        layers.setdefault(kind, []).append(bid)
    out = []
    for kind, bids in layers.items():
        if "{bid}" not in kind:
            out.append("^" + kind.replace(".", r"\.") + r"\.weight$")
            continue
        alt = "|".join(dict.fromkeys(bids))
        out.append("^" + kind.replace(".", r"\.").replace("{bid}", f"({alt})") + r"\.weight$")
    return tuple(out)


@dataclass(frozen=True)
class RepackPlan:
    """Which weights go to llama.cpp's CPU_REPACK buffer type, and how to name them."""

    buffer_type: int  # ggml_backend_buffer_type_t of CPU_REPACK
    patterns: tuple[str, ...]  # for llama_model_tensor_buft_override
    tensors: tuple[str, ...]  # the names the patterns match, and only those


def repack_without_amx() -> bool:
    """Whether ggrun repacks weights itself: an x86 build with AMX kernels whose extra
    buffers :func:`extra_buffers_safe` turns off."""
    return platform.machine() in X86 and not extra_buffers_safe()


@lru_cache(maxsize=1)
def _repack_target() -> tuple[int, frozenset[str]] | None:
    """(CPU_REPACK's buffer type, the CPU features this build's kernels use), found by
    name among the CPU device's extra buffer types; None where there is none."""
    try:
        lib = _ggml_lib()
        if lib is None:
            return None
        ptr, cstr = ctypes.c_void_p, ctypes.c_char_p
        for fn, args, res in (
            ("ggml_backend_dev_by_type", [ctypes.c_int], ptr),
            ("ggml_backend_reg_get_proc_address", [ptr, cstr], ptr),
            ("ggml_backend_buft_name", [ptr], cstr),
            ("ggml_cpu_has_avx2", [], ctypes.c_int),
            ("ggml_cpu_has_avx512", [], ctypes.c_int),
        ):
            f = getattr(lib, fn)
            f.argtypes, f.restype = args, res
        has = {"avx2": lib.ggml_cpu_has_avx2(), "avx512": lib.ggml_cpu_has_avx512()}
        features = frozenset(name for name, on in has.items() if on)
        cpu = lib.ggml_backend_dev_by_type(0)  # GGML_BACKEND_DEVICE_TYPE_CPU
        if not cpu:
            return None
        reg = lib.ggml_backend_dev_backend_reg(cpu)
        addr = lib.ggml_backend_reg_get_proc_address(reg, b"ggml_backend_dev_get_extra_bufts")
        if not addr:
            return None
        get_extra = ctypes.CFUNCTYPE(ctypes.POINTER(ptr), ptr)(addr)
        bufts = get_extra(cpu)
        i = 0
        while bufts and bufts[i]:
            if lib.ggml_backend_buft_name(bufts[i]) == b"CPU_REPACK":
                return int(bufts[i]), features
            i += 1
    except (OSError, AttributeError) as e:
        logger.debug("cannot find llama.cpp's CPU_REPACK buffer type: %s", e)
    return None


def repack_plan(tensors: Iterable[Any]) -> RepackPlan | None:
    """The weights of a model (:class:`ggrun.gguffile.TensorInfo`) that go to CPU_REPACK
    when the extra buffers are off; None where nothing would (not x86, a GPU device in
    the build, no CPU_REPACK, no tensor it can hold)."""
    if platform.machine() not in X86 or ggml_devices()[1]:
        return None  # a GPU build keeps llama.cpp's own placement
    target = _repack_target()
    if target is None:
        return None
    buft, features = target
    names = tuple(t.name for t in tensors if repackable(t.name, t.type, t.shape, features))
    if not names:
        return None
    return RepackPlan(buft, override_patterns(names), names)


def ggml_devices() -> tuple[tuple[str, ...], tuple[GPU, ...]]:
    """(GPU backends compiled in, GPU devices) from llama.cpp's backend registry."""
    import llama_cpp as ll

    ll.llama_backend_init()
    try:
        lib = _ggml_lib()
    except (OSError, AttributeError) as e:
        logger.debug("cannot read ggml's device registry: %s", e)
        lib = None
    if lib is None:
        return (("gpu",) if ll.llama_supports_gpu_offload() else ()), ()
    backends = []
    for i in range(lib.ggml_backend_reg_count()):
        name = (lib.ggml_backend_reg_name(lib.ggml_backend_reg_get(i)) or b"").decode().lower()
        if name in _REG_NAMES:
            backends.append(_REG_NAMES[name])
    gpus = []
    for i in range(lib.ggml_backend_dev_count()):
        dev = lib.ggml_backend_dev_get(i)
        kind = lib.ggml_backend_dev_type(dev)  # 0 CPU, 1 GPU, 2 integrated GPU, 3 accel
        if kind not in (1, 2):
            continue
        reg = (lib.ggml_backend_reg_name(lib.ggml_backend_dev_backend_reg(dev)) or b"").decode()
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        lib.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
        backend = _REG_NAMES.get(reg.lower(), reg.lower())
        desc = (lib.ggml_backend_dev_description(dev) or b"").decode(errors="replace")
        unified = kind == 2 or backend == "metal"
        gpus.append(GPU(desc or reg, backend, total.value, free.value, unified=unified))
    return tuple(dict.fromkeys(backends)), tuple(gpus)


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError:
        return b""


def _run(*cmd: str) -> str:
    if not shutil.which(cmd[0]):
        return ""
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def _nvidia_present() -> list[sysparse.SmiGpu]:
    out = _run(
        "nvidia-smi", "--query-gpu=name,memory.total,memory.free", "--format=csv,noheader,nounits"
    )
    return sysparse.parse_nvidia_smi(out)


@lru_cache(maxsize=1)
def detect_hardware() -> Hardware:
    """Describe this machine (cached for the process)."""
    import psutil

    mem = psutil.virtual_memory()
    cpu, perf, cpu_flags = "", 0, frozenset[str]()
    pi = None
    if sys.platform == "darwin":
        sysctl = sysparse.parse_sysctl(
            _run("sysctl", "machdep.cpu.brand_string", "hw.perflevel0.physicalcpu")
        )
        cpu = sysctl.get("machdep.cpu.brand_string", "")
        perf = sysparse.sysctl_int(sysctl, "hw.perflevel0.physicalcpu") or 0
    elif sys.platform.startswith("linux"):
        info = sysparse.parse_cpuinfo(_read("/proc/cpuinfo").decode(errors="replace"))
        cpu, cpu_flags = info.model, info.flags
        board = sysparse.parse_device_tree_model(_read("/proc/device-tree/model")) or info.board
        pi = sysparse.raspberry_pi(board)
        if not cpu and board:
            cpu = board
    backends, gpus = ggml_devices()
    present = {g.name for g in gpus}
    extra = tuple(
        GPU(g.name, "cuda", g.total_bytes, g.free_bytes, usable=False)
        for g in _nvidia_present()
        if "cuda" not in backends and g.name not in present
    )
    features = build_features(system_info())
    return Hardware(
        name="this machine",
        os=f"{platform.system()} {platform.release()}".strip(),
        machine=platform.machine(),
        cpu=cpu or platform.processor() or platform.machine(),
        physical_cores=physical_cores(),
        logical_cores=logical_cores(),
        performance_cores=perf,
        features=features,
        cpu_flags=tuple(sorted(cpu_flags & _WATCH_FLAGS)),
        ram_total=int(mem.total),
        ram_available=int(mem.available),
        backends=backends,
        gpus=gpus + extra,
        raspberry_pi=pi,
    )


_WATCH_FLAGS = frozenset({"avx2", "avx512f", "amx_int8", "asimddp", "i8mm", "sve"})


# ----------------------------------------------------------------- profiles


def parse_size(value: Any, where: str) -> int:
    """``8 GiB``, ``5.3GB``, ``512 MiB`` or a number of bytes."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    m = re.fullmatch(r"\s*([\d.]+)\s*([KMGT]i?B)?\s*", str(value), re.IGNORECASE)
    if not m:
        raise PresetError(f"{where}: {value!r} is not a size (e.g. '8 GiB')")
    unit = (m.group(2) or "B").upper().replace("I", "")
    scale = {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40}[unit]
    return int(float(m.group(1)) * scale)


def profiles_dir() -> Path:
    return presets_dir() / "hardware"


def profile_names() -> list[str]:
    return sorted(p.stem for p in profiles_dir().glob("*.yaml"))


def load_profile(ref: str) -> Hardware:
    """A hardware profile: a shipped name (``pi5-4gb``) or a path to a YAML file."""
    path = Path(ref)
    if not path.suffix:
        path = profiles_dir() / f"{ref}.yaml"
    if not path.is_file():
        known = ", ".join(profile_names())
        raise PresetError(f"no hardware profile {ref!r} (shipped profiles: {known})")
    data = load_yaml(path)
    where = str(path)
    if not isinstance(data, dict):
        raise PresetError(f"{where}: expected a mapping")
    sizes = ("ram_total", "ram_available")
    hw = build(Hardware, data, where=where, extra=(*sizes, "gpus"))
    gpus = []
    for i, g in enumerate(data.get("gpus") or []):
        gw = f"{where}: gpus[{i}]"
        if not isinstance(g, dict):
            raise PresetError(f"{gw}: expected a mapping")
        mem = {k: parse_size(g[k], gw) for k in ("total_bytes", "free_bytes") if k in g}
        gpus.append(build(GPU, {**g, **mem}, where=gw))
    total = parse_size(data.get("ram_total", 0), where)
    available = parse_size(data.get("ram_available", total), where)
    return replace(
        hw,
        name=str(data.get("name") or path.stem),
        gpus=tuple(gpus),
        ram_total=total,
        ram_available=available,
    )


# ----------------------------------------------------------------- warnings

_REINSTALL = (
    'reinstall with CMAKE_ARGS="-DGGML_{flag}=on" pip install --force-reinstall '
    "--no-cache-dir llama-cpp-python"
)


def _warn_gpu_unusable(hw: Hardware) -> str | None:
    missing = [g for g in hw.gpus if not g.usable]
    if not missing:
        return None
    g = missing[0]
    return (
        f"this llama-cpp-python build has no {g.backend.upper()} support although "
        f"{g.name} is present; " + _REINSTALL.format(flag=g.backend.upper())
    )


def _warn_no_metal(hw: Hardware) -> str | None:
    if hw.os.startswith("Darwin") and hw.machine == "arm64" and "metal" not in hw.backends:
        return "Apple Silicon without Metal in this build; " + _REINSTALL.format(flag="METAL")
    return None


def _warn_arm_dotprod(hw: Hardware) -> str | None:
    if hw.machine not in ("aarch64", "arm64") or hw.has_feature("DOTPROD"):
        return None
    cpu_has = "asimddp" in hw.cpu_flags
    why = "although the CPU has them (asimddp)" if cpu_has else "(the CPU lacks them)"
    return f"no dotprod kernels on this ARM build {why}: quantized models run slower"


def _warn_x86_avx2(hw: Hardware) -> str | None:
    if hw.machine not in ("x86_64", "AMD64") or hw.has_feature("AVX2"):
        return None
    if "avx2" in hw.cpu_flags:
        return "the CPU has AVX2 but this llama.cpp build does not use it; rebuild it here"
    return "no AVX2 on this CPU: generation will be slow"


def _warn_low_ram(hw: Hardware) -> str | None:
    if hw.ram_available and hw.ram_available < 2 * GIB:
        return (
            f"less than 2 GB RAM free ({hw.ram_available / GIB:.1f} GiB): use a small "
            "model and context (e.g. smollm2-135m, --ctx 2048)"
        )
    return None


def _warn_amx(hw: Hardware) -> str | None:
    if not hw.has_feature("AMX_INT8") or os.environ.get("GGRUN_AMX") == "1":
        return None
    return (
        "this build has AMX kernels, which crash on some virtual machines; ggrun keeps "
        "them off and repacks the weights for AVX2/AVX-512 itself (GGRUN_AMX=1 lets "
        "llama.cpp use AMX)"
    )


WARNINGS = (
    _warn_gpu_unusable,
    _warn_no_metal,
    _warn_arm_dotprod,
    _warn_x86_avx2,
    _warn_low_ram,
    _warn_amx,
)


def warnings(hw: Hardware) -> list[str]:
    """What a user should know about this machine and build, most important first."""
    return [w for check in WARNINGS if (w := check(hw))]
