"""Tokens a grammar forces are guessed (issue 28, part 1): the probe finds the forced text,
and on the real models greedy output equals plain decoding's while fewer steps are
verified than tokens written. Speed: benchmarks/speculative.py, never here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ggrun import llama, speculative
from ggrun.sampling import SamplingConfig
from ggrun.schema_gbnf import schema_to_gbnf

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "email": {"type": "string"},
        "city": {"type": "string"},
        "status": {"enum": ["active", "inactive"]},
        "age": {"type": "integer"},
    },
    "required": ["name", "email", "city", "status", "age"],
}
DOC = (
    "Hi, I'm Dana Whitfield from Orbital Freight in Leeds, 41 years old. Reach me at "
    "dana.w@orbitalfreight.co.uk. Our account is still active."
)
CONTACT = {
    "type": "function",
    "function": {
        "name": "save_contact",
        "description": "Save a contact to the address book.",
        "parameters": SCHEMA,
    },
}


@pytest.fixture(scope="module")
def probe(qwen_path: Path) -> Any:
    w = llama.Weights(qwen_path)
    ctx = llama.Context(w, llama.ContextParams(n_ctx=256))
    s = llama.Sampler(SamplingConfig(temperature=0), ctx, schema_to_gbnf(SCHEMA))
    yield w, s
    s.close()
    ctx.close()
    w.close()


def test_the_probe_finds_the_text_the_grammar_forces(probe: Any) -> None:
    w, s = probe
    assert s.forced() == '{"name": "'  # the keys' order is fixed, and json.dumps's spaces
    seen = []
    for t in w.tokenize('{"name": "Bo", "email": "b@x.io", "city": "Leeds", "status": "act'):
        s.accept(t)
        seen.append(s.forced(w.token_text(t)))
    assert seen[0] == 'name": "'  # after '{"'
    assert 'email": "' in seen and 'city": "' in seen
    assert seen[-1] == 'ive", "age":'  # an enum's tail, to the next choice (a trailing space
    # is left to the model, which writes it with the digit: ' 4')
    assert seen[1] == '": "'  # after 'name'


def test_no_grammar_forces_nothing(qwen_path: Path) -> None:
    with llama.Weights(qwen_path) as w:
        ctx = llama.Context(w, llama.ContextParams(n_ctx=64))
        s = llama.Sampler(SamplingConfig(temperature=0), ctx)
        try:
            assert s.forced() == ""
        finally:
            s.close()
            ctx.close()


def _extract(model: Any, mode: str, as_: str = "JSON", **kw: Any) -> Any:
    model.memory.clear()  # guesses from the grammar and the prompt only
    msgs = [{"role": "user", "content": f"Extract the contact as {as_}.\n\n" + DOC}]
    return model.chat(msgs, temperature=0, max_tokens=160, speculative=mode, **kw)


@pytest.mark.parametrize("which", ["smol", "qwen"])
def test_a_schema_reply_is_plain_decodings_in_fewer_steps(which: str, request: Any) -> None:
    model = request.getfixturevalue(which)
    plain = _extract(model, "off", schema=SCHEMA)
    fast = _extract(model, "lookup", schema=SCHEMA)
    assert fast.text == plain.text
    assert fast.forced_tokens > 0 and plain.forced_tokens == 0
    steps = fast.completion_tokens - fast.accepted_tokens  # one token sampled a step
    assert steps <= fast.completion_tokens - fast.forced_tokens < fast.completion_tokens


def test_a_forced_tool_call_is_plain_decodings(qwen: Any) -> None:
    kw: dict[str, Any] = {"tools": [CONTACT], "tool_choice": "required"}
    plain = _extract(qwen, "off", **kw)
    fast = _extract(qwen, "lookup", **kw)
    assert plain.tool_calls and fast.text == plain.text
    assert [(c.name, c.arguments) for c in fast.tool_calls] == [
        (c.name, c.arguments) for c in plain.tool_calls
    ]
    assert fast.forced_tokens > 0


def test_a_format_reply_is_plain_decodings(qwen: Any) -> None:
    kw: dict[str, Any] = {"format": "csv", "columns": ["name", "email", "city", "status"]}
    # asked for CSV: asked for JSON and held to CSV, the 0.5B hesitates between near-tied
    # tokens, and a verify batch's rounding (README: speculative decoding) can flip one
    plain = _extract(qwen, "off", "CSV", **kw)
    fast = _extract(qwen, "lookup", "CSV", **kw)
    assert fast.text == plain.text
    assert fast.text.startswith("name,email,city,status")
    assert fast.forced_tokens > 0  # the header, at least


def test_guesses_the_grammar_rejects_or_past_the_end_are_cut(qwen_path: Path) -> None:
    with llama.Weights(qwen_path) as w:
        ctx = llama.Context(w, llama.ContextParams(n_ctx=64))
        s = llama.Sampler(SamplingConfig(temperature=0), ctx, schema_to_gbnf(SCHEMA))
        plain = llama.Sampler(SamplingConfig(temperature=0), ctx)
        try:
            ok, bad = w.tokenize('{"name"'), w.tokenize("}")  # a key, then no colon
            assert s.admitted(ok + bad + ok) == len(ok)
            assert plain.admitted(ok + [w.eos] + ok) == len(ok) + 1  # no further than the end
        finally:
            s.close()
            plain.close()
            ctx.close()


def test_the_probe_sees_where_the_grammar_ends(qwen_path: Path) -> None:
    schema = {"type": "object", "properties": {"s": {"enum": ["yes"]}}, "required": ["s"]}
    with llama.Weights(qwen_path) as w:
        ctx = llama.Context(w, llama.ContextParams(n_ctx=64))
        s = llama.Sampler(SamplingConfig(temperature=0), ctx, schema_to_gbnf(schema))
        try:
            assert s.forced() == '{"s": "yes"}' and s.forced_end  # the whole reply, then the end
            for t in w.tokenize('{"s": "y'):
                s.accept(t)
            assert s.forced("y") == 'es"}' and s.forced_end
            s.accept(w.tokenize("es")[0])
            assert s.forced("s") == '"}' and s.forced_end
        finally:
            s.close()
            ctx.close()


def test_a_value_is_found_after_its_label_in_the_document() -> None:
    def label(doc: bytes, key: bytes) -> bytes:
        return speculative._label(bytearray(doc), len(doc), key)

    doc = b"Record #12. Full name: Ada Lovelace. E-mail: ada@example.org\nPlan: gold"
    assert label(doc, b"email") == b""  # whole words: "E-mail" is not "email"
    assert label(doc, b"e-mail") == b"ada@example.org"  # to the line's end
    assert label(doc, b"full_name") == b"Ada Lovelace. E-mail: ada@example.org"
    assert label(doc, b"Plan") == b"gold"  # any case
    assert label(b"with keys name, plan. Name: Bo", b"name") == b"Bo"  # a list is no label
    assert label(b"the name below. Name: Bo", b"name") == b"Bo"  # a colon's label first
    assert label(b"Account opened 2010-01-10.", b"opened") == b"2010-01-10."  # else a space's
    assert label(b"a surname: Bo", b"name") == b""
    assert len(label(b"notes: " + b"x" * 1000, b"notes")) == speculative.LABEL_BYTES


def test_after_a_forced_key_the_labelled_value_is_guessed(smol_path: Path) -> None:
    with llama.Weights(smol_path) as w:
        prompt = w.tokenize("Record. Name: Ada Lovelace. Email: ada@example.org. Plan: gold.")
        spec = speculative.Speculation(
            "lookup", prompt, speculative.CostModel(), None, None, w.token_bytes, w.tokenize
        )
        reply = w.tokenize('{"name": "Ada Lovelace", "email')
        spec.extend(reply)
        forced = w.tokenize('": "')
        guesses = spec.guess(prompt + reply, 16, forced)
        assert spec.source == "label" and spec.forced == len(forced) < spec.guessed
        value = w.tokenize("ada@example.org. Plan: gold.")
        assert guesses[: spec.guessed] == forced + value[: spec.guessed - len(forced)]
        # without a key at the end of the forced text, no label is looked for
        spec.guess(prompt + reply, 16, w.tokenize('": 4'))
        assert spec.source != "label"


def test_the_probe_answers_for_text_not_yet_written(probe: Any) -> None:
    w = probe[0]
    ctx = llama.Context(w, llama.ContextParams(n_ctx=64))
    s = llama.Sampler(SamplingConfig(temperature=0), ctx, schema_to_gbnf(SCHEMA))
    try:
        assert s.forced_after('{"name": "Bo"') == ', "email": "'
        before = '{"name": "Bo", "email": "b@x.io", "city": "Leeds", "status": "a'
        assert s.forced_after(before) == 'ctive", "age":'
        assert s.forced_after("}") is None  # the grammar rejects it
        assert s.forced() == '{"name": "'  # its own state never moved
    finally:
        s.close()
        ctx.close()


RECORD = {
    "type": "object",
    "properties": {k: {"type": "string"} for k in ("name", "city", "plan")},
    "required": ["name", "city", "plan"],
}


def test_a_record_s_labelled_fields_chain_into_one_guess(smol_path: Path) -> None:
    with llama.Weights(smol_path) as w:
        ctx = llama.Context(w, llama.ContextParams(n_ctx=256))
        s = llama.Sampler(SamplingConfig(temperature=0), ctx, schema_to_gbnf(RECORD))
        try:
            prompt = w.tokenize("Name: Ada Lovelace. City: London. Plan: gold, monthly.")
            spec = speculative.Speculation(
                "lookup", prompt, speculative.CostModel(), None, None,
                w.token_bytes, w.tokenize, s.forced_after,
            )  # fmt: skip
            for t in (reply := w.tokenize('{"')):
                s.accept(t)
            spec.extend(reply)
            forced = w.tokenize('name": "')
            guesses = spec.guess(prompt + reply, 31, forced, s.admitted)
            # each value to where the document's seems to end, closed as the grammar wants
            whole = b'name": "Ada Lovelace", "city": "London", "plan": "gold"}'
            assert spec.expect == whole and spec.source == "label"
            assert guesses[: spec.guessed] == w.tokenize(whole.decode())[: spec.guessed]
            spec.extend(w.tokenize('name": "Ada'))  # the reply keeps to it
            assert spec.expect == whole[len('name": "Ada') :]
            spec.extend(w.tokenize(" Byron"))  # and departs from it: nothing expected
            assert spec.expect == b""
        finally:
            s.close()
            ctx.close()


LABELLED = (
    "Customer record. Name: Dana Whitfield. Email: dana.w@orbitalfreight.co.uk. City: "
    "Leeds. Status: active. Age: 41."
)


def test_a_labelled_record_is_plain_decodings_in_fewer_steps(qwen: Any) -> None:
    """The fields are guessed from their labels and chained: fewer steps than for the same
    record in prose (9 against 15 for 43 tokens here; the counts move with the measured
    row costs, which decide how many guesses pay)."""
    kw: dict[str, Any] = {"schema": SCHEMA, "temperature": 0, "max_tokens": 160}
    steps = []
    for doc in (LABELLED, DOC):
        prompt = "Copy the fields of this customer record exactly, as JSON:\n\n" + doc
        msgs = [{"role": "user", "content": prompt}]
        qwen.memory.clear()
        plain = qwen.chat(msgs, speculative="off", **kw)
        qwen.memory.clear()
        fast = qwen.chat(msgs, speculative="lookup", **kw)
        assert fast.text == plain.text
        assert '"email": "dana.w@orbitalfreight.co.uk"' in fast.text
        steps.append(fast.completion_tokens - fast.accepted_tokens)  # one sampled a step
    assert steps[0] < steps[1]


def test_the_probe_follows_the_reply_s_own_spacing(probe: Any) -> None:
    """json.dumps's spaces until the reply shows its own: compact JSON is guessed compact
    (a comma inside a string says nothing of the reply's spacing)."""
    w = probe[0]
    ctx = llama.Context(w, llama.ContextParams(n_ctx=64))
    try:
        for reply, forced in (
            ('{"name": "Bo, Jo", "email": "b"', ', "city": "'),
            ('{"name":"Bo, Jo","email":"b"', ',"city":"'),
            ('{"name":"Bo, Jo"', ', "email":"'),  # no comma of its own yet: json.dumps's
        ):
            s = llama.Sampler(SamplingConfig(temperature=0), ctx, schema_to_gbnf(SCHEMA))
            try:
                for t in w.tokenize(reply):
                    s.accept(t)
                assert s.forced('"') == forced
            finally:
                s.close()
    finally:
        ctx.close()
