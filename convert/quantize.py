"""Quantized outputs through llama.cpp's own quantizer (``llama_model_quantize``).

Q8_0, Q6_K, Q5_K_M, Q4_K_M and Q4_0 use llama.cpp's standard mixes (for the K-quant
mixes and Q4_0 some tensors, such as the token embeddings, get another type), byte for
byte what the ``llama-quantize`` tool makes. Q4_0 matters on ARM: llama.cpp repacks it
when it loads, so there it is often the fastest. It runs on all cores, in a worker
thread, so the caller can show progress (the output file's size) and react to Ctrl-C.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable
from pathlib import Path

from ggrun.errors import ConversionError
from ggrun.llama import route_llama_log

QUANT_FTYPES = {
    "q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0",
    "q6_k": "LLAMA_FTYPE_MOSTLY_Q6_K",
    "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
    "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
    "q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0",
}
# for size estimates only
BITS_PER_WEIGHT = {"q8_0": 8.5, "q6_k": 6.6, "q5_k_m": 5.7, "q4_k_m": 4.9, "q4_0": 4.6}


def quantize(
    src: Path,
    dst: Path,
    quant: str,
    *,
    threads: int | None = None,
    on_poll: Callable[[int], None] | None = None,
) -> None:
    """Quantize GGUF ``src`` into ``dst``; ``on_poll`` gets dst's size while it runs."""
    import llama_cpp as ll

    route_llama_log(os.environ.get("GGRUN_VERBOSE") == "1")
    params = ll.llama_model_quantize_default_params()
    params.ftype = getattr(ll, QUANT_FTYPES[quant])
    params.nthread = threads or os.cpu_count() or 1
    result: list[int] = []

    def work() -> None:
        result.append(
            int(ll.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params)))
        )

    worker = threading.Thread(target=work, name="ggrun-quantize", daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(0.25)
        if on_poll is not None and dst.exists():
            on_poll(dst.stat().st_size)
    if not result or result[0] != 0:
        raise ConversionError(f"llama.cpp could not quantize {src.name} to {quant.upper()}")
    with open(dst, "rb+") as f:
        os.fsync(f.fileno())
