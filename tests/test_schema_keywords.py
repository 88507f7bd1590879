"""JSON Schema as Pydantic writes it: integer bounds and formats in the grammar
(:mod:`ggrun.schema_gbnf`), the rest validated (:class:`SchemaMismatch`).

The grammar tests need no model: a small reader of the GBNF that ggrun writes turns a
rule into a Python regex (membership, checked exhaustively on windows of integers) and
into random strings (each must pass jsonschema's format checker and pydantic's type).
The model tests then run the same grammars through llama.cpp on SmolLM2.
"""

from __future__ import annotations

import datetime
import json
import random
import re
from ipaddress import IPv4Address, IPv6Address
from typing import Any
from uuid import UUID

import jsonschema
import pytest
from pydantic import BaseModel, EmailStr, Field, HttpUrl, TypeAdapter

from ggrun import redraw
from ggrun.errors import GrammarError, SchemaMismatch
from ggrun.schema_gbnf import FORMATS, INT_LIMIT, int_bounds, int_range, schema_to_gbnf
from ggrun.structured import check_value, schema_constraint

# ------------------------------------------------------------------ a GBNF reader

Node = tuple[Any, ...]
TOKEN = re.compile(
    r'\s*(?:(?P<lit>"(?:\\.|[^"\\])*")|(?P<cls>\[(?:\\.|[^\]\\])*\])|(?P<name>[a-zA-Z0-9-]+)'
    r"|(?P<rep>\{\d*(?:,\d*)?\})|(?P<op>[()|?*+]))"
)


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


def _class(body: str) -> list[str]:
    chars, i = [], 0
    items = re.findall(r"\\.|.", body)
    while i < len(items):
        a = _unescape(items[i])
        if i + 2 < len(items) and items[i + 1] == "-":
            chars += [chr(c) for c in range(ord(a), ord(_unescape(items[i + 2])) + 1)]
            i += 3
        else:
            chars.append(a)
            i += 1
    return chars


def parse_gbnf(text: str) -> dict[str, Node]:
    """The rules of a grammar (the subset ggrun's schema grammars use)."""
    rules = {}
    for line in text.strip().splitlines():
        name, body = line.split(" ::= ", 1)
        tokens = [(m.lastgroup, m.group(m.lastgroup)) for m in TOKEN.finditer(body)]
        node, rest = _alt(tokens)
        assert not rest, (name, rest)
        rules[name] = node
    return rules


def _alt(tokens: list[Any]) -> tuple[Node, list[Any]]:
    seqs = []
    while True:
        seq, tokens = _seq(tokens)
        seqs.append(seq)
        if not tokens or tokens[0] != ("op", "|"):
            return ("alt", seqs), tokens
        tokens = tokens[1:]


def _seq(tokens: list[Any]) -> tuple[Node, list[Any]]:
    items: list[Node] = []
    while tokens and tokens[0] not in (("op", "|"), ("op", ")")):
        kind, value = tokens[0]
        tokens = tokens[1:]
        if kind == "lit":
            node: Node = ("lit", _unescape(value[1:-1]))
        elif kind == "cls":
            assert not value.startswith("[^")
            node = ("cls", _class(value[1:-1]))
        elif kind == "name":
            node = ("ref", value)
        else:
            assert value == "(", value
            node, tokens = _alt(tokens)
            assert tokens[0] == ("op", ")")
            tokens = tokens[1:]
        if tokens and (tokens[0][0] == "rep" or tokens[0][1] in ("?", "*", "+")):
            op = tokens[0][1]
            tokens = tokens[1:]
            if op.startswith("{"):
                lo, _, hi = op[1:-1].partition(",")
                top = int(hi) if hi else None if "," in op else int(lo)
                node = ("rep", node, int(lo or 0), top)
            else:
                node = ("rep", node, int(op == "+"), 1 if op == "?" else None)
        items.append(node)
    return ("seq", items), tokens


def to_regex(node: Node, rules: dict[str, Node]) -> str:
    kind = node[0]
    if kind == "lit":
        return re.escape(node[1])
    if kind == "cls":
        return "[" + "".join(re.escape(c) for c in node[1]) + "]"
    if kind == "ref":
        return to_regex(rules[node[1]], rules)
    if kind == "seq":
        return "".join(f"(?:{to_regex(n, rules)})" for n in node[1])
    if kind == "alt":
        return "|".join(to_regex(n, rules) for n in node[1])
    hi = "" if node[3] is None else node[3]
    return f"(?:{to_regex(node[1], rules)}){{{node[2]},{hi}}}"


def sample(node: Node, rules: dict[str, Node], rng: random.Random) -> str:
    kind = node[0]
    if kind == "lit":
        return str(node[1])
    if kind == "cls":
        return rng.choice(node[1])
    if kind == "ref":
        return sample(rules[node[1]], rules, rng)
    if kind == "seq":
        return "".join(sample(n, rules, rng) for n in node[1])
    if kind == "alt":
        return sample(rng.choice(node[1]), rules, rng)
    lo, hi = node[2], node[3] if node[3] is not None else node[2] + 3
    n = rng.choice([lo, hi, rng.randint(lo, hi)])  # the extremes often
    return "".join(sample(node[1], rules, rng) for _ in range(n))


def longest(node: Node, rules: dict[str, Node]) -> int:
    kind = node[0]
    if kind in ("lit",):
        return len(node[1])
    if kind == "cls":
        return 1
    if kind == "ref":
        return longest(rules[node[1]], rules)
    if kind == "seq":
        return sum(longest(n, rules) for n in node[1])
    if kind == "alt":
        return max(longest(n, rules) for n in node[1])
    assert node[3] is not None, "unbounded"
    return int(node[3]) * longest(node[1], rules)


def range_regex(lo: int | None, hi: int | None) -> re.Pattern[str]:
    rules = parse_gbnf(f"root ::= {int_range(lo, hi)}")
    return re.compile(to_regex(rules["root"], rules))


def format_rules(fmt: str) -> tuple[dict[str, Node], Node]:
    """The rules of a one-string schema with this format; the string's content."""
    rules = parse_gbnf(schema_to_gbnf({"type": "string", "format": fmt}))
    return rules, ("ref", f"fmt-{fmt}-string")


# ------------------------------------------------------------------ integer ranges


def _window(lo: int | None, hi: int | None) -> set[int]:
    """Every integer within 130 of a bound or of 0, and a few far beyond."""
    points = {p for p in (lo, hi, 0) if p is not None}
    near = {n for p in points for n in range(p - 130, p + 130)}
    return near | {10**k - 1 for k in range(1, 12)} | {1 - 10**k for k in range(1, 12)}


def test_integer_ranges_are_exact() -> None:
    """For random ranges (small and large, negative, open at either end), the rule
    matches exactly the canonical decimals of the integers within it."""
    rng = random.Random(27)
    for _ in range(250):
        scale = 10 ** rng.randint(0, 7)
        lo, hi = sorted(rng.randint(-scale, scale) for _ in range(2))
        lo_, hi_ = rng.choice([(lo, hi), (lo, hi), (None, hi), (lo, None)])
        pattern = range_regex(lo_, hi_)
        for n in _window(lo_, hi_):
            inside = (lo_ is None or lo_ <= n) and (hi_ is None or n <= hi_)
            assert bool(pattern.fullmatch(str(n))) == inside, (lo_, hi_, n)
            assert not pattern.fullmatch(f"0{abs(n)}"), (lo_, hi_, n)  # no leading zero
        assert not pattern.fullmatch("-0")


@pytest.mark.parametrize(
    ("lo", "hi"), [(0, 0), (-1, -1), (0, 9), (1, 9), (0, 150), (-150, 0), (-(10**9), 10**9)]
)
def test_integer_range_edges(lo: int, hi: int) -> None:
    pattern = range_regex(lo, hi)
    for n in _window(lo, hi):
        assert bool(pattern.fullmatch(str(n))) == (lo <= n <= hi), n


def test_open_ranges_keep_the_converters_digit_limit() -> None:
    whole = range_regex(None, None)
    for n in (INT_LIMIT, -INT_LIMIT, 0, 7, -7, 10**15):
        assert whole.fullmatch(str(n))
    for n in (INT_LIMIT + 1, -INT_LIMIT - 1):
        assert not whole.fullmatch(str(n))
    assert range_regex(-5, None).fullmatch(str(INT_LIMIT))
    assert not range_regex(-5, None).fullmatch("-6")


@pytest.mark.parametrize(
    ("schema", "bounds"),
    [
        ({"minimum": 0, "maximum": 150}, (0, 150)),
        ({"exclusiveMinimum": 0, "exclusiveMaximum": 10}, (1, 9)),
        ({"minimum": 0.5, "maximum": 9.5}, (1, 9)),
        ({"exclusiveMinimum": -2.5, "exclusiveMaximum": 2.5}, (-2, 2)),
        ({"exclusiveMinimum": -3, "minimum": -5}, (-2, None)),
        ({"maximum": -4}, (None, -4)),
    ],
)
def test_integer_bounds(schema: dict[str, Any], bounds: tuple[Any, Any]) -> None:
    assert int_bounds(schema) == bounds


def test_an_empty_integer_range_is_refused() -> None:
    with pytest.raises(GrammarError, match="no integer lies within the bounds"):
        schema_constraint({"type": "integer", "minimum": 5, "maximum": 3})
    with pytest.raises(GrammarError, match="no integer"):
        schema_constraint({"type": "integer", "exclusiveMinimum": 1e30})


# ------------------------------------------------------------------ formats

CHECKER = jsonschema.Draft202012Validator.FORMAT_CHECKER
PYDANTIC = {
    "email": EmailStr,
    "uri": HttpUrl,
    "uuid": UUID,
    "ipv4": IPv4Address,
    "ipv6": IPv6Address,
    "date": datetime.date,
    "time": datetime.time,
    "date-time": datetime.datetime,
}
LONGEST = {"uri": 681, "email": 254, "hostname": 253, "ipv6": 39, "ipv4": 15, "uuid": 36}


def test_every_format_checker_is_active() -> None:
    """jsonschema checks a format only when its helper package is installed (fqdn,
    rfc3986-validator, rfc3339-validator: ggrun's dependencies)."""
    assert set(FORMATS) <= set(CHECKER.checkers)


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_every_string_of_a_format_passes(fmt: str) -> None:
    rules, content = format_rules(fmt)
    rng = random.Random(fmt)
    adapter = TypeAdapter(PYDANTIC[fmt]) if fmt in PYDANTIC else None
    for _ in range(1500):
        text = sample(content, rules, rng)
        value = json.loads(text)
        assert CHECKER.conforms(value, fmt), (fmt, value)
        check_value(value, {"type": "string", "format": fmt})
        if adapter is not None:
            adapter.validate_python(value)
    if fmt in LONGEST:
        assert longest(content, rules) - 3 <= LONGEST[fmt]  # the quotes and a space aside


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("2024-02-29", True),
        ("2000-02-29", True),
        ("1900-02-29", False),
        ("2023-02-29", False),
        ("2023-04-31", False),
        ("2023-12-31", True),
        ("0000-01-01", False),
    ],
)
def test_dates_are_exact(text: str, ok: bool) -> None:
    rules, content = format_rules("date")
    assert bool(re.fullmatch(to_regex(content, rules), f'"{text}"')) == ok


def test_uri_is_held_with_httpurls_lengths() -> None:
    """pydantic's HttpUrl: format uri with minLength 1, maxLength 2083; the format's
    own lengths fit, so the grammar holds all of it."""
    schema = TypeAdapter(HttpUrl).json_schema()
    assert schema.get("maxLength", 2083) >= LONGEST["uri"]
    assert "fmt-uri-string" in schema_constraint(schema).grammar


# ------------------------------------------------------------------ pydantic schemas


class Person(BaseModel):
    age: int = Field(ge=0, le=150)
    score: float = Field(gt=0.5)
    email: EmailStr
    site: HttpUrl
    id: UUID
    tags: set[str]
    counts: dict[str, int]
    ip4: IPv4Address
    ip6: IPv6Address
    born: datetime.date
    seen: datetime.datetime | None = None
    keyed: dict[UUID, int] = {}
    level: int | None = Field(default=None, ge=-5, lt=5, multiple_of=2)


def test_pydantic_schemas_are_accepted() -> None:
    c = schema_constraint(Person)
    assert c.model_class is Person
    assert "fmt-email-string" in c.grammar and "fmt-ipv6-string" in c.grammar


def test_a_map_with_property_names_writes_its_keys() -> None:
    grammar = schema_constraint({"type": "object", "propertyNames": {"format": "uuid"}}).grammar
    assert re.search(r"key ::= fmt-uuid-string", grammar)


# ------------------------------------------------------------------ refused, validated


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        ({"not": {"type": "string"}}, "'not'"),
        ({"if": {}, "then": {}}, "'if'"),
        ({"type": "object", "patternProperties": {"a": {}}}, "'patternProperties'"),
        ({"type": "array", "contains": {"type": "integer"}}, "'contains'"),
        ({"$ref": "http://example.com/s.json"}, "only local"),
        ({"type": "string", "format": "binary"}, "format 'binary'.*supported: date"),
        ({"type": "object", "propertyNames": {"not": {}}}, "'not' at /propertyNames"),
        ({"type": "integer", "minimum": "3"}, "minimum .* must be a number"),
        ({"type": "number", "multipleOf": 0}, "multipleOf"),
        ({"type": "array", "uniqueItems": 1}, "uniqueItems"),
    ],
)
def test_still_refused(schema: dict[str, Any], message: str) -> None:
    with pytest.raises(GrammarError, match=message):
        schema_constraint(schema)


@pytest.mark.parametrize(
    ("schema", "text"),
    [
        ({"type": "array", "items": {"type": "integer"}, "uniqueItems": True}, "[1, 2, 1]"),
        ({"type": "integer", "multipleOf": 3}, "7"),
        ({"type": "number", "exclusiveMinimum": 0.5}, "0.5"),
        ({"type": "object", "propertyNames": {"maxLength": 2}}, '{"abc": 1}'),
        ({"type": "string", "format": "email"}, '"not an email"'),
    ],
)
def test_validation_raises_schema_mismatch(schema: dict[str, Any], text: str) -> None:
    c = schema_constraint(schema)
    with pytest.raises(SchemaMismatch, match="does not match the schema"):
        c.parse(text)


def test_a_model_check_is_a_schema_mismatch() -> None:
    class Small(BaseModel):
        email: EmailStr

    # jsonschema's email check is "@"; pydantic's EmailStr wants a domain
    with pytest.raises(SchemaMismatch, match="does not fit the model"):
        schema_constraint(Small).parse('{"email": "a@b"}')


# ------------------------------------------------------------------ on a real model

FIELDS = {
    "age": {"type": "integer", "minimum": 0, "maximum": 150},
    "delta": {"type": "integer", "exclusiveMinimum": -20, "exclusiveMaximum": -3},
    "big": {"type": "integer", "minimum": 1000},
    **{fmt: {"type": "string", "format": fmt} for fmt in sorted(FORMATS)},
}


@pytest.fixture
def no_redraws(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the grammar holds must hold on the first draw."""
    monkeypatch.setattr(redraw, "MAX_REDRAWS", 0)


@pytest.mark.parametrize("field", sorted(FIELDS))
def test_the_model_draws_valid_values(smol: Any, no_redraws: None, field: str) -> None:
    schema = {
        "type": "object",
        "properties": {field: FIELDS[field]},
        "required": [field],
        "additionalProperties": False,
    }
    for seed in range(2):
        r = smol.generate(
            f"A JSON object with a {field}:", schema=schema, temperature=1.0, seed=seed,
            max_tokens=400,
        )  # fmt: skip
        check_value(r.data, schema)
        if field in PYDANTIC:
            TypeAdapter(PYDANTIC[field]).validate_python(r.data[field])


def test_the_model_fills_a_pydantic_model(smol: Any, no_redraws: None) -> None:
    class Contact(BaseModel):
        age: int = Field(ge=0, le=150)
        id: UUID
        email: EmailStr
        ip: IPv4Address

    for seed in range(2):
        r = smol.generate(
            "A contact as JSON:", schema=Contact, temperature=1.0, seed=seed, max_tokens=300
        )
        assert isinstance(r.data, Contact) and 0 <= r.data.age <= 150
