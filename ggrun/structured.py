"""Structured output: JSON mode, JSON Schema, GBNF grammars and text formats.

Generation is constrained by a llama.cpp grammar, never by asking nicely; the result
is then checked (``json.loads`` and ``jsonschema`` for JSON, the standard parsers for
CSV, YAML and XML) and a cut-off output raises :class:`IncompleteOutput`.

Schemas become grammars with llama-cpp-python's ``json_schema_to_gbnf``. It silently
ignores keywords it does not implement, so ggrun accepts only the ones below and
rejects the rest up front, naming the keyword and where it is:

- ``type`` (also a list), ``properties``, ``required``, ``additionalProperties``,
  ``enum``, ``const``;
- ``items``, ``prefixItems``, ``minItems``, ``maxItems``;
- ``minLength``, ``maxLength``, ``pattern`` (the regex subset the converter knows),
  ``format`` = ``date``, ``time`` or ``date-time``;
- ``anyOf``, ``oneOf``, ``allOf``; local ``$ref`` into ``$defs``/``definitions``;
- annotations, which constrain nothing: ``title``, ``description``, ``default``,
  ``examples``, ``$schema``, ``$id``, ``$comment``.

Not supported (rejected): number bounds (``minimum`` and friends), ``multipleOf``,
``patternProperties``, ``propertyNames``, ``uniqueItems``, ``contains``, ``not``,
``if``/``then``/``else``, other ``format`` values, remote ``$ref``.

Thinking models: when the model may think (its template knows ``<think>`` and thinking
is not off), the grammar is *lazy*: it applies only after ``</think>``, so the model is
free to think and strict to answer.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ggrun.errors import GgrunError, GrammarError

SUPPORTED = frozenset({
    "type", "properties", "required", "additionalProperties", "enum", "const", "items",
    "prefixItems", "minItems", "maxItems", "minLength", "maxLength", "pattern", "format",
    "anyOf", "oneOf", "allOf", "$ref", "$defs", "definitions",
    "title", "description", "default", "examples", "$schema", "$id", "$comment",
})  # fmt: skip
FORMATS = frozenset({"date", "time", "date-time"})
SUBSCHEMA_MAPS = ("properties", "$defs", "definitions")
SUBSCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
THINK_TRIGGER = r"</think>\s*(\S[\s\S]*)"  # the grammar starts at the first answer char
FORMATS_DIR = "grammars"


class IncompleteOutput(GrammarError):
    """The output was cut off (``finish_reason="length"``) before it was complete."""

    def __init__(self, message: str, result: Any = None) -> None:
        super().__init__(message)
        self.result = result


@dataclass(frozen=True)
class Constraint:
    """A grammar and how to check what it produced."""

    grammar: str
    kind: str  # "json", "schema", "grammar", "csv", "yaml", "xml"
    schema: dict[str, Any] | None = None
    model_class: Any = None  # a pydantic model class, when the schema came from one

    def parse(self, text: str) -> Any:
        """Parse and check the output; raise GrammarError when it does not hold."""
        parser = PARSERS.get(self.kind)
        if parser is None:
            return None
        try:
            data = parser(text)
        except GrammarError:
            raise
        except Exception as e:  # noqa: BLE001 - each parser has its own error types
            raise GrammarError(f"the output is not valid {self.kind}: {e}") from None
        if self.schema is not None:
            import jsonschema

            try:
                jsonschema.validate(data, self.schema)
            except jsonschema.ValidationError as e:
                raise GrammarError(f"the output does not match the schema: {e.message}") from None
            if self.model_class is not None:
                return self.model_class.model_validate(data)
        return data


def _parse_yaml(text: str) -> Any:
    import yaml

    return yaml.safe_load(text)


def _parse_xml(text: str) -> Any:
    import xml.etree.ElementTree as ET

    return ET.fromstring(text.strip())


def _parse_csv(text: str) -> list[list[str]]:
    rows = list(csv.reader(io.StringIO(text.strip())))
    if not rows or len({len(r) for r in rows}) != 1:
        raise GrammarError("the output is not a rectangular CSV table")
    return rows


PARSERS: dict[str, Any] = {
    "json": json.loads,
    "schema": json.loads,
    "yaml": _parse_yaml,
    "xml": _parse_xml,
    "csv": _parse_csv,
}


def check_schema(schema: Any, path: str = "") -> None:
    """Reject keywords the grammar converter would silently ignore."""
    if isinstance(schema, bool):
        return
    if not isinstance(schema, dict):
        raise GrammarError(f"invalid schema at {path or '/'}: expected an object")
    for key, value in schema.items():
        where = f"{path}/{key}"
        if key not in SUPPORTED:
            raise GrammarError(
                f"unsupported JSON Schema keyword {key!r} at {path or '/'}: "
                "ggrun cannot guarantee it, so it refuses the schema"
            )
        if key == "format" and value not in FORMATS:
            raise GrammarError(
                f"unsupported string format {value!r} at {where} "
                f"(supported: {', '.join(sorted(FORMATS))})"
            )
        if key == "$ref" and not (isinstance(value, str) and value.startswith("#/")):
            raise GrammarError(f"only local $ref ('#/...') is supported, got {value!r} at {where}")
        if key in SUBSCHEMA_MAPS and isinstance(value, dict):
            for name, sub in value.items():
                check_schema(sub, f"{where}/{name}")
        elif key in SUBSCHEMA_LISTS and isinstance(value, list):
            for i, sub in enumerate(value):
                check_schema(sub, f"{where}/{i}")
        elif key in ("items", "additionalProperties") and isinstance(value, (dict, bool)):
            check_schema(value, where)


def schema_constraint(schema: Any) -> Constraint:
    """A constraint from a JSON Schema dict, JSON text, a file path or a pydantic class."""
    model_class = None
    if isinstance(schema, type) and hasattr(schema, "model_json_schema"):
        model_class, schema = schema, schema.model_json_schema()
    elif isinstance(schema, (str, Path)):
        schema = load_schema(schema)
    if not isinstance(schema, dict):
        raise GrammarError("a schema must be a JSON object (or a pydantic model class)")
    import jsonschema
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as e:
        raise GrammarError(f"invalid JSON Schema: {e.message}") from None
    check_schema(schema)
    try:
        grammar = json_schema_to_gbnf(json.dumps(schema))
    except Exception as e:  # noqa: BLE001 - the converter raises plain exceptions
        raise GrammarError(f"cannot turn the schema into a grammar: {e}") from None
    # llama-cpp-python's port lets raw control characters into strings, which JSON
    # forbids; upstream's json-schema-to-grammar excludes them. Restore upstream's rule.
    grammar = grammar.replace('char ::= [^"\\\\] ', 'char ::= [^"\\\\\\x7F\\x00-\\x1F] ')
    return Constraint(grammar, "schema", schema, model_class)


def _read(path: str, what: str) -> str:
    p = Path(path).expanduser()
    try:
        return p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise GrammarError(f"{p}: no such {what} file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise GrammarError(f"{p}: cannot read: {e}") from None


def load_schema(value: str | Path) -> Any:
    """Inline JSON, or the path of a JSON file."""
    text = str(value).strip()
    if not text.startswith("{"):
        text = _read(text, "schema")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise GrammarError(f"the schema is not valid JSON: {e}") from None


def json_constraint() -> Constraint:
    from llama_cpp.llama_grammar import JSON_GBNF

    return Constraint(JSON_GBNF, "json")


def grammar_constraint(source: str | Path) -> Constraint:
    """A GBNF grammar given as text, or as the path of a .gbnf file."""
    text = str(source)
    if "::=" not in text:
        text = _read(text, "grammar")
    return Constraint(text, "grammar")


def format_constraint(fmt: str, columns: list[str] | None = None) -> Constraint:
    """``csv``, ``yaml`` or ``xml`` from ``presets/grammars``; CSV may fix its header."""
    from ggrun.presets import presets_dir

    path = presets_dir() / FORMATS_DIR / f"{fmt}.gbnf"
    if fmt not in ("csv", "yaml", "xml") or not path.exists():
        raise GrammarError(f"unknown format {fmt!r} (choose csv, yaml or xml)")
    grammar = path.read_text(encoding="utf-8")
    if columns:
        if fmt != "csv":
            raise GrammarError("--columns only applies to --format csv")
        if any(not c or any(ch in c for ch in ',"\n\r') for c in columns):
            raise GrammarError("column names must be non-empty, without commas or quotes")
        fields = grammar.split("# field rules", 1)[1].split("\n", 1)[1]
        row = ' "," '.join(["field"] * len(columns))
        header = json.dumps(",".join(columns))
        grammar = f'root ::= {header} ("\\n" row)+ "\\n"?\nrow ::= {row}\n{fields}'
    return Constraint(grammar, fmt)


def from_options(
    *,
    json_mode: bool = False,
    schema: Any = None,
    grammar: Any = None,
    response_format: dict[str, Any] | None = None,
    fmt: str | None = None,
    columns: list[str] | None = None,
) -> Constraint | None:
    """The one constraint the options ask for (at most one may be given)."""
    if isinstance(grammar, Constraint):
        return grammar
    if response_format is not None:
        rtype = response_format.get("type") if isinstance(response_format, dict) else None
        if rtype == "json_object":
            inner = response_format.get("schema")
            schema = inner if inner is not None else schema
            json_mode = inner is None
        elif rtype == "json_schema":
            spec = response_format.get("json_schema") or {}
            schema = spec.get("schema") if isinstance(spec, dict) else None
            if schema is None:
                raise GrammarError("response_format json_schema needs json_schema.schema")
        elif rtype != "text":
            raise GrammarError(f"unknown response_format type {rtype!r}")
    asked = [
        n
        for n, v in (
            ("json", json_mode),
            ("schema", schema is not None),
            ("grammar", grammar is not None),
            ("format", fmt is not None),
        )
        if v
    ]
    if len(asked) > 1:
        raise GgrunError(f"give only one of {', '.join(asked)}")
    if schema is not None:
        return schema_constraint(schema)
    if json_mode:
        return json_constraint()
    if grammar is not None:
        return grammar_constraint(grammar)
    if fmt is not None:
        return format_constraint(fmt, columns)
    return None
