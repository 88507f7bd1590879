"""What the OpenAI and ollama adapters accept and ignore on purpose (fields that mean
nothing to a local server), how ``reasoning_effort`` becomes thinking, and where a
streamed reply's usage goes: the adapters alone, no model."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest

from ggrun.api import Meta, ollama, openai
from ggrun.errors import ApiError
from ggrun.textstream import Result

MSGS = [{"role": "user", "content": "hi"}]
OLLAMA = {"model": "m", "messages": MSGS}


@pytest.mark.parametrize("adapter, base", [
    (openai.CHAT, {"messages": MSGS}), (openai.COMPLETIONS, {"prompt": "hi"}),
])  # fmt: skip
@pytest.mark.parametrize("extra", [
    {"store": False}, {"store": True}, {"store": None},
    {"metadata": {"k": "v", "run": "7"}}, {"metadata": {}},
    {"service_tier": "auto"}, {"service_tier": "flex"},
    {"user": "u-1"}, {"safety_identifier": "hash"}, {"prompt_cache_key": "k"},
])  # fmt: skip
def test_openai_fields_of_no_meaning_are_accepted_and_ignored(
    adapter: Any, base: dict[str, Any], extra: dict[str, Any]
) -> None:
    assert adapter.parse({**base, **extra}).options == adapter.parse(base).options


@pytest.mark.parametrize("extra, param", [
    ({"store": "yes"}, "store"), ({"metadata": ["x"]}, "metadata"),
    ({"metadata": {"k": 1}}, "metadata"),
    ({"metadata": {str(i): "v" for i in range(17)}}, "metadata"),
    ({"service_tier": 1}, "service_tier"), ({"user": 5}, "user"),
    ({"safety_identifier": {}}, "safety_identifier"),
    ({"prompt_cache_key": []}, "prompt_cache_key"),
    ({"n": 0}, "n"), ({"n": 17}, "n"), ({"n": 1.5}, "n"), ({"n": True}, "n"),
    ({"logit_bias": {"1": 101}}, "logit_bias"), ({"logit_bias": {"x": 1}}, "logit_bias"),
    ({"logit_bias": [[1, 5]]}, "logit_bias"), ({"nope": 1}, "nope"),
    ({"reasoning_effort": "max"}, "reasoning_effort"),
    ({"reasoning_effort": 1}, "reasoning_effort"),
])  # fmt: skip
def test_openai_wrong_types_and_the_rest_stay_400s(extra: dict[str, Any], param: str) -> None:
    with pytest.raises(ApiError) as e:
        openai.CHAT.parse({"messages": MSGS, **extra})
    assert e.value.status == 400 and e.value.param == param


@pytest.mark.parametrize("effort", list(openai.REASONING_EFFORT))
def test_reasoning_effort_maps_to_thinking(effort: str) -> None:
    o = openai.CHAT.parse({"messages": MSGS, "reasoning_effort": effort}).options
    think, budget = openai.REASONING_EFFORT[effort]
    assert (o["think"], o["think_budget"]) == (think, budget)
    assert (o["think"], o["think_budget"]) == {
        "none": (False, None), "minimal": (False, None), "low": (True, 512),
        "medium": (True, 2048), "high": (True, None),
    }[effort]  # fmt: skip


@pytest.mark.parametrize("extra, think, budget", [
    ({"reasoning_budget": 100}, True, 100),
    ({"reasoning_budget": -1}, True, None),
    ({"chat_template_kwargs": {"thinking_budget": 64}}, True, 64),
    ({"chat_template_kwargs": {"enable_thinking": False}}, False, None),
    ({"think": False}, False, None),
])  # fmt: skip
def test_an_explicit_think_or_budget_wins_over_reasoning_effort(
    extra: dict[str, Any], think: bool, budget: int | None
) -> None:
    o = openai.CHAT.parse({"messages": MSGS, "reasoning_effort": "low", **extra}).options
    assert (o["think"], o["think_budget"]) == (think, budget)


def _events(include_usage: bool) -> list[Any]:
    body = {"messages": MSGS, "stream": True}
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    call = openai.CHAT.parse(body)
    reply = openai.CHAT.reply(call, Meta("m", int(time.time()), time.perf_counter()))
    r = Result("hello", "stop", prompt_tokens=5, completion_tokens=2)
    return [e.data for e in reply.end(r)]


def test_include_usage_sends_a_last_chunk_with_no_choices() -> None:
    finish, last, done = _events(True)
    assert finish["choices"][0]["finish_reason"] == "stop" and "usage" not in finish
    assert last["choices"] == [] and last["id"] == finish["id"]
    assert last["usage"] == {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
    assert done == "[DONE]"
    finish, done = _events(False)
    assert "usage" not in finish and done == "[DONE]"


def test_ollama_runner_options_are_ignored_and_named(caplog: pytest.LogCaptureFixture) -> None:
    runner = {"num_thread": 4, "num_gpu": 2, "num_batch": 512, "use_mmap": True, "num_keep": 5,
              "numa": False, "low_vram": False, "main_gpu": 0, "use_mlock": False,
              "vocab_only": False, "f16_kv": True}  # fmt: skip
    assert set(runner) == set(ollama.IGNORED_OPTIONS)
    plain = ollama.CHAT.parse({**OLLAMA, "options": {"temperature": 0}})
    assert plain.headers == {}
    with caplog.at_level(logging.WARNING, logger="ggrun.api.ollama"):
        call = ollama.CHAT.parse({**OLLAMA, "options": {"temperature": 0, **runner}})
    assert call.options == plain.options
    assert call.headers == {ollama.IGNORED_HEADER: ",".join(ollama.IGNORED_OPTIONS)}
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(lines) == 1 and "num_thread" in lines[0] and "f16_kv" in lines[0]
    gen = ollama.GENERATE.parse({"model": "m", "prompt": "hi", "options": {"num_thread": 4}})
    assert gen.headers == {ollama.IGNORED_HEADER: "num_thread"}


@pytest.mark.parametrize("options", [
    {"num_thread": "4"}, {"use_mmap": [True]}, {"num_gpu": {}}, {"tfs_z": 1.0}, {"nope": 1},
])  # fmt: skip
def test_ollama_other_options_and_wrong_types_stay_400s(options: dict[str, Any]) -> None:
    with pytest.raises(ApiError) as e:
        ollama.CHAT.parse({**OLLAMA, "options": options})
    assert e.value.status == 400 and next(iter(options)) in str(e.value)
