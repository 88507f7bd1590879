"""Structured output: JSON mode, JSON Schema, GBNF grammars and text formats.

Generation is constrained by a llama.cpp grammar, never by asking nicely; the result
is then checked (``json.loads`` and ``jsonschema`` for JSON, the standard parsers for
CSV, YAML and XML) and a cut-off output raises :class:`IncompleteOutput`.

Schemas become grammars with llama-cpp-python's schema converter, extended by
:mod:`ggrun.schema_gbnf` (integer bounds, string formats). The converter silently
ignores keywords it does not implement, so ggrun accepts only the ones below and
rejects the rest up front, naming the keyword and where it is.

Held by the grammar (every value drawn has it):

- ``type`` (also a list), ``properties``, ``required``, ``additionalProperties``,
  ``enum``, ``const``;
- ``items``, ``prefixItems``, ``minItems``, ``maxItems``;
- ``minLength``, ``maxLength``, ``pattern`` (the regex subset the converter knows);
- ``minimum``, ``maximum``, ``exclusiveMinimum``, ``exclusiveMaximum`` on integers
  (up to 16 digits), and the sign of a number whose lower bound is not negative;
- ``format``: ``date``, ``time``, ``date-time``, ``uuid``, ``email``, ``uri``, ``ipv4``,
  ``ipv6``, ``hostname``, each narrower than its RFC (an email is ``local@domain.tld``
  in ASCII, a uri an ``http(s)://`` URL, a year is 1000-2999): see
  :data:`ggrun.schema_gbnf.FORMATS`;
- ``anyOf``, ``oneOf``, ``allOf``; local ``$ref`` into ``$defs``/``definitions``;
- annotations, which constrain nothing: ``title``, ``description``, ``default``,
  ``examples``, ``deprecated``, ``readOnly``, ``writeOnly``, ``discriminator``,
  ``$schema``, ``$id``, ``$comment``.

Held by validation only (no grammar can): ``multipleOf``, bounds on numbers,
``uniqueItems``, ``propertyNames``, and ``minLength``/``maxLength`` beside a ``format``
(a format's own lengths fit pydantic's ``HttpUrl``). The finished value is checked
with jsonschema and its format checker; a failure raises :class:`SchemaMismatch`,
and the reply is drawn again (:mod:`ggrun.redraw`).

Not supported (rejected): ``patternProperties``, ``contains``, ``not``,
``if``/``then``/``else``, other ``format`` values, remote ``$ref``.

Thinking models: when the model may think (its template knows ``<think>`` and thinking
is not off), the grammar is *lazy*: it applies only after ``</think>`` (from the first
non-blank character), so the model is free to think and strict to answer.

Which option asks for which constraint is read in one place, :mod:`ggrun.request`;
OpenAI's ``response_format`` is mapped by the server's adapter.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ggrun.errors import GrammarError, SchemaMismatch
from ggrun.files import read_text

SUPPORTED = frozenset({
    "type", "properties", "required", "additionalProperties", "enum", "const", "items",
    "prefixItems", "minItems", "maxItems", "minLength", "maxLength", "pattern", "format",
    "anyOf", "oneOf", "allOf", "$ref", "$defs", "definitions",
    "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
    "multipleOf", "uniqueItems", "propertyNames",  # validated, not in the grammar
    "title", "description", "default", "examples", "deprecated", "readOnly", "writeOnly",
    "discriminator", "$schema", "$id", "$comment",
})  # fmt: skip
NUMBERS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf")
SUBSCHEMA_MAPS = ("properties", "$defs", "definitions")
SUBSCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
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

    def __post_init__(self) -> None:
        check_gbnf(self.grammar)  # before llama.cpp's parser ever sees it

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
            check_value(data, self.schema)
            if self.model_class is not None:
                try:
                    return self.model_class.model_validate(data)
                except ValueError as e:  # pydantic's ValidationError
                    raise SchemaMismatch(f"the output does not fit the model: {e}") from None
        return data


def check_value(data: Any, schema: dict[str, Any]) -> None:
    """Validate a value with jsonschema, formats included; :class:`SchemaMismatch` if not."""
    import jsonschema

    cls = jsonschema.validators.validator_for(schema)
    error = jsonschema.exceptions.best_match(
        cls(schema, format_checker=cls.FORMAT_CHECKER).iter_errors(data)
    )
    if error is not None:
        where = "/" + "/".join(str(p) for p in error.absolute_path)
        raise SchemaMismatch(f"the output does not match the schema at {where}: {error.message}")


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


MAX_SCHEMA_DEPTH = 32  # nesting of JSON values in a schema
MAX_SCHEMA_NODES = 10_000  # objects, lists and values in a schema
MAX_REPEAT = 1000  # minItems/maxItems/minLength/maxLength (each is inlined in the grammar)
MAX_VALIDATED_LENGTH = 1 << 20  # minLength/maxLength beside a format or pattern
MAX_PATTERN = 1000  # characters of a pattern
MAX_PATTERN_REPEAT = 10_000  # product of the {n,m} bounds in a pattern
MAX_GRAMMAR = 1 << 20  # characters of a grammar
_COUNTS = ("minItems", "maxItems", "minLength", "maxLength")


def check_size(schema: Any) -> None:
    """Bound a schema's depth and size before anything recurses over it."""
    nodes, stack = 0, [(schema, 1)]
    while stack:
        v, depth = stack.pop()
        nodes += 1
        if depth > MAX_SCHEMA_DEPTH:
            raise GrammarError(f"the schema is nested deeper than {MAX_SCHEMA_DEPTH} levels")
        if nodes > MAX_SCHEMA_NODES:
            raise GrammarError(f"the schema has more than {MAX_SCHEMA_NODES} parts")
        if isinstance(v, dict):
            stack.extend((x, depth + 1) for x in v.values())
        elif isinstance(v, list):
            stack.extend((x, depth + 1) for x in v)


def _check_bounds(key: str, value: Any, where: str, limit: int = MAX_REPEAT) -> None:
    if key in NUMBERS:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise GrammarError(f"{key} at {where} must be a number")
        if not math.isfinite(value) or (key == "multipleOf" and value <= 0):
            raise GrammarError(f"{key} at {where} must be a finite number (multipleOf: > 0)")
    elif key == "uniqueItems" and not isinstance(value, bool):
        raise GrammarError(f"uniqueItems at {where} must be true or false")
    elif key in _COUNTS:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= limit:
            raise GrammarError(f"{key} at {where} must be an integer in [0, {limit}]")
    elif key == "pattern":
        if not isinstance(value, str) or len(value) > MAX_PATTERN:
            raise GrammarError(
                f"pattern at {where} must be a string of at most {MAX_PATTERN} chars"
            )
        product = 1
        for lo, hi in re.findall(r"\{(\d*)(?:,(\d*))?\}", value):
            product *= max(int(lo or 0), int(hi or 0), 1)
            if product > MAX_PATTERN_REPEAT:
                raise GrammarError(
                    f"pattern at {where} repeats too much (the {{n,m}} bounds multiply past "
                    f"{MAX_PATTERN_REPEAT})"
                )


def check_schema(schema: Any, path: str = "") -> None:
    """Reject keywords the grammar converter would silently ignore, and sizes it would
    inline without bound."""
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
        if key == "format":
            from ggrun.schema_gbnf import FORMATS

            if value not in FORMATS:
                raise GrammarError(
                    f"unsupported string format {value!r} at {where} "
                    f"(supported: {', '.join(sorted(FORMATS))})"
                )
        if key == "$ref" and not (isinstance(value, str) and value.startswith("#/")):
            raise GrammarError(f"only local $ref ('#/...') is supported, got {value!r} at {where}")
        # beside a format or pattern, string lengths are validated, not inlined
        beside = key in ("minLength", "maxLength") and ("format" in schema or "pattern" in schema)
        _check_bounds(key, value, where, MAX_VALIDATED_LENGTH if beside else MAX_REPEAT)
        if key in SUBSCHEMA_MAPS and isinstance(value, dict):
            for name, sub in value.items():
                check_schema(sub, f"{where}/{name}")
        elif key in SUBSCHEMA_LISTS and isinstance(value, list):
            for i, sub in enumerate(value):
                check_schema(sub, f"{where}/{i}")
        elif key in ("items", "additionalProperties", "propertyNames") and isinstance(
            value, (dict, bool)
        ):
            check_schema(value, where)
        elif key == "items" and isinstance(value, list):  # the converter's exact tuple
            raise GrammarError(
                f"'items' at {where} is a list (the tuple form of drafts before 2020-12), "
                "which ggrun cannot guarantee: write the list as 'prefixItems'"
            )
    _check_tuple(schema, path)


def _check_tuple(schema: dict[str, Any], path: str) -> None:
    """``prefixItems`` becomes an array of exactly its length: refuse what would make
    the converter drop it (a schema for further ``items``) or bounds it cannot meet."""
    tuple_ = schema.get("prefixItems")
    if not isinstance(tuple_, list):
        return
    where = f"{path}/prefixItems"
    if schema.get("items", False) is not False:
        raise GrammarError(
            f"{where} with 'items' (more items after the tuple) is not supported: "
            "ggrun produces exactly the prefixItems; set 'items': false"
        )
    if not tuple_:
        raise GrammarError(f"{where} is empty: give at least one item schema")
    lo, hi = schema.get("minItems", 0), schema.get("maxItems", len(tuple_))
    if not lo <= len(tuple_) <= hi:
        raise GrammarError(
            f"{where} holds {len(tuple_)} items, outside minItems/maxItems [{lo}, {hi}]"
        )


def schema_constraint(schema: Any) -> Constraint:
    """A constraint from a JSON Schema (a dict, never a path) or a pydantic model class."""
    model_class = None
    if isinstance(schema, type) and hasattr(schema, "model_json_schema"):
        model_class, schema = schema, schema.model_json_schema()
    if not isinstance(schema, dict):
        raise GrammarError("a schema must be a JSON object (or a pydantic model class)")
    check_size(schema)
    import jsonschema

    from ggrun.schema_gbnf import schema_to_gbnf

    check_schema(schema)  # first: its messages say what ggrun cannot do, and why
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as e:
        raise GrammarError(f"invalid JSON Schema: {e.message}") from None
    try:
        grammar = schema_to_gbnf(schema)
    except GrammarError:
        raise
    except Exception as e:  # noqa: BLE001 - the converter raises plain exceptions
        raise GrammarError(f"cannot turn the schema into a grammar: {e}") from None
    # llama-cpp-python's port lets raw control characters into strings, which JSON
    # forbids; upstream's json-schema-to-grammar excludes them. Restore upstream's rule.
    grammar = grammar.replace('char ::= [^"\\\\] ', 'char ::= [^"\\\\\\x7F\\x00-\\x1F] ')
    if len(grammar) > MAX_GRAMMAR:
        raise GrammarError(f"the schema makes a grammar of more than {MAX_GRAMMAR} characters")
    return Constraint(grammar, "schema", schema, model_class)


MAX_FILE_BYTES = 4 << 20  # a schema or grammar file


def _read(path: str, what: str) -> str:
    """A regular file of at most :data:`MAX_FILE_BYTES`, as UTF-8 text."""
    return read_text(Path(path).expanduser(), what=what, limit=MAX_FILE_BYTES, error=GrammarError)


def load_schema(value: str | Path) -> Any:
    """Inline JSON, or the path of a JSON file."""
    text = str(value).strip()
    if not text.startswith("{"):
        text = _read(text, "schema")
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as e:
        raise GrammarError(f"the schema is not valid JSON: {str(e)[:200]}") from None


def json_constraint() -> Constraint:
    from llama_cpp.llama_grammar import JSON_GBNF

    return Constraint(JSON_GBNF, "json")


MAX_RULES = 5000  # rules in a GBNF grammar
MAX_NESTING = 64  # parentheses in a GBNF grammar
_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "\\": "\\", '"': '"', "[": "[", "]": "]", "-": "-"}
_HEX = {"x": 2, "u": 4, "U": 8}


def _char(text: str, i: int) -> tuple[str, int]:
    """One (possibly escaped) character of a GBNF literal or class at ``i``; the next index."""
    if text[i] != "\\" or i + 1 >= len(text):
        return text[i], i + 1
    kind = text[i + 1]
    if kind in _HEX:
        digits = text[i + 2 : i + 2 + _HEX[kind]]
        try:
            return chr(int(digits, 16)), i + 2 + _HEX[kind]
        except (ValueError, OverflowError):
            raise GrammarError(f"invalid grammar: bad escape \\{kind}{digits}") from None
    return _ESCAPES.get(kind, kind), i + 2


def check_gbnf(text: str) -> None:
    """Refuse, before llama.cpp parses it, a GBNF grammar that is too big, nested too
    deeply for its recursive parser, or that needs a NUL character (llama.cpp treats a
    NUL as the end of a token, so no token can ever produce one)."""
    if len(text) > MAX_GRAMMAR:
        raise GrammarError(f"the grammar is longer than {MAX_GRAMMAR} characters")
    if text.count("::=") > MAX_RULES:
        raise GrammarError(f"the grammar has more than {MAX_RULES} rules")
    i, depth, n = 0, 0, len(text)
    while i < n:
        c = text[i]
        if c == "#":
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif c == '"':
            i += 1
            while i < n and text[i] != '"':
                ch, i = _char(text, i)
                if ch == "\0":
                    raise GrammarError(
                        "the grammar needs a NUL character (\\x00), which no token can produce"
                    )
            i += 1
        elif c == "[":
            i += 1
            negated = i < n and text[i] == "^"
            chars: set[str] = set()
            while i < n and text[i] != "]":
                ch, i = _char(text, i)
                chars.add(ch)
            i += 1
            if not negated and chars and chars <= {"\0", "-"} and "\0" in chars:
                raise GrammarError(
                    "the grammar has a character class that matches only NUL (\\x00), "
                    "which no token can produce"
                )
        else:
            depth += c == "("
            depth -= c == ")"
            if depth > MAX_NESTING:
                raise GrammarError(f"the grammar nests parentheses deeper than {MAX_NESTING}")
            i += 1


def read_grammar(path: str | Path) -> str:
    """The text of a GBNF grammar file (the CLI's ``--grammar FILE``)."""
    return _read(str(path), "grammar")


def format_constraint(fmt: str, columns: list[str] | None = None) -> Constraint:
    """``csv``, ``yaml`` or ``xml`` from ``presets/grammars``; CSV may fix its header."""
    from ggrun.presets import presets_dir

    path = presets_dir() / FORMATS_DIR / f"{fmt}.gbnf"
    if fmt not in ("csv", "yaml", "xml") or not path.exists():
        raise GrammarError(f"unknown format {fmt!r} (choose csv, yaml or xml)")
    grammar = read_text(path, what="grammar", limit=MAX_FILE_BYTES, error=GrammarError)
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


def check_result(result: Any, constraint: Constraint | None) -> Any:
    """Parse a constrained result into ``result.data``; a cut-off one is an error, never
    passed off as valid (nor a result whose tool calls were cut off or invalid)."""
    if result.error is not None:
        if result.redraw:  # a check no grammar holds (another draw may pass it)
            raise SchemaMismatch(result.error)
        if result.finish_reason == "length":
            raise IncompleteOutput(result.error, result)
        raise GrammarError(result.error)
    if constraint is None:
        return result
    if result.finish_reason == "length":
        raise IncompleteOutput(
            f"the output was cut off after {result.completion_tokens} tokens "
            "(finish_reason=length) before it was complete; raise max_tokens",
            result,
        )
    result.data = constraint.parse(result.text)
    return result
