"""Loading of ggrun's YAML data files (sampling profiles, model aliases, tasks).

Files are read with ``yaml.safe_load`` semantics (the safe loader, nothing executes).
:func:`build` turns a mapping into a frozen dataclass and rejects unknown keys and
wrong types with a :class:`~ggrun.errors.PresetError` that names the file, the line and
the key.

Where presets live: an installed wheel carries them as ``ggrun/_presets``; a source
checkout uses the top-level ``presets/`` folder. ``GGRUN_PRESETS`` overrides both.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from ggrun.errors import PresetError

T = TypeVar("T")


def presets_dir() -> Path:
    env = os.environ.get("GGRUN_PRESETS")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parent
    for candidate in (here / "_presets", here.parent / "presets"):
        if candidate.is_dir():
            return candidate
    raise PresetError("ggrun's presets folder is missing; reinstall ggrun")


class _LineLoader(yaml.SafeLoader):
    """The safe loader, remembering the line of every mapping key."""


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    mapping = _LineDict()
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)  # type: ignore[no-untyped-call]
        if key in mapping:
            raise PresetError(f"duplicate key {key!r} at line {key_node.start_mark.line + 1}")
        mapping[key] = loader.construct_object(value_node, deep=True)  # type: ignore[no-untyped-call]
        mapping.lines[key] = key_node.start_mark.line + 1
    return mapping


class _LineDict(dict[Any, Any]):
    def __init__(self) -> None:
        super().__init__()
        self.lines: dict[Any, int] = {}
        self.line = 0


_LineLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,  # type: ignore[arg-type]
)


def load_yaml(path: Path) -> Any:
    """Parse a YAML file safely; errors name the file and line."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PresetError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise PresetError(f"{path}: cannot read: {e}") from None
    try:
        return yaml.load(text, Loader=_LineLoader)  # noqa: S506 - a SafeLoader subclass
    except PresetError as e:
        raise PresetError(f"{path}: {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise PresetError(f"{path}:{where}: invalid YAML: {problem}") from None


def line_of(mapping: Any, key: Any) -> int:
    return mapping.lines.get(key, 0) if isinstance(mapping, _LineDict) else 0


def _type_ok(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin in (tuple, list):
        args = typing.get_args(hint)
        return isinstance(value, (list, tuple)) and all(_type_ok(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True


def build(cls: type[T], data: Any, *, where: str, extra: tuple[str, ...] = ()) -> T:
    """Build dataclass ``cls`` from a YAML mapping, strictly.

    ``where`` names the file and entry in messages; keys in ``extra`` are allowed but
    not passed to ``cls`` (the caller uses them).
    """
    if not isinstance(data, dict):
        raise PresetError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        line = line_of(data, key)
        at = f"{where}, line {line}" if line else where
        if key in extra:
            continue
        if key not in fields:
            allowed = ", ".join(sorted(fields | set(extra)))
            raise PresetError(f"{at}: unknown key {key!r} (allowed: {allowed})")
        if not _type_ok(value, hints[key]):
            raise PresetError(f"{at}: {key!r} has the wrong type ({type(value).__name__})")
        kwargs[key] = tuple(value) if isinstance(value, list) else value
    try:
        return cls(**kwargs)
    except PresetError as e:
        raise PresetError(f"{where}: {e}") from None
    except TypeError as e:
        raise PresetError(f"{where}: {e}") from None
