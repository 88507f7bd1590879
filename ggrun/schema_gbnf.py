"""JSON Schema to GBNF: llama-cpp-python's converter, plus what it leaves out.

:class:`Converter` subclasses llama-cpp-python's ``SchemaConverter`` and overrides only
``visit``, for the cases the converter ignores or gets wrong; everything else is the
converter's own:

- integer bounds (``minimum``, ``maximum``, ``exclusiveMinimum``, ``exclusiveMaximum``,
  one end or both, negative too) become a digit-by-digit rule, :func:`int_range`, within
  the converter's own limit of :data:`MAX_INT_DIGITS` digits;
- a ``number`` whose lower bound is not negative is written without a sign (the bound
  itself is validated);
- the string formats of :data:`FORMATS`, each a rule whose every string passes
  jsonschema's ``FormatChecker`` (and pydantic's stricter types: ``EmailStr``,
  ``HttpUrl``, ``IPv4Address``, ...). They are deliberately narrower than the RFCs:
  an email is ``local@domain.tld`` in ASCII, a uri an ``http(s)://`` URL, a date's year
  within 1000-2999 (leap days exact);
- a ``type`` list keeps the other keywords in each branch (the converter drops them);
- a map with ``propertyNames`` and no fixed ``properties`` (pydantic's ``dict[K, V]``)
  writes its keys by that schema.

Everything a grammar cannot hold (``multipleOf``, number bounds, ``uniqueItems``, other
``propertyNames``) is left to validation (:meth:`ggrun.structured.Constraint.parse`).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from llama_cpp.llama_grammar import PRIMITIVE_RULES, RESERVED_NAMES, SchemaConverter

from ggrun.errors import GrammarError

MAX_INT_DIGITS = 16  # the converter's integral-part: a digit and up to 15 more
INT_LIMIT = 10**MAX_INT_DIGITS - 1


# ------------------------------------------------------------------ integer ranges


def _digits(n: int) -> str:
    return f"[0-9]{{{n}}}" if n > 1 else "[0-9]" if n else ""


def _span(a: str, b: str) -> str:
    return f'"{a}"' if a == b else f"[{a}-{b}]"


def _seq(*parts: str) -> str:
    return re.sub(r'"([0-9-]*)" "([0-9]*)"', r'"\1\2"', " ".join(p for p in parts if p))


def _group(alts: list[str]) -> str:
    return alts[0] if len(alts) == 1 else "(" + " | ".join(alts) + ")"


def _same_length(lo: str, hi: str) -> list[str]:
    """Alternatives for the digit strings of one length from ``lo`` to ``hi``."""
    i = 0
    while i < len(lo) and lo[i] == hi[i]:
        i += 1
    if i == len(lo):
        return [f'"{lo}"']
    rest = len(lo) - i - 1
    a, b, lo_tail, hi_tail = lo[i], hi[i], lo[i + 1 :], hi[i + 1 :]
    lo_whole, hi_whole = lo_tail == "0" * rest, hi_tail == "9" * rest
    first = a if lo_whole else chr(ord(a) + 1)
    last = b if hi_whole else chr(ord(b) - 1)
    alts = []
    if not lo_whole:
        alts.append(_seq(f'"{a}"', _group(_same_length(lo_tail, "9" * rest))))
    if first <= last:
        alts.append(_seq(_span(first, last), _digits(rest)))
    if not hi_whole:
        alts.append(_seq(f'"{b}"', _group(_same_length("0" * rest, hi_tail))))
    return [_seq(f'"{lo[:i]}"', _group(alts))] if i else alts


def _natural(lo: int, hi: int) -> list[str]:
    """Alternatives for the canonical decimals of ``lo..hi`` (``0 <= lo <= hi``)."""
    alts: list[str] = []
    if lo == 0:
        alts.append('"0"')
        lo = 1
    whole: list[int] = []  # lengths wholly inside the range, merged into one alternative

    def flush() -> None:
        if whole:
            n, m = whole[0] - 1, whole[-1] - 1
            alts.append(_seq("[1-9]", f"[0-9]{{{n},{m}}}" if n != m else _digits(n)))
            whole.clear()

    for length in range(len(str(lo)), len(str(hi)) + 1):
        a, b = max(lo, 10 ** (length - 1)), min(hi, 10**length - 1)
        if a > b:
            continue
        if a == 10 ** (length - 1) and b == 10**length - 1:
            whole.append(length)
            continue
        flush()
        alts.extend(_same_length(str(a), str(b)))
    flush()
    return alts


def int_range(lo: int | None, hi: int | None) -> str:
    """A GBNF expression for the integers in ``[lo, hi]`` in canonical decimal (no
    leading zeros, no ``-0``); ``None`` is an open end, and both ends are kept within
    ``±INT_LIMIT``. Raise :class:`GrammarError` when no such integer exists."""
    lo = -INT_LIMIT if lo is None else max(lo, -INT_LIMIT)
    hi = INT_LIMIT if hi is None else min(hi, INT_LIMIT)
    if lo > hi:
        raise GrammarError(
            f"no integer lies within the bounds (integers have at most {MAX_INT_DIGITS} digits)"
        )
    alts = []
    if lo < 0:
        alts.append(_seq('"-"', _group(_natural(max(1, -hi), -lo))))
    if hi >= 0:
        alts.extend(_natural(max(lo, 0), hi))
    return _group(alts)


def int_bounds(schema: dict[str, Any]) -> tuple[int | None, int | None]:
    """The inclusive integer bounds that a schema's (finite, numeric) bound keywords mean."""
    lo = hi = None
    if "minimum" in schema:
        lo = math.ceil(schema["minimum"])
    if "exclusiveMinimum" in schema:
        x = math.floor(schema["exclusiveMinimum"]) + 1
        lo = x if lo is None else max(lo, x)
    if "maximum" in schema:
        hi = math.floor(schema["maximum"])
    if "exclusiveMaximum" in schema:
        x = math.ceil(schema["exclusiveMaximum"]) - 1
        hi = x if hi is None else min(hi, x)
    return lo, hi


BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")


# ------------------------------------------------------------------ string formats

# Helper rules the formats share; ``<name>`` refers to another rule of this table.
PARTS: dict[str, str] = {
    "fmt-label": '[a-z0-9]{1,20} ("-" [a-z0-9]{1,20}){0,2}',  # 1-62 chars, no "--"
    "fmt-octet": int_range(0, 255),
    "fmt-h16": "[0-9a-f]{1,4}",
    "fmt-day28": '"0" [1-9] | "1" [0-9] | "2" [0-8]',
    "fmt-year": "[12] [0-9]{3}",
    "fmt-leap-year": (  # divisible by 4, and centuries only by 400
        '[12] [0-9] ("0" [48] | [2468] [048] | [13579] [26])'
        ' | ("12" | "16" | "20" | "24" | "28") "00"'
    ),
    "fmt-date": (
        '<fmt-year> "-" ("0" [13578] | "1" [02]) "-" (<fmt-day28> | "29" | "30" | "31")'
        ' | <fmt-year> "-" ("0" [469] | "11") "-" (<fmt-day28> | "29" | "30")'
        ' | <fmt-year> "-02-" <fmt-day28> | <fmt-leap-year> "-02-29"'
    ),
    "fmt-hour": '[01] [0-9] | "2" [0-3]',
    "fmt-time": (
        '<fmt-hour> ":" [0-5] [0-9] ":" [0-5] [0-9] ("." [0-9]{3})?'
        ' ("Z" | [+-] <fmt-hour> ":" [0-5] [0-9])'
    ),
    "fmt-pchar": "[a-zA-Z0-9._~!$&'()*+,;=:@-]",
    "fmt-qchar": "[a-zA-Z0-9._~!$&'()*+,;=:@/?-]",
}


def _ipv6() -> str:
    """Eight groups, or fewer around one "::" (RFC 4291 2.2, without an IPv4 tail)."""

    def groups(lo: int, hi: int) -> str:  # lo..hi groups joined by ":", hi >= 1
        more = "" if lo == hi == 2 else f"{{{hi - 1}}}" if lo == hi else f"{{0,{hi - 1}}}"
        return "<fmt-h16>" + (f' (":" <fmt-h16>){more}' if hi > 1 else "")

    alts = [groups(8, 8)]
    for left in range(8):  # groups before "::", at most 7 in all around it
        head = groups(left, left) + " " if left else ""
        tail = f" ({groups(1, 7 - left)})?" if left < 7 else ""
        alts.append(f'{head}"::"{tail}')
    return " | ".join(alts)


# name -> GBNF of the string's content (between the quotes); every string it matches
# passes jsonschema's FormatChecker for that format, and the pydantic type behind it.
FORMATS: dict[str, str] = {
    "date": "<fmt-date>",
    "time": "<fmt-time>",
    "date-time": '<fmt-date> "T" <fmt-time>',
    "uuid": ' "-" '.join(f"[0-9a-f]{{{n}}}" for n in (8, 4, 4, 4, 12)),
    "ipv4": '<fmt-octet> ("." <fmt-octet>){3}',
    "ipv6": _ipv6(),
    "hostname": '<fmt-label> ("." <fmt-label>){0,3}',  # at most 251 characters
    "email": (  # at most 197 characters, a top-level domain email_validator accepts
        '[a-zA-Z0-9_+-]{1,32} ("." [a-zA-Z0-9_+-]{1,31})? "@"'
        ' ([a-z0-9]{1,20} ("-" [a-z0-9]{1,20})? "."){1,3}'
        ' ([a-z]{2,3} | "info" | "name" | "tech" | "email" | "cloud" | "online" | "store")'
    ),
    "uri": (  # at most 681 characters (pydantic's HttpUrl allows 2083)
        '"http" "s"? "://" (<fmt-label> "."){0,3} [a-z] [a-z0-9]{0,19}'
        f' (":" {int_range(1, 65535)})? ("/" <fmt-pchar>{{0,32}}){{0,8}}'
        ' ("?" <fmt-qchar>{0,128})? ("#" <fmt-qchar>{0,64})?'
    ),
}

_REF = re.compile(r"<([a-z0-9-]+)>")


class Converter(SchemaConverter):  # type: ignore[misc]
    """llama-cpp-python's converter with integer bounds, unsigned numbers and formats."""

    def __init__(self) -> None:
        super().__init__(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)

    def _part(self, name: str) -> str:
        """Add a rule of :data:`PARTS` (and those it refers to); its name in the grammar."""
        body = _REF.sub(lambda m: self._part(m.group(1)), PARTS[name])
        return str(self._add_rule(name, body))

    def _format(self, fmt: str) -> str:
        body = _REF.sub(lambda m: self._part(m.group(1)), FORMATS[fmt])
        return str(self._add_rule(f"fmt-{fmt}-string", f'"\\"" ({body}) "\\"" space'))

    def visit(self, schema: Any, name: str) -> Any:
        kind = schema.get("type")
        rule_name = name + "-" if name in RESERVED_NAMES else name or "root"
        if any(k in schema for k in ("$ref", "oneOf", "anyOf")):
            pass  # the converter's own cases come first, as in its visit
        elif isinstance(kind, list):  # keep each type's keywords (the converter drops them)
            alts = [{**schema, "type": t} for t in kind]
            return self._add_rule(rule_name, self._generate_union_rule(name, alts))
        elif "const" in schema or "enum" in schema:
            pass
        elif kind == "integer" and any(k in schema for k in BOUNDS):
            lo, hi = int_bounds(schema)
            try:
                body = int_range(lo, hi)
            except GrammarError as e:
                raise GrammarError(f"{e} of integer {name or '(the root)'}") from None
            return self._add_rule(rule_name, f"{body} space")
        elif kind == "number" and _non_negative(schema):
            for part in ("integral-part", "decimal-part"):
                self._add_primitive(part, PRIMITIVE_RULES[part])
            return self._add_rule(
                rule_name, 'integral-part ("." decimal-part)? ([eE] [-+]? integral-part)? space'
            )
        elif kind in (None, "string") and "pattern" not in schema and schema.get("format"):
            return self._add_rule(rule_name, self._format(schema["format"]))
        elif kind in (None, "object") and _keyed_map(schema):
            key = self.visit({**schema["propertyNames"], "type": "string"}, _sub(name, "key"))
            extra = schema.get("additionalProperties", True)
            value = self.visit({} if extra is True else extra, _sub(name, "value"))
            kv = self._add_rule(_sub(name, "entry"), f'{key} ":" space {value}')
            return self._add_rule(rule_name, f'"{{" space ({kv} ("," space {kv})*)? "}}" space')
        return super().visit(schema, name)


def _keyed_map(schema: dict[str, Any]) -> bool:
    """A map whose keys have a schema (pydantic's ``dict[K, V]``): no fixed properties,
    and keys the grammar can write as JSON strings."""
    keys = schema.get("propertyNames")
    if not isinstance(keys, dict) or schema.get("properties") or "allOf" in schema:
        return False
    if schema.get("additionalProperties", True) is False:
        return False
    values = keys.get("enum", []) + ([keys["const"]] if "const" in keys else [])
    return all(isinstance(v, str) for v in values) and keys.get("type", "string") == "string"


def _non_negative(schema: dict[str, Any]) -> bool:
    return any(schema.get(k, -1) >= 0 for k in ("minimum", "exclusiveMinimum"))


def schema_to_gbnf(schema: dict[str, Any]) -> str:
    """The GBNF grammar of a (checked) JSON Schema."""
    converter = Converter()
    resolved = converter.resolve_refs(json.loads(json.dumps(schema)), "input")
    converter.visit(resolved, "")
    return str(converter.format_grammar())


def _sub(name: str, part: str) -> str:
    return f"{name}-{part}" if name else part
