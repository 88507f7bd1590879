"""A reply that fails a check no grammar holds is drawn again (issue 27, part 1).

``multipleOf``, number bounds and ``uniqueItems`` are validated after the reply; a failure
draws the reply again with the next seed (a greedy request then samples), up to
``redraw.MAX_REDRAWS`` times, then the error stands. On SmolLM2: in the Python API
(``Model.complete``), the batcher (``ggrun batch``), and the server, where a streamed
answer cannot take back what it sent and ends with the error instead."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest

from ggrun import redraw
from ggrun.batching import run_batch
from ggrun.errors import SchemaMismatch
from ggrun.sampling import REDRAW_TEMPERATURE
from tests.helpers import serving

# no number passes: the grammar lets any number through, validation never does
NEVER = {"type": "object", "properties": {"x": {"type": "number", "minimum": 0.5,
                                               "maximum": 0.6, "multipleOf": 1}},
         "required": ["x"], "additionalProperties": False}  # fmt: skip
# about one number in two passes
EVEN = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 9,
                                              "multipleOf": 2}},
        "required": ["n"], "additionalProperties": False}  # fmt: skip
ASK = [{"role": "user", "content": "Give me a number as JSON."}]


def _draws(caplog: pytest.LogCaptureFixture) -> int:
    return 1 + sum("drawing it again" in r.getMessage() for r in caplog.records)


def test_the_draws_after_the_first_use_the_next_seeds_and_then_stop(smol: Any) -> None:
    job = smol.prepare(smol_request(temperature=0))
    seen = []
    for attempt in range(1, redraw.MAX_REDRAWS + 2):
        nxt = redraw.again(job, attempt)
        if nxt is None:
            break
        seen.append((nxt.sampling.temperature, nxt.sampling.seed))
        assert dict(nxt.run.sampling)["seed"] == nxt.sampling.seed  # the manifest says so
    assert seen == [(REDRAW_TEMPERATURE, i) for i in range(1, redraw.MAX_REDRAWS + 1)]
    seeded = smol.prepare(smol_request(temperature=0.8, seed=41))
    assert redraw.again(seeded, 2).sampling.seed == 43
    assert redraw.again(seeded, 2).sampling.temperature == 0.8


def smol_request(**options: Any) -> Any:
    from ggrun.request import Request

    return Request.build(messages=ASK, schema=EVEN, max_tokens=24, **options)


def test_the_api_redraws_then_gives_an_honest_error(smol: Any, caplog: Any) -> None:
    caplog.set_level(logging.INFO, logger="ggrun")
    with pytest.raises(SchemaMismatch, match="does not match the schema.*in each of 4 draws"):
        smol.chat(ASK, schema=NEVER, temperature=0, max_tokens=24)
    assert _draws(caplog) == 1 + redraw.MAX_REDRAWS


def test_the_api_value_always_validates(smol: Any, caplog: Any) -> None:
    caplog.set_level(logging.INFO, logger="ggrun")
    for seed in range(4):
        try:
            r = smol.chat(ASK, schema=EVEN, temperature=1.0, seed=seed, max_tokens=24)
        except SchemaMismatch:
            continue  # every draw failed: an error, never a wrong value
        jsonschema.validate(r.data, EVEN)
    assert _draws(caplog) > 4  # some first draws failed and were drawn again


def test_a_batch_redraws_each_line_on_its_own(smol: Any, caplog: Any) -> None:
    caplog.set_level(logging.INFO, logger="ggrun")
    lines = [{"messages": ASK, "schema": NEVER}, {"messages": ASK}]
    done = dict(run_batch(smol, lines, parallel=2, temperature=0, max_tokens=24))
    assert done[0].error and "does not match the schema" in done[0].error
    assert done[0].error.endswith(f"(in each of {1 + redraw.MAX_REDRAWS} draws)")
    assert done[0].redraw and done[1].error is None
    assert _draws(caplog) == 1 + redraw.MAX_REDRAWS


@pytest.fixture(scope="module")
def server(smol_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serving([str(smol_path), "--parallel", "2", "--ctx", "512"],
                 tmp_path_factory.mktemp("home")) as url:  # fmt: skip
        yield url


def _body(schema: Any, **more: Any) -> dict[str, Any]:
    fmt = {"type": "json_schema", "json_schema": {"name": "n", "schema": schema}}
    return {"messages": ASK, "response_format": fmt, "temperature": 0, "max_tokens": 24, **more}


def test_the_server_answers_what_validates_or_says_why(server: str) -> None:
    r = httpx.post(server + "/v1/chat/completions", json=_body(NEVER), timeout=120)
    assert r.status_code == 422 and "in each of 4 draws" in r.json()["error"]["message"]
    r = httpx.post(server + "/v1/chat/completions", json=_body(EVEN, temperature=1, seed=3),
                   timeout=120)  # fmt: skip
    if r.status_code == 200:
        jsonschema.validate(json.loads(r.json()["choices"][0]["message"]["content"]), EVEN)
    else:
        assert r.status_code == 422


def test_a_stream_is_not_redrawn_and_ends_with_the_error(server: str) -> None:
    with httpx.stream("POST", server + "/v1/chat/completions",
                      json=_body(NEVER, stream=True), timeout=120) as r:  # fmt: skip
        lines = [ln for ln in r.iter_lines() if ln.startswith("data: ")]
    assert "does not match the schema" in lines[-2] or "does not match the schema" in lines[-1]


def test_a_tool_call_that_fails_a_check_is_drawn_again(smol: Any, caplog: Any) -> None:
    caplog.set_level(logging.INFO, logger="ggrun")
    never = {"type": "function", "function": {"name": "never", "parameters": NEVER}}
    one = {"tool_choice": "required", "parallel_tool_calls": False, "max_tokens": 40}
    with pytest.raises(SchemaMismatch, match="the call to never: .*in each of 4 draws"):
        smol.chat(ASK, tools=[never], temperature=0, **one)
    assert _draws(caplog) == 1 + redraw.MAX_REDRAWS
