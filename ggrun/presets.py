"""Loading of ggrun's YAML data files (sampling profiles, model aliases, tasks).

Files are read with ``yaml.safe_load`` semantics (the safe loader, nothing executes),
and bounded: the file's size, its nesting depth, and what its anchors and aliases
expand to (an alias is a reference, so a few lines of aliases to aliases stand for
billions of values once anything walks them: the "billion laughs"). :func:`build` turns
a mapping into a frozen dataclass and rejects unknown keys and wrong types with a
:class:`~ggrun.errors.PresetError` that names the file, the line and the key.

Where presets live: an installed wheel carries them as ``ggrun/_presets``; a source
checkout uses the top-level ``presets/`` folder. ``GGRUN_PRESETS`` overrides both.
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from ggrun.errors import PresetError
from ggrun.files import read_text

T = TypeVar("T")

MAX_YAML_BYTES = 4 << 20  # ggrun's own data files are a few KB each
MAX_YAML_DEPTH = 64  # nested mappings and lists
MAX_YAML_EXPANDED = 1 << 20  # values plus scalar characters, every alias expanded


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


def load_yaml(path: Path, what: str = "ggrun data") -> Any:
    """Parse a YAML file safely, within bounds; errors name the file and line.

    The file is read by :func:`ggrun.files.read_text` (a regular file, never blocking,
    at most :data:`MAX_YAML_BYTES`); ``what`` names it in messages.
    """
    text = read_text(path, what=what, limit=MAX_YAML_BYTES, error=PresetError)
    if _bracket_depth(text) > MAX_YAML_DEPTH:  # PyYAML reads every level before any check
        raise PresetError(f"{path}: nested more than {MAX_YAML_DEPTH} levels deep")
    loader: _LineLoader | None = None
    try:
        loader = _LineLoader(text)  # its reader refuses control characters at once
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expansion(node)
        return loader.construct_document(node)
    except PresetError as e:
        raise PresetError(f"{path}: {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}:" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        if isinstance(e, yaml.reader.ReaderError):  # its text would quote the character
            problem = f"a character YAML does not allow, at position {e.position}"
        raise PresetError(f"{path}:{where} invalid YAML: {problem}") from None
    except RecursionError:
        raise PresetError(f"{path}: invalid YAML: nested too deeply") from None
    except (ValueError, OverflowError) as e:  # e.g. an integer of 5000 digits
        raise PresetError(f"{path}: invalid YAML value: {e}") from None
    finally:
        if loader is not None:
            loader.dispose()  # type: ignore[no-untyped-call]


def _bracket_depth(text: str) -> int:
    """How deep ``[`` and ``{`` nest (quotes ignored: an over-estimate, never under)."""
    depth = deepest = 0
    for c in re.sub(r"[^\[\]{}]+", "", text):
        depth = depth + 1 if c in "[{" else max(0, depth - 1)
        deepest = max(deepest, depth)
    return deepest


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return list(node.value) if isinstance(node, yaml.SequenceNode) else []


def _check_expansion(root: yaml.Node) -> None:
    """Refuse a document whose aliases expand too far, that nests too deeply, or that
    refers to itself; one visit per distinct node, however often it is aliased."""
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    ancestors: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        key = id(node)
        kids = _children(node)
        if finished:
            ancestors.discard(key)
            own = 1 + (len(node.value) if isinstance(node, yaml.ScalarNode) else 0)
            size[key] = own + sum(size[id(k)] for k in kids)
            depth[key] = 1 + max((depth[id(k)] for k in kids), default=0)
            line = node.start_mark.line + 1
            if size[key] > MAX_YAML_EXPANDED:
                raise PresetError(
                    f"line {line}: its anchors and aliases expand to more than "
                    f"{MAX_YAML_EXPANDED:,} values and characters"
                )
            if depth[key] > MAX_YAML_DEPTH:
                raise PresetError(f"line {line}: nested more than {MAX_YAML_DEPTH} levels deep")
            continue
        if key in size:
            continue
        if key in ancestors:
            raise PresetError(f"line {node.start_mark.line + 1}: an alias refers to itself")
        ancestors.add(key)
        stack.append((node, True))
        stack.extend((k, False) for k in kids if id(k) not in size)


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
    not passed to ``cls`` (the caller uses them); a field with ``metadata={"key": False}``
    is not a key (the caller fills it).
    """
    if not isinstance(data, dict):
        raise PresetError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    own = dataclasses.fields(cls)  # type: ignore[arg-type]
    fields = {f.name for f in own if f.metadata.get("key", True)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        line = line_of(data, key)
        at = f"{where}, line {line}" if line else where
        if key in extra:
            continue
        if key not in fields:
            allowed = ", ".join(sorted(fields | set(extra)))
            raise PresetError(f"{at}: unknown key {str(key)[:60]!r} (allowed: {allowed})")
        if not _type_ok(value, hints[key]):
            raise PresetError(f"{at}: {key!r} has the wrong type ({type(value).__name__})")
        kwargs[key] = tuple(value) if isinstance(value, list) else value
    try:
        return cls(**kwargs)
    except PresetError as e:
        raise PresetError(f"{where}: {e}") from None
    except TypeError as e:
        raise PresetError(f"{where}: {e}") from None
