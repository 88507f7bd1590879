"""Where the converter lives, loaded only when a conversion is asked for.

The converter is the top-level ``convert/`` folder of the source tree. It never claims
the bare import name ``convert``: a user's own ``convert.py`` next to their script must
not shadow it, nor it theirs. An installed wheel carries the folder as
``ggrun._convert``; a source checkout loads ``convert/`` from its path under that same
name. The runtime never imports it; ``ggrun convert``, ``ggrun.convert()`` and bench's
checkpoint conversion call :func:`load`.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from ggrun.errors import ConversionError

if TYPE_CHECKING:  # what the type checker sees: the source folder
    from convert import convert as convert

NAME = "ggrun._convert"


def load(submodule: str = "") -> ModuleType:
    """The converter package (or one of its submodules, e.g. ``load("safetensors")``)."""
    package = sys.modules.get(NAME) or _import()
    return importlib.import_module(f"{NAME}.{submodule}") if submodule else package


def _import() -> ModuleType:
    try:
        return importlib.import_module(NAME)  # an installed wheel
    except ModuleNotFoundError as e:
        if e.name != NAME:
            raise
    folder = Path(__file__).resolve().parent.parent / "convert"  # a source checkout
    spec = importlib.util.spec_from_file_location(
        NAME, folder / "__init__.py", submodule_search_locations=[str(folder)]
    )
    if spec is None or spec.loader is None or not (folder / "__init__.py").is_file():
        raise ConversionError(f"ggrun's converter is missing ({folder}); reinstall ggrun")
    module = importlib.util.module_from_spec(spec)
    sys.modules[NAME] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[NAME]
        raise
    return module


def __getattr__(name: str) -> Any:
    """``ggrun.converter.convert`` and friends: the converter's own objects."""
    if name.startswith("__"):
        raise AttributeError(name)
    return getattr(load(), name)
