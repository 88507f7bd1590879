"""Small models that call the same tool forever (issue 27, part 5).

Qwen2.5-Coder-1.5B calls a tool again right after it has the result. The server draws
such a reply again with tool calls closed, so that the model answers from the result;
``allow_repeated_calls`` (the field, or ``--allow-repeated-calls``) lets the repeat
through. Tested through the real openai SDK and openai-agents against ``ggrun serve``
on the 1.5B model, and the bookkeeping on its own."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ggrun import redraw
from ggrun.request import Request
from ggrun.tools import ToolCall
from tests.helpers import serving

openai = pytest.importorskip("openai")

QWEN15 = "qwen2.5-coder-1.5b-instruct-q4_k_m"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
ANSWER = "Lisbon: 18 degrees, light rain"  # what the tool says; the reply must use it


def _history(call_id: str | None = "call_1", args: str = '{"city": "Lisbon"}') -> list[Any]:
    call: dict[str, Any] = {"type": "function",
                            "function": {"name": "get_weather", "arguments": args}}  # fmt: skip
    tool: dict[str, Any] = {"role": "tool", "content": ANSWER}
    if call_id is not None:
        call["id"], tool["tool_call_id"] = call_id, call_id
    return [
        {"role": "user", "content": "What is the weather in Lisbon? Use the tool."},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        tool,
    ]


# ---------------------------------------------------------------- the bookkeeping


def test_a_call_answered_is_a_repeat_whatever_the_key_order() -> None:
    req = Request.build(messages=_history(args='{"city": "Lisbon", "unit": "c"}'),
                        tools=[WEATHER])  # fmt: skip
    assert redraw.repeated(req, [ToolCall("get_weather", {"unit": "c", "city": "Lisbon"})])
    assert not redraw.repeated(req, [ToolCall("get_weather", {"city": "Porto", "unit": "c"})])
    assert not redraw.repeated(req, [])


def test_only_answered_calls_count() -> None:
    unanswered = _history()[:2]  # the call, with no tool message after it
    req = Request.build(messages=unanswered, tools=[WEATHER])
    assert not redraw.repeated(req, [ToolCall("get_weather", {"city": "Lisbon"})])
    other = _history()
    other[2]["tool_call_id"] = "call_9"  # a tool message that answers another call
    req = Request.build(messages=other, tools=[WEATHER])
    assert not redraw.repeated(req, [ToolCall("get_weather", {"city": "Lisbon"})])
    req = Request.build(messages=_history(call_id=None), tools=[WEATHER])  # no ids at all
    assert redraw.repeated(req, [ToolCall("get_weather", {"city": "Lisbon"})])


def test_closed_keeps_the_conversation_and_offers_no_tools() -> None:
    req = Request.build(messages=_history(), tools=[WEATHER], temperature=0)
    shut = redraw.closed(req)
    assert shut.messages == req.messages and shut.offered_tools == ()
    assert shut.overrides == req.overrides


# ---------------------------------------------------------------- the 1.5B through clients


@pytest.fixture(scope="module")
def server(qwen15_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    args = [str(qwen15_path), "--parallel", "1", "--ctx", "2048"]
    with serving(args, tmp_path_factory.mktemp("home")) as url:
        yield url


def _client(url: str) -> Any:
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)


def _second_turn(url: str, **extra: Any) -> Any:
    return _client(url).chat.completions.create(
        model=QWEN15, messages=_history(), tools=[WEATHER], temperature=0, max_tokens=80,
        **extra,
    )  # fmt: skip


@pytest.mark.slow
def test_the_model_repeats_its_call_unless_the_server_stops_it(server: str) -> None:
    # the model's own habit, let through on request: the same call again
    habit = _second_turn(server, extra_body={"allow_repeated_calls": True}).choices[0]
    assert habit.message.tool_calls  # (it goes on calling until max_tokens)
    for call in habit.message.tool_calls:
        fn = call.function
        assert fn.name == "get_weather" and json.loads(fn.arguments) == {"city": "Lisbon"}
    # by default: drawn again with tool calls closed, a text answer that uses the result
    reply = _second_turn(server).choices[0]
    assert reply.finish_reason == "stop" and not reply.message.tool_calls
    assert "18" in reply.message.content


@pytest.mark.slow
def test_a_streamed_repeat_never_goes_out(server: str) -> None:
    stream = _client(server).chat.completions.create(
        model=QWEN15, messages=_history(), tools=[WEATHER], temperature=0, max_tokens=80,
        stream=True,
    )  # fmt: skip
    chunks = list(stream)
    assert not any(c.choices and c.choices[0].delta.tool_calls for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "18" in text
    assert chunks[-1].choices[0].finish_reason == "stop"


@pytest.mark.slow
def test_openai_sdk_round_trip_ends_in_text(server: str) -> None:
    client = _client(server)
    messages: list[Any] = [{"role": "user", "content": "What is the weather in Lisbon? "
                            "Use the tool."}]  # fmt: skip
    first = client.chat.completions.create(model=QWEN15, messages=messages, tools=[WEATHER],
                                           temperature=0, max_tokens=80).choices[0]  # fmt: skip
    assert first.finish_reason == "tool_calls"
    call = first.message.tool_calls[0]
    messages += [first.message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": ANSWER}]  # fmt: skip
    final = client.chat.completions.create(model=QWEN15, messages=messages, tools=[WEATHER],
                                           temperature=0, max_tokens=80).choices[0]  # fmt: skip
    assert final.finish_reason == "stop" and "18" in final.message.content


@pytest.mark.slow
@pytest.mark.parametrize("api", ["chat_completions", "responses"])
def test_openai_agents_round_trip_ends_in_text(server: str, api: str) -> None:
    agents = pytest.importorskip("agents")
    agents.set_tracing_disabled(True)
    client = openai.AsyncOpenAI(base_url=server + "/v1", api_key="unused", max_retries=0)
    model = (agents.OpenAIChatCompletionsModel if api == "chat_completions"
             else agents.OpenAIResponsesModel)(model=QWEN15, openai_client=client)  # fmt: skip
    cities = []

    @agents.function_tool
    def get_weather(city: str) -> str:
        """The current weather in a city."""
        cities.append(city)
        return ANSWER

    settings = agents.ModelSettings(temperature=0, max_tokens=80)
    agent = agents.Agent(name="weather", instructions="Use the tools.", tools=[get_weather],
                         model=model, model_settings=settings)  # fmt: skip
    result = asyncio.run(agents.Runner.run(agent, "What is the weather in Lisbon?",
                                           max_turns=4))  # fmt: skip
    assert cities == ["Lisbon"]  # called once, not again and again
    assert "18" in result.final_output
