"""What this machine offers: cores for generation and for prompt processing.

Generation is memory-bound and runs best on physical cores (hyper-threads add
contention); prompt processing is compute-bound and may use every logical CPU.
llama-cpp-python's own default, ``cpu_count() // 2``, gives a 4-core Raspberry Pi
only 2 threads.
"""

from __future__ import annotations

import logging
import os
from functools import lru_cache

logger = logging.getLogger(__name__)


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
    return physical_cores()


def batch_threads() -> int:
    return logical_cores()


@lru_cache(maxsize=1)
def system_info() -> str:
    """llama.cpp's feature string, e.g. ``CPU : AVX2 = 1 | AVX512 = 1 | ...``."""
    import llama_cpp as ll

    return bytes(ll.llama_print_system_info()).decode(errors="replace")


@lru_cache(maxsize=1)
def extra_buffers_safe() -> bool:
    """Whether llama.cpp's extra weight buffers (REPACK, AMX) may be used.

    ggml's AMX kernels crash (SIGSEGV in ``ggml_backend_amx_mul_mat``) on some virtual
    machines that advertise AMX, and the AMX buffer type is only reachable through
    the extra buffers. So when this build contains AMX kernels, ggrun turns the extra
    buffers off unless ``GGRUN_AMX=1`` says AMX works here. Builds without AMX
    (the README's install) keep REPACK on.
    """
    if "AMX_INT8 = 1" not in system_info():
        return True
    if os.environ.get("GGRUN_AMX") == "1":
        return True
    logger.info(
        "this llama.cpp build has AMX kernels; weight repacking is off "
        "(set GGRUN_AMX=1 if AMX works on this machine)"
    )
    return False
