"""The llama layer: the only module that calls llama.cpp to decode, tokenize, sample or
manage the KV cache.

Log routing: llama.cpp logs every tensor it loads or quantizes through one process-wide
callback. The runtime and the converter both route it here: nowhere unless verbose
(then stderr), and captured on demand to explain a failure.
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Iterator
from contextlib import contextmanager

_CALLBACK: object = None  # llama.cpp keeps the pointer: keep the object alive
_VERBOSE = False
_captured: list[str] | None = None


def route_llama_log(verbose: bool = False) -> None:
    global _CALLBACK, _VERBOSE
    import llama_cpp as ll

    _VERBOSE = verbose
    if _CALLBACK is not None:
        return

    @ll.llama_log_callback
    def callback(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        message = text.decode("utf-8", errors="replace")
        if _captured is not None:
            _captured.append(message)
        if _VERBOSE:
            sys.stderr.write(message)

    _CALLBACK = callback
    ll.llama_log_set(callback, ctypes.c_void_p(0))


@contextmanager
def captured_llama_log() -> Iterator[list[str]]:
    """Collect llama.cpp's log lines for the duration (to explain a failure)."""
    global _captured
    route_llama_log(_VERBOSE)
    previous, _captured = _captured, []
    try:
        yield _captured
    finally:
        _captured = previous
