"""Structured output on real models: JSON, schemas, grammars, formats, tasks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ggrun.cli.app import app
from ggrun.engine import LoadConfig, Model
from ggrun.errors import GrammarError, PresetError
from ggrun.structured import IncompleteOutput

FLAT = {
    "type": "object",
    "properties": {"title": {"type": "string", "maxLength": 60}, "year": {"type": "integer"}},
    "required": ["title", "year"],
    "additionalProperties": False,
}
NESTED = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 40},
        "address": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 30},
                "country": {"type": "string", "maxLength": 30},
            },
            "required": ["city", "country"],
            "additionalProperties": False,
        },
        "skills": {
            "type": "array",
            "items": {"type": "string", "maxLength": 20},
            "minItems": 1,
            "maxItems": 3,
        },
    },
    "required": ["name", "address", "skills"],
    "additionalProperties": False,
}
ENUM = {
    "type": "object",
    "properties": {"label": {"enum": ["bug", "feature", "question"]}},
    "required": ["label"],
    "additionalProperties": False,
}
PROMPTS = [
    "Tell me about the film Casablanca.",
    "Describe a software engineer from Lyon.",
    "My app crashes when I click save.",
    "Could you add a dark mode?",
    "How do I install the package?",
    "Write something about the Eiffel Tower.",
    "A nurse who lives in Osaka and speaks three languages.",
    "The login button does nothing on Firefox.",
    "Please support exporting to PDF.",
    "What does the --verbose flag do?",
]


@pytest.mark.parametrize("schema", [FLAT, NESTED, ENUM], ids=["flat", "nested", "enum"])
def test_ten_prompts_validate(qwen: Model, schema: dict) -> None:  # type: ignore[type-arg]
    import jsonschema

    for prompt in PROMPTS:
        r = qwen.chat(
            [{"role": "user", "content": prompt}], schema=schema, max_tokens=160, temperature=0
        )
        jsonschema.validate(r.data, schema)
        assert json.loads(r.text) == r.data


def test_json_mode_and_schema(qwen: Model) -> None:
    msgs = [{"role": "user", "content": "Give a JSON object describing a cat."}]
    r = qwen.chat(msgs, json=True, max_tokens=200, temperature=0)
    assert isinstance(r.data, (dict, list))
    r3 = qwen.chat(msgs, schema=ENUM, temperature=0)
    assert r3.data["label"] in ENUM["properties"]["label"]["enum"]


def test_pydantic_schema(qwen: Model) -> None:
    pydantic = pytest.importorskip("pydantic")

    class City(pydantic.BaseModel):  # type: ignore[name-defined,misc]
        name: str
        population: int

    r = qwen.generate(
        "A JSON object for the city of Paris:", schema=City, max_tokens=80, temperature=0
    )
    assert isinstance(r.data, City) and r.data.name


def test_cut_off_output_is_an_error(qwen: Model) -> None:
    with pytest.raises(IncompleteOutput, match="finish_reason=length") as err:
        qwen.chat(
            [{"role": "user", "content": "A JSON list of the numbers 1 to 100."}],
            json=True,
            max_tokens=8,
            temperature=0,
        )
    assert err.value.result.finish_reason == "length"


def test_guarantee_comes_from_the_grammar(tiny_model: Path) -> None:
    """A random-weights model writes noise, yet --json gives valid JSON or a length error.

    With a schema, noise can still break it in one way the grammar cannot see: byte tokens
    that are not valid UTF-8 (the grammar counts them as characters, the decoded text
    holds U+FFFD). ggrun then raises a GrammarError instead of returning the value.
    """
    import jsonschema

    valid = 0
    with Model(tiny_model, LoadConfig(n_ctx=512)) as m:
        for seed in range(5):
            try:
                r = m.generate("x", max_tokens=200, seed=seed, temperature=1.0, json=True)
                assert r.data is not None
                valid += 1
            except IncompleteOutput:
                pass
            try:
                r = m.generate("x", max_tokens=200, seed=seed, temperature=1.0, schema=NESTED)
                jsonschema.validate(r.data, NESTED)
                valid += 1
            except GrammarError as e:  # IncompleteOutput included
                assert "finish_reason=length" in str(e) or "\ufffd" in r.text or "schema" in str(e)
    assert valid >= 3


@pytest.mark.parametrize(
    ("fmt", "columns"), [("csv", None), ("csv", ["fruit", "colour"]), ("yaml", None), ("xml", None)]
)
def test_formats_parse(qwen: Model, fmt: str, columns: list[str] | None) -> None:
    import csv
    import io
    import xml.etree.ElementTree as ET

    import yaml

    ask = f"List three fruits and their colours. Reply in {fmt.upper()} only, nothing else."
    r = qwen.chat(
        [{"role": "user", "content": ask}],
        format=fmt,
        columns=columns,
        max_tokens=150,
        temperature=0,
    )
    if fmt == "csv":
        rows = list(csv.reader(io.StringIO(r.text)))
        assert len(rows) >= 2 and len({len(x) for x in rows}) == 1
        if columns:
            assert rows[0] == columns
    elif fmt == "yaml":
        assert isinstance(yaml.safe_load(r.text), dict)
    else:
        assert ET.fromstring(r.text).tag == "root"


def test_free_to_think_strict_to_answer(qwen: Model, smol_path: Path, tmp_path: Path) -> None:
    """A lazy grammar lets anything through until the thought ends, then only JSON."""
    from llama_cpp.llama_grammar import JSON_GBNF

    from ggrun import llama
    from ggrun.sampling import SamplingConfig
    from tests.helpers import QWEN3_TEMPLATE, rewrite_gguf

    (hello,) = qwen.tokenize("hello")
    params = llama.ContextParams(n_ctx=64, n_batch=64)
    with llama.Context(qwen.weights, params) as ctx, llama.Batch(8) as batch:
        batch.add(qwen.tokenize("Hi")[0], 0, 0, True)
        ctx.decode(batch)
        greedy = SamplingConfig(temperature=0, repeat_penalty=1.0)
        s = llama.Sampler(greedy, ctx, JSON_GBNF, lazy=True)
        try:
            ctx.logits(0)[hello] = 1e9  # the model wants prose
            assert s.sample(0) == hello  # thinking: free
            s.activate()  # the thought ended
            ctx.logits(0)[hello] = 1e9
            token = s.sample(0)
            assert token != hello
            assert qwen.detokenize([token]).strip()[:1] in ("", "{")  # blanks, then JSON
        finally:
            s.close()
    # and ggrun picks the lazy grammar only when the model may think
    p = rewrite_gguf(smol_path, tmp_path / "q3.gguf", template=QWEN3_TEMPLATE)
    with Model(p, LoadConfig(n_ctx=256)) as m:
        msgs = [{"role": "user", "content": "hi"}]
        assert m.may_think(m.format_chat(msgs, think=True), True)
        assert not m.may_think(m.format_chat(msgs, think=False), False)
    assert not qwen.may_think(qwen.format_chat(msgs), None)  # no <think> in its template


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        ({"type": "array", "contains": {"type": "integer"}}, "contains"),
        ({"type": "object", "patternProperties": {"a": {}}}, "patternProperties"),
        ({"type": "string", "format": "binary"}, "format 'binary'"),
        ({"type": "object", "properties": {"x": {"not": {}}}}, "'not' at /properties/x"),
        ({"type": 12}, "invalid JSON Schema"),
        ({"$ref": "http://example.com/s.json"}, "only local $ref"),
    ],
)
def test_bad_schemas(qwen: Model, schema: dict, message: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(GrammarError, match=message.replace("$", r"\$")):
        qwen.chat([{"role": "user", "content": "x"}], schema=schema)


@pytest.mark.parametrize(
    ("grammar", "message"),
    [
        ('root ::= "a" (\n', "invalid grammar"),
        ("root ::= undefined-rule\n", "invalid grammar"),
    ],
)
def test_broken_grammar(qwen: Model, grammar: str, message: str) -> None:
    with pytest.raises(GrammarError, match=message):
        qwen.chat([{"role": "user", "content": "x"}], grammar=grammar, max_tokens=4)


def test_sentiment_task(qwen: Model) -> None:
    r = qwen.run_task("sentiment", "I absolutely hated the service and will never return.")
    assert r.data == {"sentiment": "negative"}
    r = qwen.run_task("sentiment", "Wonderful! Best day of my life.")
    assert r.data == {"sentiment": "positive"}


def test_extract_contact_task(qwen: Model) -> None:
    r = qwen.run_task("extract-contact", "Write to Jane Roe (jane@roe.example) at Initech.")
    assert r.data["email"] == "jane@roe.example"
    assert set(r.data) == {"name", "email", "phone", "company"}


def test_bad_task_files(qwen: Model, tmp_path: Path) -> None:
    with pytest.raises(PresetError, match="unknown task 'nope'"):
        qwen.run_task("nope", "x")
    bad = tmp_path / "t.yaml"
    bad.write_text("system: hi\nexamples:\n  - input: a\n")
    with pytest.raises(PresetError, match="example 1.*'input' and 'output'"):
        qwen.run_task(str(bad), "x")
    bad.write_text("system: hi\ntemprature: 0\n")
    with pytest.raises(PresetError, match="line 2: unknown key 'temprature'"):
        qwen.run_task(str(bad), "x")


def test_cli_structured(qwen_path: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    schema = tmp_path / "s.json"
    schema.write_text(json.dumps(ENUM))
    r = runner.invoke(
        app,
        [
            "generate",
            str(qwen_path),
            "My app crashes on start.",
            "--schema",
            str(schema),
            "--temp",
            "0",
            "--ctx",
            "1024",
        ],
    )
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["label"] in ("bug", "feature", "question")
    r = runner.invoke(
        app, ["generate", str(qwen_path), "--task", "sentiment", "I loved it!", "--ctx", "1024"]
    )
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout) == {"sentiment": "positive"}
    f = tmp_path / "in.txt"
    f.write_text("Hello, this is Bob Smith, bob@smith.example.")
    r = runner.invoke(
        app,
        [
            "generate",
            str(qwen_path),
            "--task",
            "extract-contact",
            "--file",
            str(f),
            "--ctx",
            "1024",
        ],
    )
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["email"] == "bob@smith.example"
    r = runner.invoke(app, ["generate", str(qwen_path), "x", "--schema", '{"type": "numbr"}'])
    assert r.exit_code == 1 and r.stderr.startswith("ggrun: error: invalid JSON Schema")
    r = runner.invoke(
        app, ["generate", str(qwen_path), "A long JSON list.", "--json", "-n", "5", "--ctx", "1024"]
    )
    assert r.exit_code == 1 and "finish_reason=length" in r.stderr and r.stdout == ""
