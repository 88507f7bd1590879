"""The OpenAI Responses API (``POST /v1/responses``) through the real ``openai`` SDK and
openai-agents (its default model speaks Responses) against ``ggrun serve``: SmolLM2 where
quality does not matter, Qwen2.5-Coder-0.5B for tools, schemas and agents, and SmolLM2
in a thinking-only Qwen3 template for reasoning items. Every body and event that comes
back is validated against the SDK's own pydantic types; the adapter's event state
machine is also run directly on made-up chunks, through the SDK's stream accumulator."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest

from ggrun.api import Call, Meta
from ggrun.api import responses as adapter
from ggrun.errors import ApiError
from ggrun.request import Request
from ggrun.textstream import Chunk, Result
from ggrun.tools import ToolCall
from tests.helpers import QWEN3_TEMPLATE, rewrite_gguf, serving

openai = pytest.importorskip("openai")
from openai.types.responses import Response, ResponseStreamEvent  # noqa: E402
from pydantic import TypeAdapter  # noqa: E402

SMOL, QWEN, THINK = "SmolLM2-135M-Instruct.Q4_1", "qwen2.5-coder-0.5b-instruct-q4_k_m", "smol-think"
MARK = "{%- if add_generation_prompt %}"
THINKING_ONLY = (
    QWEN3_TEMPLATE.split(MARK)[0]
    + MARK
    + ("{{- '<|im_start|>assistant\\n<think>\\n' }}{%- endif %}")
)  # the reply starts inside a thought, which SmolLM2 never closes
EVENT = TypeAdapter(ResponseStreamEvent)
WEATHER_PARAMS = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
WEATHER = {"type": "function", "name": "get_weather", "description": "The weather in a city.",
           "parameters": WEATHER_PARAMS, "strict": True}  # fmt: skip
ASK = "What is the weather in Paris, in celsius?"


@pytest.fixture(scope="module")
def server(smol_path: Path, qwen_path: Path,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:  # fmt: skip
    think = rewrite_gguf(smol_path, tmp_path_factory.mktemp("t") / f"{THINK}.gguf",
                         template=THINKING_ONLY)  # fmt: skip
    args = [str(smol_path), str(qwen_path), str(think), "--parallel", "2", "--ctx", "1024",
            "--max-loaded", "3"]  # fmt: skip
    with serving(args, tmp_path_factory.mktemp("home")) as base:
        yield base


@pytest.fixture(scope="module")
def client(server: str) -> Any:
    return openai.OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0)


def _create(server: str, **body: Any) -> dict[str, Any]:
    """A non-streamed response, validated against the SDK's Response model."""
    r = httpx.post(server + "/v1/responses", json=body, timeout=120)
    assert r.status_code == 200, r.text
    Response.model_validate(r.json())
    return r.json()  # type: ignore[no-any-return]


def _events(server: str, **body: Any) -> list[dict[str, Any]]:
    """A streamed response's events: each named as its type, numbered in order and
    validated against the SDK's event types."""
    out, name = [], None
    with httpx.stream("POST", server + "/v1/responses", json={**body, "stream": True},
                      timeout=120) as r:  # fmt: skip
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("event:"):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                data = json.loads(line.split(":", 1)[1])
                assert data["type"] == name and data["sequence_number"] == len(out)
                EVENT.validate_python(data)
                out.append(data)
    return out


def _text_of(resp: dict[str, Any]) -> str:
    return "".join(p["text"] for i in resp["output"] if i["type"] == "message"
                   for p in i["content"])  # fmt: skip


# ---------------------------------------------------------------- responses.create


def test_create_a_string_input(client: Any) -> None:
    r = client.responses.create(model=SMOL, input="Name a colour.", max_output_tokens=24,
                                temperature=0)  # fmt: skip
    assert r.id.startswith("resp_") and r.object == "response" and r.model == SMOL
    assert r.status in ("completed", "incomplete") and r.output_text.strip()
    (msg,) = r.output
    assert msg.type == "message" and msg.id.startswith("msg_") and msg.role == "assistant"
    assert [p.type for p in msg.content] == ["output_text"] and msg.content[0].annotations == []
    u = r.usage
    assert u.input_tokens > 5 and 0 < u.output_tokens <= 24
    assert u.total_tokens == u.input_tokens + u.output_tokens
    assert u.output_tokens_details.reasoning_tokens == 0
    assert r.store is False and r.tools == [] and r.tool_choice == "auto" and r.temperature == 0


def test_items_and_instructions_are_the_chat_they_describe(server: str) -> None:
    """Instructions, a developer message, text parts and an earlier assistant turn: the
    same prompt as the chat completion of the same messages (greedy: the same reply)."""
    body = {
        "model": SMOL, "instructions": "You answer in one short sentence.", "temperature": 0,
        "max_output_tokens": 24, "metadata": {"k": "v"}, "user": "u1",
        "input": [
            {"role": "developer", "content": "Mention a fruit."},
            {"type": "message", "role": "user",
             "content": [{"type": "input_text", "text": "Hi! "},
                         {"type": "input_text", "text": "Who are you?"}]},
            {"type": "message", "role": "assistant", "id": "msg_1", "status": "completed",
             "content": [{"type": "output_text", "text": "An assistant.", "annotations": []}]},
            {"type": "reasoning", "id": "rs_1", "summary": []},  # dropped
            {"role": "user", "content": "Name a colour."},
        ],
    }  # fmt: skip
    r = _create(server, **body)
    assert r["metadata"] == {"k": "v"} and r["user"] == "u1"
    assert r["instructions"] == "You answer in one short sentence."
    chat = httpx.post(server + "/v1/chat/completions", timeout=120, json={
        "model": SMOL, "temperature": 0, "max_tokens": 24,
        "messages": [{"role": "system", "content": "You answer in one short sentence."},
                     {"role": "system", "content": "Mention a fruit."},
                     {"role": "user", "content": "Hi! Who are you?"},
                     {"role": "assistant", "content": "An assistant."},
                     {"role": "user", "content": "Name a colour."}]}).json()  # fmt: skip
    assert _text_of(r) == chat["choices"][0]["message"]["content"] and _text_of(r)
    assert r["usage"]["input_tokens"] == chat["usage"]["prompt_tokens"]


def test_max_output_tokens_makes_it_incomplete(server: str, client: Any) -> None:
    r = client.responses.create(model=SMOL, input="Count from 1 to 100.", max_output_tokens=3,
                                temperature=0)  # fmt: skip
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert r.usage.output_tokens == 3 and r.output[0].status == "incomplete"
    assert r.max_output_tokens == 3
    events = _events(server, model=SMOL, input="Count from 1 to 100.", max_output_tokens=3,
                     temperature=0)  # fmt: skip
    assert events[-1]["type"] == "response.incomplete"
    assert events[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}


def test_logprobs_of_the_answer_whole_and_streamed(server: str) -> None:
    args = {"model": SMOL, "input": "Name a colour.", "max_output_tokens": 4, "temperature": 0,
            "include": ["message.output_text.logprobs"], "top_logprobs": 2}  # fmt: skip
    part = _create(server, **args)["output"][0]["content"][0]
    lps = part["logprobs"]
    assert len(lps) == 4 and "".join(t["token"] for t in lps) == part["text"]
    for t in lps:  # greedy: each token is the likeliest of its two alternatives
        assert [a["logprob"] for a in t["top_logprobs"]][0] == t["logprob"]
        assert len(t["top_logprobs"]) == 2 and t["bytes"] == list(t["token"].encode())
    events = _events(server, **args)
    streamed = [t for e in events if e["type"] == "response.output_text.delta"
                for t in e["logprobs"]]  # fmt: skip
    assert [t["token"] for t in streamed] == [t["token"] for t in lps]


# ---------------------------------------------------------------- streaming


def test_stream_events_in_order_and_deltas_join_to_the_text(server: str, client: Any) -> None:
    args = {"model": SMOL, "input": "Say hello.", "max_output_tokens": 60, "temperature": 0}
    events = _events(server, **args)
    kinds = [e["type"] for e in events]
    n = kinds.count("response.output_text.delta")
    assert n > 1 and kinds == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.content_part.added", *["response.output_text.delta"] * n,
        "response.output_text.done", "response.content_part.done",
        "response.output_item.done", kinds[-1]]  # fmt: skip
    assert kinds[-1] in ("response.completed", "response.incomplete")
    first, last = events[0]["response"], events[-1]["response"]
    assert first["status"] == "in_progress" and first["output"] == [] and first["id"] == last["id"]
    item_id = events[2]["item"]["id"]
    assert all(e["item_id"] == item_id and e["output_index"] == 0 for e in events[3:-2])
    joined = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert joined == events[-4]["text"] == _text_of(last) and joined.strip()
    assert last["usage"]["output_tokens"] > 0
    assert _text_of(_create(server, **args)) == joined  # greedy: the same reply whole
    if kinds[-1] == "response.completed":  # the SDK's helper accumulates the same text
        with client.responses.stream(**args) as s:
            deltas = [e.delta for e in s if e.type == "response.output_text.delta"]
            final = s.get_final_response()
        assert "".join(deltas) == final.output_text == joined


def test_sdk_stream_iterates_typed_events(client: Any) -> None:
    stream = client.responses.create(model=SMOL, input="Name a colour.", max_output_tokens=8,
                                     temperature=0, stream=True)  # fmt: skip
    events = list(stream)
    assert events[0].type == "response.created" and events[-1].type == "response.incomplete"
    assert [e.sequence_number for e in events] == list(range(len(events)))


# ---------------------------------------------------------------- tools


def test_forced_function_call_and_its_output_fed_back(server: str, client: Any) -> None:
    forced = {"type": "function", "name": "get_weather"}
    r = client.responses.create(model=QWEN, input=ASK, tools=[WEATHER], tool_choice=forced,
                                temperature=0)  # fmt: skip
    assert r.status == "completed" and [i.type for i in r.output] == ["function_call"]
    (call,) = r.output
    assert call.name == "get_weather" and call.call_id.startswith("call_")
    assert call.id.startswith("fc_") and call.status == "completed"
    args = json.loads(call.arguments)
    jsonschema.validate(args, WEATHER_PARAMS)
    assert "paris" in args["city"].lower()
    assert r.tool_choice.type == "function" and r.tools[0].name == "get_weather"
    items = [{"role": "user", "content": ASK}, call.model_dump(exclude_none=True),
             {"type": "function_call_output", "call_id": call.call_id,
              "output": "It is 25 degrees and sunny."}]  # fmt: skip
    again = _create(server, model=QWEN, input=items, tools=[WEATHER], tool_choice="none",
                    temperature=0, max_output_tokens=48)  # fmt: skip
    assert [i["type"] for i in again["output"]] == ["message"] and "25" in _text_of(again)


def test_a_forced_call_streamed(server: str) -> None:
    events = _events(server, model=QWEN, input=ASK, tools=[WEATHER], tool_choice="required",
                     temperature=0)  # fmt: skip
    kinds = [e["type"] for e in events]
    assert kinds == ["response.created", "response.in_progress", "response.output_item.added",
                     "response.function_call_arguments.delta",
                     "response.function_call_arguments.done", "response.output_item.done",
                     "response.completed"]  # fmt: skip
    added, delta, done, item_done = events[2:6]
    assert added["item"]["type"] == "function_call" and added["item"]["arguments"] == ""
    assert delta["delta"] == done["arguments"] == item_done["item"]["arguments"]
    jsonschema.validate(json.loads(done["arguments"]), WEATHER_PARAMS)
    assert events[-1]["response"]["output"] == [item_done["item"]]


def test_a_call_cut_off_is_an_incomplete_response(server: str) -> None:
    events = _events(server, model=QWEN, input=ASK, tools=[WEATHER], tool_choice="required",
                     max_output_tokens=4, temperature=0)  # fmt: skip
    assert not any(e["type"] == "error" for e in events)
    assert events[-1]["type"] == "response.incomplete"
    details = events[-1]["response"]["incomplete_details"]
    assert details == {"reason": "max_output_tokens"}


# ---------------------------------------------------------------- structured output


def test_text_format_json_schema_strict_validates(client: Any) -> None:
    schema = {"type": "object", "additionalProperties": False, "required": ["name", "year"],
              "properties": {"name": {"type": "string"}, "year": {"type": "integer"}}}  # fmt: skip
    r = client.responses.create(
        model=QWEN, input="A famous physicist and the year of their birth, as JSON.",
        temperature=0, max_output_tokens=80,
        text={"format": {"type": "json_schema", "name": "person", "schema": schema,
                         "strict": True}})  # fmt: skip
    assert r.status == "completed"
    jsonschema.validate(json.loads(r.output_text), schema)
    assert r.text.format.type == "json_schema" and r.text.format.name == "person"
    obj = client.responses.create(
        model=QWEN,
        input="A colour and its hex code, as JSON.",
        temperature=0,
        max_output_tokens=80,
        text={"format": {"type": "json_object"}},
    )
    assert obj.status == "completed" and isinstance(json.loads(obj.output_text), dict)


# ---------------------------------------------------------------- reasoning


def test_reasoning_items_whole_and_streamed(server: str) -> None:
    args = {"model": THINK, "input": "Name a colour.", "max_output_tokens": 10,
            "temperature": 0, "reasoning": {"effort": "high"}}  # fmt: skip
    r = _create(server, **args)
    assert r["status"] == "incomplete" and r["reasoning"]["effort"] == "high"
    thought = r["output"][0]
    assert thought["type"] == "reasoning" and thought["id"].startswith("rs_")
    assert thought["summary"] == [] and thought["content"][0]["type"] == "reasoning_text"
    assert thought["content"][0]["text"] and "<think>" not in thought["content"][0]["text"]
    assert r["usage"]["output_tokens_details"]["reasoning_tokens"] == 10
    events = _events(server, **args)
    kinds = [e["type"] for e in events]
    assert kinds[2:4] == ["response.output_item.added", "response.content_part.added"]
    assert events[3]["part"] == {"type": "reasoning_text", "text": ""}
    joined = "".join(e["delta"] for e in events if e["type"] == "response.reasoning_text.delta")
    (done,) = [e for e in events if e["type"] == "response.reasoning_text.done"]
    assert joined == done["text"] and joined.strip() == thought["content"][0]["text"]
    assert events[-1]["type"] == "response.incomplete"


# ---------------------------------------------------------------- bad requests


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"previous_response_id": "resp_1"}, "previous_response_id", "keeps no responses"),
        ({"store": True}, "store", "keeps no responses"),
        ({"conversation": "conv_1"}, "conversation", "keeps no responses"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input", "keeps no"),
        ({"frobnicate": 1}, "frobnicate", "unknown field"),
        ({"temperature": "hot"}, "temperature", "temperature"),
        ({"temperature": 7e9}, "temperature", "temperature"),
        ({"max_output_tokens": 0}, "max_output_tokens", "max_output_tokens"),
        ({"stream": "yes"}, "stream", "stream"),
        ({"input": 5}, "input", "input"),
        ({"input": []}, "input", "input"),
        ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
         "input", "text parts"),
        ({"input": [{"role": "robot", "content": "hi"}]}, "input", "role"),
        ({"input": [{"role": "user", "content": "hi", "colour": 1}]}, "input", "colour"),
        ({"input": [{"type": "function_call", "call_id": "c", "name": "f"}]}, "input",
         "arguments"),
        ({"tools": {"type": "function"}}, "tools", "list"),
        ({"tools": [{"type": "web_search"}]}, "tools", "only function tools"),
        ({"tools": [{**WEATHER, "parameters": "x"}]}, "tools", "parameters"),
        ({"tool_choice": "sometimes"}, "tool_choice", "tool_choice"),
        ({"text": {"format": {"type": "xml"}}}, "text", "json_schema"),
        ({"text": {"format": {"type": "json_schema", "name": "x"}}}, "text", "schema"),
        ({"reasoning": {"effort": "enormous"}}, "reasoning", "effort"),
        ({"include": ["file_search_call.results"]}, "include", "file_search_call.results"),
        ({"truncation": "auto"}, "truncation", "truncation"),
        ({"metadata": {"k": 1}}, "metadata", "metadata"),
        ({"top_logprobs": 21}, "top_logprobs", "top_logprobs"),
    ],
)  # fmt: skip
def test_bad_bodies_are_400s_naming_the_field(server: str, body: dict[str, Any], param: str,
                                              words: str) -> None:  # fmt: skip
    r = httpx.post(server + "/v1/responses", json={"model": SMOL, "input": "hi", **body})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["param"] == param
    assert err["type"] == "invalid_request_error" and words in err["message"]


def test_the_sdk_raises_bad_request(client: Any) -> None:
    with pytest.raises(openai.BadRequestError, match="keeps no responses"):
        client.responses.create(model=SMOL, input="hi", previous_response_id="resp_x")
    with pytest.raises(openai.BadRequestError, match="needs tools"):
        client.responses.create(model=SMOL, input="hi", tool_choice="required")


# ---------------------------------------------------------------- openai-agents


@pytest.fixture()
def agents(server: str) -> Any:
    """openai-agents on a client of its own (its connections belong to one event loop)."""
    ag = pytest.importorskip("agents")
    ag.set_default_openai_client(
        openai.AsyncOpenAI(base_url=server + "/v1", api_key="unused", max_retries=0),
        use_for_tracing=False,
    )
    ag.set_tracing_disabled(True)
    ag.set_default_openai_api("responses")  # the default, said out loud
    return ag


def test_agents_function_tool(agents: Any) -> None:
    cities = []

    @agents.function_tool
    def get_weather(city: str) -> str:
        """The current weather in a city."""
        cities.append(city)
        return f"Sunny in {city}"

    agent = agents.Agent(
        name="weather", instructions="Use the tools.", tools=[get_weather], model=QWEN,
        model_settings=agents.ModelSettings(tool_choice="required", temperature=0),
        tool_use_behavior="stop_on_first_tool")  # fmt: skip
    result = asyncio.run(agents.Runner.run(agent, "What is the weather in Paris?"))
    assert len(cities) == 1 and "paris" in cities[0].lower()
    assert result.final_output == f"Sunny in {cities[0]}"


def test_agents_output_type(agents: Any) -> None:
    from pydantic import BaseModel

    class City(BaseModel):
        name: str
        country: str
        population: int

    settings = agents.ModelSettings(temperature=0, max_tokens=80)
    agent = agents.Agent(name="facts", instructions="Answer with facts about the city.",
                         output_type=City, model=QWEN, model_settings=settings)  # fmt: skip

    async def both() -> tuple[Any, Any, list[str]]:  # one event loop: one client's
        whole = await agents.Runner.run(agent, "Tell me about Paris.")
        run = agents.Runner.run_streamed(agent, "Tell me about Tokyo.")
        kinds = [e.type async for e in run.stream_events()]
        return whole.final_output, run.final_output, kinds

    paris, tokyo, kinds = asyncio.run(both())
    assert isinstance(paris, City) and "paris" in paris.name.lower()
    assert isinstance(tokyo, City) and "tokyo" in tokyo.name.lower()
    assert "raw_response_event" in kinds


# ---------------------------------------------------------------- the adapter alone


def _reply(**body: Any) -> Any:
    call = adapter.ADAPTER.parse({"input": "hi", **body})
    return adapter.ADAPTER.reply(call, Meta("m", 1_700_000_000, 0.0))


def _accumulate(events: list[Any]) -> Any:
    """The final response of ``client.responses.stream`` served these events (the SDK's
    helper checks their order, indices and ids as it accumulates them)."""
    for e in events:
        assert e.name == e.data["type"]
        EVENT.validate_python(e.data)
    sse = "".join(f"event: {e.name}\ndata: {json.dumps(e.data)}\n\n" for e in events)

    def serve(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/event-stream"},
                              content=sse.encode())  # fmt: skip

    http = httpx.Client(transport=httpx.MockTransport(serve))
    sdk = openai.OpenAI(base_url="http://ggrun/v1", api_key="unused", http_client=http)
    with sdk.responses.stream(model="m", input="hi") as s:
        for _ in s:
            pass
        return s.get_final_response()


def test_reasoning_then_blanks_then_calls_stream_in_order() -> None:
    rep = _reply(tools=[WEATHER])
    calls = [ToolCall("get_weather", {"city": "Oslo", "unit": "celsius"}),
             ToolCall("get_weather", {"city": "Rome", "unit": "celsius"})]  # fmt: skip
    chunks = [Chunk(reasoning="\nLet me"), Chunk(reasoning=" look."), Chunk(text="\n\n"),
              Chunk(tool_calls=calls[:1]), Chunk(text="\n"),
              Chunk(tool_calls=calls[1:], finish_reason="tool_calls")]  # fmt: skip
    events = rep.head() + [e for c in chunks for e in rep.chunk(c)]
    r = Result("\n\n\n", "tool_calls", prompt_tokens=5, completion_tokens=30,
               reasoning_tokens=4, reasoning="Let me look.", tool_calls=calls)  # fmt: skip
    events += rep.end(r)
    final = _accumulate(events)
    assert [i.type for i in final.output] == ["reasoning", "function_call", "function_call"]
    assert final.output[0].content[0].text == "\nLet me look."
    assert [i.call_id for i in final.output[1:]] == [c.id for c in calls]
    assert [d["output_index"] for d in (e.data for e in events) if "output_index" in d][-1] == 2
    whole = rep.whole(r)
    Response.model_validate(whole)
    assert [i["type"] for i in whole["output"]] == ["reasoning", "function_call", "function_call"]
    assert whole["usage"]["output_tokens_details"]["reasoning_tokens"] == 4


def test_text_after_a_thought_and_an_empty_reply() -> None:
    rep = _reply()
    chunks = [Chunk(reasoning="Hm."), Chunk(text="\n\nBlue"), Chunk(text=".", finish_reason="stop")]
    events = [*rep.head(), *(e for c in chunks for e in rep.chunk(c))]
    final = _accumulate(events + rep.end(Result("Blue.", "stop")))
    assert [i.type for i in final.output] == ["reasoning", "message"]
    assert final.output_text == "\n\nBlue." and final.status == "completed"
    empty = _reply()
    events = empty.head() + empty.end(Result("", "stop"))
    assert _accumulate(events).output[0].content[0].text == ""
    assert empty.whole(Result("", "stop"))["output"][0]["type"] == "message"


def test_an_error_mid_stream_is_an_error_event() -> None:
    rep = _reply()
    rep.head()
    rep.chunk(Chunk(text="Hi"))
    (err,) = rep.end(Result("Hi", "length", error="the output was cut off"))
    assert err.name == "error" and err.data["message"] == "the output was cut off"
    EVENT.validate_python(err.data)


@pytest.mark.parametrize(
    ("effort", "think"),
    [(None, None), ("none", False), ("minimal", False), ("low", True), ("high", True)],
)
def test_reasoning_effort_is_qwen3s_switch(effort: str | None, think: bool | None) -> None:
    assert adapter.options({"input": "hi", "reasoning": {"effort": effort}})[0]["think"] is think


def test_what_openai_agents_sends_is_taken() -> None:
    """The body openai-agents 0.x sends for an agent with a tool (``store`` unset)."""
    body = {"model": QWEN, "include": [], "input": [{"content": "Hi", "role": "user"}],
            "instructions": "Be brief.", "tool_choice": "required",
            "tools": [{"name": "f", "parameters": {"type": "object", "properties": {}},
                       "strict": True, "type": "function", "description": "F."}]}  # fmt: skip
    call = adapter.ADAPTER.parse(body)
    assert isinstance(call, Call) and call.options["tool_choice"] == "required"
    assert call.options["messages"][0] == {"role": "system", "content": "Be brief."}
    assert call.options["tools"][0]["function"]["name"] == "f"
    # its next turn replays the output items (a thought, a message, a call) and the result
    body["input"] += [
        {"id": "rs_1", "summary": [], "type": "reasoning", "status": "completed",
         "content": [{"text": "hmm", "type": "reasoning_text"}]},
        {"id": "msg_0", "role": "assistant", "status": "completed", "type": "message",
         "content": [{"annotations": [], "text": "Checking.", "type": "output_text",
                      "logprobs": []}]},
        {"arguments": "{}", "call_id": "call_1", "name": "f", "type": "function_call",
         "id": "fc_1", "status": "completed"},
        {"call_id": "call_1", "output": "done", "type": "function_call_output"},
    ]  # fmt: skip
    msgs = Request.build(**adapter.ADAPTER.parse(body).options).messages
    assert msgs is not None and [m.role for m in msgs] == ["system", "user", "assistant", "tool"]
    assert msgs[2].content == "Checking." and msgs[2].tool_calls[0]["id"] == "call_1"
    assert msgs[3].content == "done" and msgs[3].tool_call_id == "call_1"


def test_function_calls_join_the_assistant_turn_before_them() -> None:
    opts, _ = adapter.options({"input": [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": "Let me check."},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
        {"type": "function_call", "call_id": "c2", "name": "f", "arguments": "{\"a\": 1}"},
        {"type": "function_call_output", "call_id": "c1", "output": "one"},
        {"type": "function_call_output", "call_id": "c2",
         "output": [{"type": "input_text", "text": "two"}]}]})  # fmt: skip
    msgs = opts["messages"]
    assert [m["role"] for m in msgs] == ["user", "assistant", "tool", "tool"]
    assert [c["id"] for c in msgs[1]["tool_calls"]] == ["c1", "c2"]
    assert msgs[1]["content"] == "Let me check." and msgs[3]["content"] == "two"


def test_allowed_tools_narrow_the_tools() -> None:
    other = {**WEATHER, "name": "get_time"}
    opts, echo = adapter.options({"input": "hi", "tools": [WEATHER, other], "tool_choice": {
        "type": "allowed_tools", "mode": "required",
        "tools": [{"type": "function", "name": "get_time"}]}})  # fmt: skip
    assert [t["function"]["name"] for t in opts["tools"]] == ["get_time"]
    assert opts["tool_choice"] == "required" and len(echo["tools"]) == 2


def test_an_api_error_renders_in_openais_shape() -> None:
    e = ApiError(400, "nope", param="input")
    assert adapter.ADAPTER.error(e) == {"error": {"message": "nope", "type":
                                                  "invalid_request_error", "param": "input",
                                                  "code": None}}  # fmt: skip
