"""Where llama.cpp's log output goes: nowhere, unless verbose (then stderr).

llama.cpp logs every tensor it loads or quantizes through one process-wide callback.
ggrun's engine and converter both route it here, so the output stays clean by default.
"""

from __future__ import annotations

import ctypes
import sys

_CALLBACK: object = None  # llama.cpp keeps the pointer: keep the object alive


def route_llama_log(verbose: bool = False) -> None:
    global _CALLBACK
    import llama_cpp as ll

    @ll.llama_log_callback
    def callback(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        if verbose:
            sys.stderr.write(text.decode("utf-8", errors="replace"))

    _CALLBACK = callback
    ll.llama_log_set(callback, ctypes.c_void_p(0))
