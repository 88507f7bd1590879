"""The Anthropic Messages API (``/v1/messages``, ``/v1/messages/count_tokens``) through
the real ``anthropic`` SDK against ``ggrun serve``: SmolLM2 where quality does not
matter, Qwen2.5-Coder-0.5B for tools, and SmolLM2 in a thinking-only Qwen3 template for
thinking blocks (its thought is closed by the budget). The adapter's mapping of bodies
and its block state machine are also checked directly."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest

from ggrun.api import Meta
from ggrun.api import anthropic as adapter
from ggrun.errors import ApiError
from ggrun.textstream import Chunk, Result
from ggrun.tools import ToolCall
from tests.helpers import QWEN3_TEMPLATE, rewrite_gguf, serving

anthropic = pytest.importorskip("anthropic")

SMOL, QWEN, THINK = "SmolLM2-135M-Instruct.Q4_1", "qwen2.5-coder-0.5b-instruct-q4_k_m", "smol-think"
KEY = "sk-ant-test"
MARK = "{%- if add_generation_prompt %}"
THINKING_ONLY = (
    QWEN3_TEMPLATE.split(MARK)[0]
    + MARK
    + ("{{- '<|im_start|>assistant\\n<think>\\n' }}{%- endif %}")
)  # the reply starts inside a thought, which SmolLM2 never closes: the budget does
GREEDY = {"temperature": 0}
MSG = [{"role": "user", "content": "Name three colours."}]
WEATHER = {
    "name": "get_weather",
    "description": "The current weather in a city.",
    "input_schema": {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        },
        "required": ["city", "unit"],
    },
}


@pytest.fixture(scope="module")
def server(smol_path: Path, qwen_path: Path,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:  # fmt: skip
    think = rewrite_gguf(smol_path, tmp_path_factory.mktemp("t") / f"{THINK}.gguf",
                         template=THINKING_ONLY)  # fmt: skip
    args = [str(smol_path), str(qwen_path), str(think), "--parallel", "2", "--ctx", "1024",
            "--max-loaded", "3", "--api-key", KEY]  # fmt: skip
    with serving(args, tmp_path_factory.mktemp("home")) as base:
        yield base


@pytest.fixture(scope="module")
def client(server: str) -> Any:
    return anthropic.Anthropic(base_url=server, api_key=KEY, max_retries=0)


# ---------------------------------------------------------------- messages.create


def test_create_with_system_and_turns(client: Any) -> None:
    r = client.messages.create(
        model=SMOL, max_tokens=24, system="You answer briefly.", extra_body=GREEDY,
        messages=[{"role": "user", "content": "Hi!"},
                  {"role": "assistant", "content": [{"type": "text", "text": "Hello."}]},
                  {"role": "user", "content": "Name a colour."}],
    )  # fmt: skip
    assert r.id.startswith("msg_") and r.type == "message" and r.role == "assistant"
    assert r.model == SMOL and [b.type for b in r.content] == ["text"] and r.content[0].text
    assert r.stop_reason in ("end_turn", "max_tokens") and r.stop_sequence is None
    assert r.usage.input_tokens + r.usage.cache_read_input_tokens > 20
    assert 0 < r.usage.output_tokens <= 24


def test_max_tokens_cuts_the_reply(client: Any) -> None:
    r = client.messages.create(model=SMOL, max_tokens=3, messages=MSG, extra_body=GREEDY)
    assert r.stop_reason == "max_tokens" and r.usage.output_tokens == 3


def test_a_schema_cut_off_by_max_tokens_is_stop_reason_max_tokens(client: Any) -> None:
    schema = {"type": "object", "properties": {"colour": {"type": "string"}},
              "required": ["colour"]}  # fmt: skip
    fmt = {"output_config": {"format": {"type": "json_schema", "schema": schema}}, **GREEDY}
    r = client.messages.create(model=SMOL, max_tokens=3, messages=MSG, extra_body=fmt)
    assert r.stop_reason == "max_tokens"  # a 200, as the API answers it, not an error
    with client.messages.stream(model=SMOL, max_tokens=3, messages=MSG, extra_body=fmt) as s:
        assert s.get_final_message().stop_reason == "max_tokens"


def test_stop_sequences_cut_where_they_match(client: Any) -> None:
    ask = [{"role": "user", "content": "Count from 1 to 20, separated by commas."}]
    whole = client.messages.create(model=SMOL, max_tokens=48, messages=ask, extra_body=GREEDY)
    text = whole.content[0].text
    words = text.split()
    assert len(words) > 4, text
    stop = words[3]
    r = client.messages.create(model=SMOL, max_tokens=48, messages=ask, extra_body=GREEDY,
                               stop_sequences=[stop])  # fmt: skip
    cut = r.content[0].text if r.content else ""
    assert cut == text[: text.index(stop)] and stop not in cut
    assert r.stop_reason == "stop_sequence" and r.stop_sequence == stop
    with client.messages.stream(model=SMOL, max_tokens=48, messages=ask, extra_body=GREEDY,
                                stop_sequences=["nothing like this", stop]) as s:  # fmt: skip
        final = s.get_final_message()
    assert final.stop_reason == "stop_sequence" and final.stop_sequence == stop
    assert whole.stop_reason != "stop_sequence" and whole.stop_sequence is None


# ---------------------------------------------------------------- messages.stream


def test_stream_text_equals_the_final_message(client: Any) -> None:
    args = {"model": SMOL, "max_tokens": 24, "messages": MSG, "extra_body": GREEDY}
    with client.messages.stream(**args) as s:
        pieces = list(s.text_stream)
        final = s.get_final_message()
    assert len(pieces) > 1 and "".join(pieces) == final.content[0].text
    assert final.stop_reason in ("end_turn", "max_tokens") and final.usage.output_tokens > 0
    whole = client.messages.create(**args)
    assert whole.content[0].text == final.content[0].text  # greedy: the same reply
    assert whole.usage.output_tokens == final.usage.output_tokens


def test_stream_events_come_in_order(client: Any) -> None:
    events = list(client.messages.create(model=SMOL, max_tokens=12, messages=MSG,
                                         extra_body=GREEDY, stream=True))  # fmt: skip
    kinds = [e.type for e in events]
    assert kinds[:2] == ["message_start", "content_block_start"]
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(kinds[2:-3]) == {"content_block_delta"}
    start = events[0].message
    assert start.content == [] and start.stop_reason is None and start.usage.input_tokens > 0
    assert events[1].index == 0 and events[1].content_block.type == "text"
    assert all(e.index == 0 and e.delta.type == "text_delta" for e in events[2:-3])
    assert events[-2].delta.stop_reason == "max_tokens" and events[-2].usage.output_tokens == 12


# ---------------------------------------------------------------- tools


def test_forced_tool_and_a_tool_result_round_trip(client: Any) -> None:
    ask = [{"role": "user", "content": "What is the weather in Paris, in celsius?"}]
    r = client.messages.create(model=QWEN, max_tokens=64, messages=ask, tools=[WEATHER],
                               tool_choice={"type": "tool", "name": "get_weather"},
                               extra_body=GREEDY)  # fmt: skip
    assert r.stop_reason == "tool_use"
    (use,) = [b for b in r.content if b.type == "tool_use"]
    assert use.id.startswith("toolu_") and use.name == "get_weather"
    jsonschema.validate(use.input, WEATHER["input_schema"])
    follow = [*ask, {"role": "assistant", "content": r.content},
              {"role": "user", "content": [
                  {"type": "tool_result", "tool_use_id": use.id, "content": "21 degrees, sunny"},
                  {"type": "text", "text": "Answer in one sentence."}]}]  # fmt: skip
    again = client.messages.create(model=QWEN, max_tokens=40, messages=follow, tools=[WEATHER],
                                   extra_body=GREEDY)  # fmt: skip
    assert again.stop_reason in ("end_turn", "max_tokens")
    assert [b.type for b in again.content] == ["text"] and "21" in again.content[0].text


def test_forced_tool_streamed(client: Any) -> None:
    ask = [{"role": "user", "content": "Weather in Oslo, fahrenheit?"}]
    with client.messages.stream(model=QWEN, max_tokens=64, messages=ask, tools=[WEATHER],
                                tool_choice={"type": "any"}, extra_body=GREEDY) as s:  # fmt: skip
        events = list(s)
        final = s.get_final_message()
    raw = [e for e in events if e.type == "content_block_delta"]
    assert any(e.delta.type == "input_json_delta" for e in raw)
    assert final.stop_reason == "tool_use" and final.content[-1].type == "tool_use"
    jsonschema.validate(final.content[-1].input, WEATHER["input_schema"])
    starts = [e.index for e in events if e.type == "content_block_start"]
    assert starts == list(range(len(final.content)))


# ---------------------------------------------------------------- thinking


def test_thinking_blocks_whole_and_streamed(client: Any) -> None:
    args = {"model": THINK, "max_tokens": 60, "messages": MSG, "extra_body": GREEDY,
            "thinking": {"type": "enabled", "budget_tokens": 8}}  # fmt: skip
    r = client.messages.create(**args)
    kinds = [b.type for b in r.content]
    assert kinds[0] == "thinking" and r.content[0].thinking and r.content[0].signature == ""
    assert "</think>" not in "".join(b.text for b in r.content if b.type == "text")
    with client.messages.stream(**args) as s:
        events = list(s)
        final = s.get_final_message()
    assert [b.type for b in final.content] == kinds
    deltas = [e.delta.type for e in events if e.type == "content_block_delta"]
    first_other = next((i for i, d in enumerate(deltas) if d != "thinking_delta"), len(deltas))
    assert deltas[0] == "thinking_delta" and deltas[first_other] == "signature_delta"
    assert final.content[0].thinking.strip() == r.content[0].thinking
    omitted = client.messages.create(**{**args, "thinking": {**args["thinking"],
                                                             "display": "omitted"}})  # fmt: skip
    assert omitted.content[0].type == "thinking" and omitted.content[0].thinking == ""


# ---------------------------------------------------------------- count_tokens


@pytest.mark.parametrize("model", [SMOL, QWEN])
def test_count_tokens_equals_the_input_of_a_message(client: Any, model: str) -> None:
    body: dict[str, Any] = {"model": model, "system": "Be brief.", "messages": MSG}
    if model == QWEN:
        body |= {"tools": [WEATHER], "tool_choice": {"type": "auto"}}
    n = client.messages.count_tokens(**body).input_tokens
    r = client.messages.create(**body, max_tokens=2, extra_body=GREEDY)
    assert n == r.usage.input_tokens + (r.usage.cache_read_input_tokens or 0) > 10
    longer = client.messages.count_tokens(**{**body, "system": "Be brief. " * 9}).input_tokens
    assert longer > n  # the system prompt counts


# ---------------------------------------------------------------- errors


def test_errors_in_anthropic_shape(server: str, client: Any) -> None:
    def refused(exc: type, **kw: Any) -> dict[str, Any]:
        with pytest.raises(exc) as e:
            client.messages.create(**{"model": SMOL, "max_tokens": 4, "messages": MSG, **kw})
        assert e.value.body["type"] == "error"
        return e.value.body["error"]  # type: ignore[no-any-return]

    err = refused(anthropic.BadRequestError, extra_body={"frequency_penalty": 1})
    assert err["type"] == "invalid_request_error" and "frequency_penalty" in err["message"]
    img = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "x"}}
    err = refused(anthropic.BadRequestError, messages=[{"role": "user", "content": [img]}])
    assert "'image' blocks are not supported" in err["message"]
    err = refused(anthropic.BadRequestError, extra_body={"temperature": "hot"})
    assert "temperature" in err["message"]
    err = refused(anthropic.NotFoundError, model="nope")
    assert err["type"] == "not_found_error" and "nope" in err["message"]
    with pytest.raises(anthropic.BadRequestError) as e:  # the SDK cannot leave it out
        client.post("/v1/messages", cast_to=object, body={"model": SMOL, "messages": MSG})
    assert "max_tokens" in e.value.body["error"]["message"]
    wrong = anthropic.Anthropic(base_url=server, api_key="wrong", max_retries=0)
    for call in (lambda: wrong.messages.create(model=SMOL, max_tokens=4, messages=MSG),
                 lambda: wrong.messages.count_tokens(model=SMOL, messages=MSG)):  # fmt: skip
        with pytest.raises(anthropic.AuthenticationError) as e:
            call()
        assert e.value.body["error"]["type"] == "authentication_error"
    r = httpx.get(server + "/v1/messages", headers={"x-api-key": KEY})
    assert r.status_code == 405 and r.json()["type"] == "error"
    headers = {"x-api-key": KEY, "anthropic-version": "2023-06-01",
               "anthropic-beta": "tools-2024-04-04"}  # fmt: skip
    r = httpx.post(server + "/v1/messages", headers=headers,
                   json={"model": SMOL, "max_tokens": 2, "messages": MSG})  # fmt: skip
    assert r.status_code == 200 and r.json()["type"] == "message"


# ---------------------------------------------------------------- the adapter alone


def _parse(**body: Any) -> dict[str, Any]:
    return dict(adapter.MESSAGES.parse({"max_tokens": 64, "messages": MSG, **body}).options)


def test_thinking_maps_to_think_and_its_budget() -> None:
    on = _parse(thinking={"type": "enabled", "budget_tokens": 32})
    assert on["think"] is True and on["think_budget"] == 32
    assert _parse(thinking={"type": "disabled"})["think"] is False
    adaptive = _parse(thinking={"type": "adaptive"})
    assert adaptive["think"] is True and "think_budget" not in adaptive
    assert "think" not in _parse()


def test_turns_become_messages() -> None:
    o = _parse(system=[{"type": "text", "text": "A"}, {"type": "text", "text": "B"}],
               messages=[
        {"role": "user", "content": "Hi"},
        {"role": "user", "content": [{"type": "text", "text": "there", "cache_control":
                                      {"type": "ephemeral"}}]},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "hm", "signature": "s"},
            {"type": "text", "text": "Let me look."},
            {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"x": 1}}]},
        {"role": "user", "content": [
            {"type": "text", "text": "Thanks"},
            {"type": "tool_result", "tool_use_id": "toolu_1", "is_error": True,
             "content": [{"type": "text", "text": "boom"}]}]},
    ])  # fmt: skip
    assert o["messages"] == [
        {"role": "system", "content": "A\n\nB"},
        {"role": "user", "content": "Hi\n\nthere"},
        {"role": "assistant", "content": "Let me look.", "tool_calls": [
            {"id": "toolu_1", "type": "function", "function": {"name": "f", "arguments": {"x": 1}}}
        ]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "Error: boom"},
        {"role": "user", "content": "Thanks"},
    ]  # fmt: skip


def test_tools_and_choices_map() -> None:
    o = _parse(tools=[WEATHER], tool_choice={"type": "tool", "name": "get_weather",
                                             "disable_parallel_tool_use": True})  # fmt: skip
    assert o["tools"][0]["function"]["parameters"] == WEATHER["input_schema"]
    assert o["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert o["parallel_tool_calls"] is False
    assert _parse(tools=[WEATHER], tool_choice={"type": "any"})["tool_choice"] == "required"
    assert _parse(tool_choice={"type": "none"})["tool_choice"] == "none"
    schema = {"type": "object"}
    assert _parse(output_config={"format": {"type": "json_schema", "schema": schema}})[
        "schema"] == schema  # fmt: skip
    assert {"temperature": 0.5, "top_k": 3, "top_p": 0.9}.items() <= _parse(
        temperature=0.5, top_k=3, top_p=0.9).items()  # fmt: skip


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"max_tokens": None}, "max_tokens"),
        ({"max_tokens": "5"}, "max_tokens"),
        ({"max_tokens": True}, "max_tokens"),
        ({"stream": "yes"}, "stream"),
        ({"stop_sequences": "x"}, "stop_sequences"),
        ({"system": 5}, "system"),
        ({"top_k": 1.5}, "top_k"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "role"),
        ({"messages": [{"role": "user", "content": "x", "name": "a"}]}, "name"),
        ({"messages": [{"role": "assistant", "content": "x"}]}, "prefill"),
        ({"messages": [{"role": "user", "content": [{"type": "document"}]}]}, "'document'"),
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": 1}]}]}, "text"),
        ({"tools": [{**WEATHER, "type": "web_search_20250305"}]}, "web_search"),
        ({"tools": [{"name": "f", "input_schema": {"type": "string"}}]}, "input_schema"),
        ({"tool_choice": {"type": "sometimes"}}, "tool_choice"),
        ({"tool_choice": {"type": "none", "disable_parallel_tool_use": True}}, "disable"),
        ({"thinking": {"type": "enabled"}}, "budget_tokens"),
        ({"thinking": {"type": "enabled", "budget_tokens": 64}}, "less than max_tokens"),
        ({"metadata": {"user_id": 3}}, "metadata"),
        ({"service_tier": "priority"}, "service_tier"),
        ({"output_config": {"effort": "high"}}, "effort"),
        ({"cache_control": {"type": "forever"}}, "cache_control"),
        ({"container": "c"}, "container"),
    ],
)
def test_bad_bodies_name_their_field(body: dict[str, Any], words: str) -> None:
    with pytest.raises(ApiError) as e:
        _parse(**body)
    assert e.value.status == 400 and words in str(e.value)
    shape = adapter.MESSAGES.error(e.value)
    assert shape == {"type": "error", "error": {"type": "invalid_request_error",
                                                "message": str(e.value)}}  # fmt: skip


def test_count_bodies_need_no_max_tokens() -> None:
    call = adapter.count_call({"model": "m", "messages": MSG, "system": "s"})
    assert call.model == "m" and "max_tokens" not in call.options
    with pytest.raises(ApiError):
        adapter.count_call({"messages": MSG, "max_tokens": 3})  # not a count field


def test_blocks_open_and_close_in_order() -> None:
    """A thought, the answer's text, then each call: indices in order, a signature
    before the thought's block closes, the usage in message_start and message_delta."""
    reply = adapter.MESSAGES.reply(adapter.MESSAGES.parse({"max_tokens": 9, "messages": MSG}),
                                   Meta("m", 0, 0.0))  # fmt: skip
    stats = {"prompt_tokens": 10, "cached_tokens": 4}
    call = ToolCall("f", {"x": 1}, id="call_abc")
    events = [*reply.head(), *reply.chunk(Chunk(reasoning="hm", **stats)),
              *reply.chunk(Chunk(reasoning=" ok", text="Hi", **stats)),
              *reply.chunk(Chunk(tool_calls=[call], **stats)),
              *reply.end(Result("Hi", "tool_calls", completion_tokens=5, **stats))]  # fmt: skip

    def what(d: Any) -> Any:
        delta = d.get("delta") or {}
        return d["type"], d.get("index"), delta.get("type") or delta.get("stop_reason")

    got = [what(e.data) for e in events]
    assert got == [
        ("message_start", None, None),
        ("content_block_start", 0, None), ("content_block_delta", 0, "thinking_delta"),
        ("content_block_delta", 0, "thinking_delta"), ("content_block_delta", 0, "signature_delta"),
        ("content_block_stop", 0, None),
        ("content_block_start", 1, None), ("content_block_delta", 1, "text_delta"),
        ("content_block_stop", 1, None),
        ("content_block_start", 2, None), ("content_block_delta", 2, "input_json_delta"),
        ("content_block_stop", 2, None),
        ("message_delta", None, "tool_use"), ("message_stop", None, None),
    ]  # fmt: skip
    assert events[0].data["message"]["usage"]["input_tokens"] == 6  # type: ignore[index]
    assert events[9].data["content_block"]["id"] == "toolu_abc"  # type: ignore[index]
    assert events[-2].data["usage"] == {"input_tokens": 6, "output_tokens": 5,  # type: ignore[index]
                                        "cache_creation_input_tokens": 0,
                                        "cache_read_input_tokens": 4}  # fmt: skip
    failed = reply.end(Result("", "error", error="it broke"))
    assert [(e.name, e.data) for e in failed] == [
        ("error", {"type": "error", "error": {"type": "invalid_request_error",
                                              "message": "it broke"}})]  # fmt: skip
