"""ggrun: run small quantized language models locally, on llama.cpp.

The public API for scripts::

    import ggrun
    with ggrun.load("qwen2.5-coder-0.5b", n_ctx=4096) as model:
        print(model.chat([{"role": "user", "content": "hi"}]).text)
        chat = ggrun.Chat(model, system="Be brief.")
        print(chat.send("What is 2+2?").text)

Heavy modules (llama_cpp, numpy, gguf) load on first use, so ``import ggrun`` is cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ggrun.errors import (
    ContextOverflow,
    ConversionError,
    GgrunError,
    GrammarError,
    InsufficientMemory,
    InvalidArgument,
    InvalidModelFile,
    ModelNotFound,
    PresetError,
    PullError,
    TemplateError,
    UnsupportedArchitecture,
)

if TYPE_CHECKING:
    from ggrun.batching import batch, batch_stream
    from ggrun.benchmark import BenchResult, bench
    from ggrun.chat import Chat
    from ggrun.converter import convert
    from ggrun.engine import Chunk, LoadConfig, Model, Result, load
    from ggrun.hardware import Hardware, detect_hardware
    from ggrun.models import pull
    from ggrun.planner import Plan
    from ggrun.planner import plan_model as plan
    from ggrun.request import Request
    from ggrun.sampling import SamplingConfig
    from ggrun.speculative import Draft
    from ggrun.tools import Tool, ToolCall

__version__ = "0.1.0"

__all__ = [
    "BenchResult",
    "Chat",
    "Chunk",
    "Draft",
    "ContextOverflow",
    "ConversionError",
    "GgrunError",
    "GrammarError",
    "Hardware",
    "InsufficientMemory",
    "InvalidArgument",
    "InvalidModelFile",
    "LoadConfig",
    "Model",
    "ModelNotFound",
    "Plan",
    "PresetError",
    "PullError",
    "Request",
    "Result",
    "SamplingConfig",
    "TemplateError",
    "Tool",
    "ToolCall",
    "UnsupportedArchitecture",
    "batch",
    "batch_stream",
    "bench",
    "convert",
    "detect_hardware",
    "load",
    "plan",
    "pull",
]

_LAZY = {
    "batch": "ggrun.batching",
    "batch_stream": "ggrun.batching",
    "Request": "ggrun.request",
    "Draft": "ggrun.speculative",
    "Tool": "ggrun.tools",
    "ToolCall": "ggrun.tools",
    "BenchResult": "ggrun.benchmark",
    "bench": "ggrun.benchmark",
    "Chat": "ggrun.chat",
    "Chunk": "ggrun.engine",
    "LoadConfig": "ggrun.engine",
    "Model": "ggrun.engine",
    "Result": "ggrun.engine",
    "load": "ggrun.engine",
    "pull": "ggrun.models",
    "Hardware": "ggrun.hardware",
    "detect_hardware": "ggrun.hardware",
    "Plan": "ggrun.planner",
    "plan": ("ggrun.planner", "plan_model"),
    "SamplingConfig": "ggrun.sampling",
    "convert": ("ggrun.converter", "convert"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        where = _LAZY[name]
        module, attr = where if isinstance(where, tuple) else (where, name)
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'ggrun' has no attribute {name!r}")
