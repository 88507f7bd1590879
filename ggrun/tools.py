"""Tools a model may call: definitions, the grammar that keeps calls valid, and parsing.

A tool is a Python function (its parameters from the type hints, its description from
the docstring) or an OpenAI-style dict (``{"type": "function", "function": {"name",
"description", "parameters"}}``) taken as it is, after the same checks as a JSON
schema for structured output (:func:`ggrun.structured.check_schema`).

Calls use the Hermes format that Qwen2.5 and Qwen3 are trained on::

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

They are valid by construction: :func:`call_grammar` builds a grammar that allows only
``{"name": <one of the tools>, "arguments": <that tool's parameter schema>}`` inside
the tags. With ``tool_choice="auto"`` it takes over when the model opens a call (see
:mod:`ggrun.decoder`); with ``"required"`` or a named tool it applies from the start
(after the thought, for a thinking model). Every finished call is parsed and validated
again (:func:`parse_call`).
"""

from __future__ import annotations

import enum
import inspect
import json
import re
import types
import typing
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ggrun.errors import GrammarError, InvalidArgument, SchemaMismatch

OPEN, CLOSE = "<tool_call>", "</tool_call>"
NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")  # fullmatch only: "$" would let "name\n" by
MAX_TOOLS = 128
CHOICES = ("auto", "none", "required")
GRAMMAR_ROOT = "ggrun-tools"


@dataclass(frozen=True)
class ToolCall:
    """One validated call: ``arguments`` is a dict that matches the tool's schema."""

    name: str
    arguments: dict[str, Any]
    id: str = field(default_factory=lambda: "call_" + uuid.uuid4().hex[:24])

    def as_openai(self) -> dict[str, Any]:
        args = json.dumps(self.arguments, ensure_ascii=False)
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": args},
        }


@dataclass(frozen=True, eq=False)
class Tool:
    """A tool: its name, description and parameter schema, and the function if any."""

    name: str
    description: str
    parameters: dict[str, Any]
    fn: Callable[..., Any] | None = None

    def as_openai(self) -> dict[str, Any]:
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters,
            },
        }


# ---------------------------------------------------------------- definitions


def to_tools(items: Any) -> tuple[Tool, ...]:
    """Tools from functions, OpenAI-style dicts or :class:`Tool` objects; names unique."""
    if isinstance(items, (Tool, dict)) or callable(items):
        items = [items]
    if not isinstance(items, (list, tuple)):
        raise InvalidArgument("tools must be a list of functions or tool definitions")
    if len(items) > MAX_TOOLS:
        raise InvalidArgument(f"tools holds more than {MAX_TOOLS} tools")
    out: list[Tool] = []
    for i, item in enumerate(items):
        if isinstance(item, Tool):
            tool = item
        elif isinstance(item, Mapping):
            tool = from_dict(item, f"tools[{i}]")
        elif callable(item):
            tool = from_function(item)
        else:
            raise InvalidArgument(f"tools[{i}] must be a function or a tool definition object")
        if any(t.name == tool.name for t in out):
            raise InvalidArgument(f"tools[{i}]: the name {tool.name!r} is used twice")
        out.append(tool)
    return tuple(out)


def from_dict(d: Mapping[str, Any], where: str = "tool") -> Tool:
    """An OpenAI-style tool definition, checked."""
    from ggrun import structured

    fn = d.get("function") if d.get("type") == "function" else None
    if not isinstance(fn, Mapping) or set(d) - {"type", "function"}:
        raise InvalidArgument(f'{where} must be {{"type": "function", "function": {{...}}}}')
    unknown = set(fn) - {"name", "description", "parameters", "strict"}
    if unknown:
        raise InvalidArgument(
            f"{where}.function has unknown field(s): {', '.join(sorted(unknown))}"
        )
    name = fn.get("name")
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise InvalidArgument(f"{where}.function.name must be 1-64 letters, digits, _ or -")
    desc = fn.get("description", "")
    if not isinstance(desc, str):
        raise InvalidArgument(f"{where}.function.description must be a string")
    if not isinstance(fn.get("strict", False), (bool, type(None))):
        raise InvalidArgument(f"{where}.function.strict must be true or false")
    params = fn.get("parameters", {"type": "object", "properties": {}})
    if not isinstance(params, dict) or params.get("type", "object") != "object":
        raise InvalidArgument(f"{where}.function.parameters must be an object schema")
    try:
        structured.check_size(params)
        structured.check_schema(params, f"{where}.function.parameters")
    except GrammarError as e:
        raise GrammarError(f"{where} ({name}): {e}") from None
    return Tool(name, desc, dict(params))


def _schema_of(hint: Any) -> dict[str, Any]:
    """A JSON schema for a Python type hint."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    simple = {str: "string", int: "integer", float: "number", bool: "boolean"}
    if hint in simple:
        return {"type": simple[hint]}
    if hint is Any or hint is inspect.Parameter.empty:
        return {}
    if origin is typing.Literal:
        return {"enum": list(args)}
    if origin in (typing.Union, types.UnionType):
        parts = [a for a in args if a is not type(None)]
        inner = (
            _schema_of(parts[0]) if len(parts) == 1 else {"anyOf": [_schema_of(a) for a in parts]}
        )
        return {"anyOf": [inner, {"type": "null"}]} if len(parts) < len(args) else inner
    if origin in (list, tuple, set, frozenset) or hint in (list, tuple):
        return {"type": "array", **({"items": _schema_of(args[0])} if args else {})}
    if origin is dict or hint is dict:
        return {"type": "object"}
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return {"enum": [m.value for m in hint]}
    if isinstance(hint, type) and hasattr(hint, "model_json_schema"):  # pydantic
        return dict(hint.model_json_schema())
    raise InvalidArgument(f"cannot turn the type {hint!r} into a tool parameter")


def _doc(fn: Callable[..., Any]) -> tuple[str, dict[str, str]]:
    """The summary of a docstring, and ``Args:`` descriptions (Google style)."""
    doc = inspect.getdoc(fn) or ""
    summary = doc.split("\n\n", 1)[0].strip()
    params: dict[str, str] = {}
    m = re.search(r"^(?:Args|Arguments|Parameters):\s*\n((?:[ \t]+.*\n?)+)", doc, re.M)
    if m:
        for line in m.group(1).splitlines():
            pm = re.match(r"\s+(\w+)(?:\s*\(.*?\))?:\s*(.+)", line)
            if pm:
                params[pm.group(1)] = pm.group(2).strip()
    return summary, params


def from_function(fn: Callable[..., Any]) -> Tool:
    """A tool from a function: parameters from its type hints, description from its doc."""
    name = getattr(fn, "__name__", "")
    if not NAME.fullmatch(name):
        raise InvalidArgument(f"the function name {name!r} cannot be a tool name")
    try:
        hints = typing.get_type_hints(fn, include_extras=False)
    except Exception as e:  # noqa: BLE001 - any unresolvable annotation
        raise InvalidArgument(f"{name}: cannot read its type hints ({e})") from None
    summary, described = _doc(fn)
    props: dict[str, Any] = {}
    required: list[str] = []
    for p in inspect.signature(fn).parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        schema = _schema_of(hints.get(p.name, p.annotation))
        if p.name in described:
            schema = {**schema, "description": described[p.name]}
        if p.default is p.empty:
            required.append(p.name)
        elif isinstance(p.default, (str, int, float, bool)) or p.default is None:
            schema = {**schema, "default": p.default}
        props[p.name] = schema
    params: dict[str, Any] = {"type": "object", "properties": props, "required": required}
    params["additionalProperties"] = False
    return Tool(name, summary, params, fn)


# ---------------------------------------------------------------- choice


@dataclass(frozen=True)
class Choice:
    """``tool_choice``: "auto", "none", "required", or one named tool."""

    mode: str = "auto"
    name: str | None = None

    @classmethod
    def parse(cls, value: Any, tools: tuple[Tool, ...]) -> Choice:
        if value is None:
            return cls()
        if isinstance(value, str) and value in CHOICES:
            return cls(value)
        if isinstance(value, Mapping):
            fn = value.get("function")
            name = (
                fn.get("name")
                if value.get("type") == "function" and isinstance(fn, Mapping)
                else None
            )
            if not isinstance(name, str):
                raise InvalidArgument('tool_choice must name a function: {"type": "function", ...}')
            if not any(t.name == name for t in tools):
                raise InvalidArgument(f"tool_choice names {name!r}, which is not one of the tools")
            return cls("named", name)
        raise InvalidArgument('tool_choice must be "auto", "none", "required" or a named function')


# ---------------------------------------------------------------- grammar and parsing


def call_grammar(tools: tuple[Tool, ...], choice: Choice, parallel: bool) -> str:
    """The GBNF that allows only valid calls (root :data:`GRAMMAR_ROOT`): one
    ``<tool_call>`` block (or several, with ``parallel``) holding ``{"name": <a tool>,
    "arguments": <its parameters>}``, then nothing but whitespace before the end."""
    from ggrun import structured

    chosen = [t for t in tools if choice.name in (None, t.name)]
    defs: dict[str, Any] = {}
    variants = []
    for i, t in enumerate(chosen):
        arguments = t.parameters
        if _has_ref(arguments):  # its "#/..." pointers mean its own root: it goes under $defs
            defs[f"tool{i}"] = _rebased(arguments, f"#/$defs/tool{i}")
            arguments = {"$ref": f"#/$defs/tool{i}"}
        variants.append({
            "type": "object",
            "properties": {"name": {"const": t.name}, "arguments": arguments},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        })  # fmt: skip
    schema = variants[0] if len(variants) == 1 else {"anyOf": variants}
    if defs:
        schema = {**schema, "$defs": defs}
    body = structured.schema_constraint(schema).grammar
    one = f'"{OPEN}" ggrun-ws root ggrun-ws "{CLOSE}"'
    more = f" (ggrun-ws {one})*" if parallel else ""
    return (
        f"{body}\n{GRAMMAR_ROOT} ::= ggrun-ws {one}{more} ggrun-ws\nggrun-ws ::= [ \\t\\n]{{0,8}}\n"
    )


def _has_ref(schema: Any) -> bool:
    if isinstance(schema, dict):
        return "$ref" in schema or any(_has_ref(v) for v in schema.values())
    return isinstance(schema, list) and any(_has_ref(v) for v in schema)


def _rebased(schema: Any, base: str) -> Any:
    """``schema`` with its local pointers (``#/$defs/Place``, ``#``) made relative to
    ``base``, where it will sit inside a larger schema."""
    if isinstance(schema, list):
        return [_rebased(v, base) for v in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _rebased(v, base) for k, v in schema.items()}
    ref = schema.get("$ref")
    if isinstance(ref, str) and (ref == "#" or ref.startswith("#/")):
        out["$ref"] = base + ref[1:]
    return out


def looks_like_call(text: str) -> bool:
    """Whether an answer that starts with ``text`` is the model starting a tool call in
    one of the shapes small models use: the tag, a bare JSON object, a fenced block."""
    s = text.lstrip()
    if not s:
        return False
    return s.startswith(("{", "```", "<tool")) or (
        OPEN.startswith(s) and not "<think>".startswith(s)
    )


def parse_call(text: str, tools: tuple[Tool, ...]) -> ToolCall:
    """A call's JSON (between the tags) checked against the tools (formats too);
    GrammarError if not, SchemaMismatch for a check only validation holds (another draw
    may pass it)."""
    from ggrun import structured

    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise GrammarError(
            f"the model wrote a tool call that is not JSON: {str(e)[:100]}"
        ) from None
    if not isinstance(data, dict) or set(data) != {"name", "arguments"}:
        raise GrammarError('a tool call must be {"name": ..., "arguments": {...}}')
    tool = next((t for t in tools if t.name == data["name"]), None)
    if tool is None:
        raise GrammarError(f"the model called an unknown tool {str(data['name'])[:64]!r}")
    args = data["arguments"]
    try:
        structured.check_value(args, tool.parameters)
    except SchemaMismatch as e:  # a check the grammar cannot hold (multipleOf)
        raise SchemaMismatch(f"the call to {tool.name}: {e}") from None
    return ToolCall(tool.name, args)


FALLBACK_PROMPT = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
    "{tools}\n</tools>\n\nFor each function call, return a json object with function name "
    "and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{{"name": <function-name>, "arguments": <args-json-object>}}\n</tool_call>'
)


def fallback_system(tools: tuple[Tool, ...]) -> str:
    """Tool instructions for a template that cannot show tools (Qwen's own wording)."""
    lines = "\n".join(json.dumps(t.as_openai(), ensure_ascii=False) for t in tools)
    return FALLBACK_PROMPT.format(tools=lines)
