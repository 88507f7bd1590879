"""Tool calling on real models: definitions, every tool_choice, streaming, the round trip,
auto_run, batch lines and the CLI. (The server's side is in tests/test_server.py.)"""

from __future__ import annotations

import enum
import json
from pathlib import Path
from typing import Any, Literal

import jsonschema
import pydantic
import pytest
from typer.testing import CliRunner

from ggrun.batching import batch
from ggrun.chat import Chat
from ggrun.cli.app import app
from ggrun.errors import GrammarError, InvalidArgument
from ggrun.request import Request
from ggrun.tools import OPEN, from_function, to_tools


def get_weather(city: str, unit: Literal["c", "f"] = "c") -> str:
    """Current weather for a city.

    Args:
        city: The city, e.g. Paris.
        unit: Celsius or Fahrenheit.
    """
    return f"It is 18 degrees {unit.upper()} and sunny in {city}."


def calculate(expression: str) -> float:
    """Evaluate an arithmetic expression such as 2 * (3 + 4)."""
    allowed = set("0123456789+-*/(). ")
    if not set(expression) <= allowed:
        raise ValueError("only arithmetic is allowed")
    return float(eval(expression))  # noqa: S307 - digits and operators only


class Colour(enum.Enum):
    RED = "red"
    BLUE = "blue"


def find_product(category: Literal["books", "music", "games"], filters: dict[str, Any],
                 colour: Colour | None = None, tags: list[str] | None = None) -> str:  # fmt: skip
    """Look up a product in the shop's catalogue."""
    return "found"


class Address(pydantic.BaseModel):
    street: str
    number: int


def ship(to: Address) -> str:
    """Ship the order."""
    return "ok"


LOOKUP = {
    "type": "function",
    "function": {
        "name": "lookup",
        "description": "Look up a customer record.",
        "parameters": {
            "type": "object",
            "properties": {
                "kind": {"enum": ["person", "company"]},
                "where": {
                    "type": "object",
                    "properties": {"country": {"type": "string"}, "city": {"type": "string"}},
                    "required": ["country"],
                },
            },
            "required": ["kind", "where"],
        },
    },
}
TOOLS = [get_weather, calculate, LOOKUP]


def test_a_function_becomes_a_tool_schema() -> None:
    t = from_function(get_weather)
    assert t.name == "get_weather" and t.description == "Current weather for a city."
    p = t.parameters
    assert p["required"] == ["city"] and p["properties"]["unit"]["enum"] == ["c", "f"]
    assert p["properties"]["unit"]["default"] == "c"
    assert p["properties"]["city"]["description"] == "The city, e.g. Paris."
    q = from_function(find_product).parameters["properties"]
    assert q["category"] == {"enum": ["books", "music", "games"]}
    assert q["filters"] == {"type": "object"}
    assert q["colour"]["anyOf"] == [{"enum": ["red", "blue"]}, {"type": "null"}]
    assert q["tags"]["anyOf"][0] == {"type": "array", "items": {"type": "string"}}
    schema = from_function(ship).parameters["properties"]["to"]
    jsonschema.validate({"street": "Main", "number": 3}, schema)


@pytest.mark.parametrize(
    ("tools", "error"),
    [
        ("not a list", "tools must be a list"),
        ([{"type": "function"}], "must be"),
        ([{"type": "function", "function": {"name": "x y"}}], "name"),
        (
            [
                {
                    "type": "function",
                    "function": {
                        "name": "f",
                        "parameters": {
                            "type": "object",
                            "properties": {"n": {"type": "number", "not": {"const": 1}}},
                        },
                    },
                }
            ],
            "'not'",
        ),  # fmt: skip
        ([get_weather, get_weather], "used twice"),
        ([42], "must be a function"),
    ],
)
def test_bad_tool_definitions(tools: Any, error: str) -> None:
    with pytest.raises((InvalidArgument, GrammarError), match=error):
        Request.build(messages=[{"role": "user", "content": "x"}], tools=tools)


def test_tool_choice_and_combinations_are_checked() -> None:
    msgs = [{"role": "user", "content": "x"}]
    with pytest.raises(InvalidArgument, match="not one of the tools"):
        Request.build(
            messages=msgs,
            tools=TOOLS,
            tool_choice={"type": "function", "function": {"name": "nope"}},
        )
    with pytest.raises(InvalidArgument, match="needs tools"):
        Request.build(messages=msgs, tool_choice="required")
    with pytest.raises(InvalidArgument, match="cannot be combined"):
        Request.build(messages=msgs, tools=TOOLS, json=True)
    assert len(to_tools(TOOLS)) == 3


def _check(r: Any, tools: list[Any] = TOOLS) -> None:
    """Every call validates against its tool; no call markup in the content."""
    by_name = {t.name: t for t in to_tools(tools)}
    for c in r.tool_calls:
        jsonschema.validate(c.arguments, by_name[c.name].parameters)
    assert OPEN not in r.text and "</tool_call>" not in r.text
    if r.tool_calls:
        assert r.finish_reason == "tool_calls"


def _ask(model: Any, text: str, **kw: Any) -> Any:
    kw = {"tools": TOOLS, "temperature": 0, "max_tokens": 160, **kw}
    return model.chat([{"role": "user", "content": text}], **kw)


def test_every_tool_choice(qwen: Any) -> None:
    auto = _ask(qwen, "What is the weather in Paris right now?")
    _check(auto)
    assert [c.name for c in auto.tool_calls] == ["get_weather"]
    assert auto.tool_calls[0].arguments["city"] == "Paris"
    none = _ask(qwen, "What is the weather in Paris right now?", tool_choice="none")
    assert not none.tool_calls and none.text.strip() and none.finish_reason == "stop"
    required = _ask(qwen, "Hello!", tool_choice="required")
    _check(required)
    assert required.tool_calls  # a call, whatever the message
    named = _ask(qwen, "What is 6 times 7?",
                 tool_choice={"type": "function", "function": {"name": "calculate"}})  # fmt: skip
    _check(named)
    assert [c.name for c in named.tool_calls] == ["calculate"]
    assert calculate(named.tool_calls[0].arguments["expression"]) == 42


def test_streaming_equals_the_whole(qwen: Any) -> None:
    msgs = [{"role": "user", "content": "What is the weather in Oslo?"}]
    whole = qwen.chat(msgs, tools=TOOLS, temperature=0, max_tokens=160)
    chunks = list(qwen.chat_stream(msgs, tools=TOOLS, temperature=0, max_tokens=160))
    calls = [c for ch in chunks for c in ch.tool_calls]
    assert [(c.name, c.arguments) for c in calls] == [
        (c.name, c.arguments) for c in whole.tool_calls
    ]
    assert "".join(ch.text for ch in chunks) == whole.text
    assert chunks[-1].finish_reason == whole.finish_reason


def test_plain_questions_get_plain_answers(qwen: Any) -> None:
    r = _ask(qwen, "Reply with one word: what colour is grass?")
    _check(r)
    assert not r.tool_calls and r.text.strip()


def test_auto_run_reports_a_raising_tool_and_goes_on(qwen: Any) -> None:
    def broken(city: str) -> str:
        """Current weather for a city."""
        raise RuntimeError("the weather service is down")

    chat = Chat(qwen, tools=[broken], auto_run=True, max_steps=2, temperature=0, max_tokens=120)
    r = chat.send("What is the weather in Paris?")
    tool_msgs = [m for m in chat.history if m.role == "tool"]
    assert tool_msgs and "RuntimeError: the weather service is down" in tool_msgs[0].content
    assert tool_msgs[0].tool_call_id == chat.history[1].tool_calls[0]["id"]
    assert r.finish_reason in ("stop", "tool_calls", "length")
    assert chat.send("Thanks!").text is not None  # the chat goes on


@pytest.mark.slow
def test_round_trip_uses_the_result(qwen15: Any) -> None:
    runs = []

    def weather(city: str, unit: Literal["c", "f"] = "c") -> str:
        """Current weather for a city."""
        runs.append(city)
        return get_weather(city, unit)

    chat = Chat(qwen15, tools=[weather], auto_run=True, temperature=0, max_tokens=120)
    r = chat.send("What is the weather in Lisbon? Use the tool, then tell me.")
    roles = [m.role for m in chat.history]
    assert roles[:3] == ["user", "assistant", "tool"] and chat.history[1].tool_calls
    assert not r.tool_calls and "18" in r.text  # the final answer uses the tool's result
    # this model repeats its call once: the function is not run again, and the reply is
    # drawn again with tool calls closed, after the one result (so the repeat is not kept)
    assert runs == ["Lisbon"]
    assert [m.role for m in chat.history] == ["user", "assistant", "tool", "assistant"]


def test_history_round_trip_renders_in_the_template(qwen: Any) -> None:
    msgs = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },  # fmt: skip
        {"role": "tool", "tool_call_id": "call_1", "content": "It is 18 degrees C."},
    ]
    prompt = qwen.format_chat(Request.build(messages=msgs).messages, tools=to_tools(TOOLS))
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}' in prompt
    assert "<tool_response>\nIt is 18 degrees C.\n</tool_response>" in prompt
    assert '"name": "calculate"' in prompt  # the tool list, in the template's own section
    r = qwen.chat(msgs, tools=TOOLS, temperature=0, max_tokens=60)
    _check(r)


def test_a_template_without_tools_gets_instructions(smol: Any) -> None:
    r = _ask(smol, "Weather in Rome?", tool_choice="required")
    _check(r)  # SmolLM2's template has no tool section: valid all the same
    assert r.tool_calls
    prompt = smol.format_chat([{"role": "user", "content": "x"}], tools=to_tools(TOOLS))
    assert "<tools>" in prompt and '"name": "get_weather"' in prompt


def test_a_cut_off_call_is_an_error_not_half_a_call(qwen: Any) -> None:
    from ggrun.structured import IncompleteOutput

    with pytest.raises(IncompleteOutput, match="tool call"):
        _ask(qwen, "What is the weather in Paris?", tool_choice="required", max_tokens=6)


def test_batch_lines_carry_tools(smol: Any) -> None:
    lines = [
        {
            "id": "a",
            "messages": [{"role": "user", "content": "Weather in Rome?"}],
            "tools": [LOOKUP],
            "tool_choice": "required",
        },  # fmt: skip
        {"id": "b", "messages": [{"role": "user", "content": "hi"}], "tools": "nope"},
    ]
    a, b = batch(smol, lines, parallel=2, max_tokens=80, temperature=0)
    assert a.error is None and a.tool_calls and a.tool_calls[0].name == "lookup"
    jsonschema.validate(a.tool_calls[0].arguments, LOOKUP["function"]["parameters"])
    assert b.error and "tools" in b.error


def test_cli_generate_prints_the_calls(qwen_path: Path, tmp_path: Path) -> None:
    f = tmp_path / "tools.json"
    f.write_text(json.dumps([LOOKUP]))
    r = CliRunner().invoke(app, ["generate", str(qwen_path), "Find the company Acme in Berlin, "
                                 "Germany.", "--tools", str(f), "--tool-choice", "required",
                                 "--temp", "0", "--ctx", "1024"])  # fmt: skip
    assert r.exit_code == 0, r.output
    calls = json.loads(r.stdout)
    assert calls[0]["name"] == "lookup" and calls[0]["arguments"]["where"]["country"]


PLACE_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "find_contact",
            "parameters": {
                "type": "object",
                "properties": {"where": {"$ref": "#/$defs/Place"}},
                "required": ["where"],
                "$defs": {
                    "Place": {
                        "type": "object",
                        "properties": {"country": {"type": "string"}, "city": {"type": "string"}},
                        "required": ["country", "city"],
                        "additionalProperties": False,
                    }
                },
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "book",
            "parameters": {
                "type": "object",
                "properties": {"slot": {"$ref": "#/$defs/Place"}},
                "required": ["slot"],
                "$defs": {"Place": {"type": "integer", "minimum": 1}},
            },
        },
    },
]  # fmt: skip  (a pydantic model argument: FastMCP and model_json_schema() write $defs)


def test_tools_with_their_own_defs_get_valid_calls(smol: Any) -> None:
    """Each tool's "#/$defs/..." means its own parameters' root, also beside another tool
    whose $defs has the same name (the grammar once resolved them against the wrapper)."""
    for choice in ("find_contact", "book"):
        r = _ask(smol, "Find the contact in Paris, France, or book slot 3.", tools=PLACE_TOOLS,
                 tool_choice={"type": "function", "function": {"name": choice}})  # fmt: skip
        _check(r, PLACE_TOOLS)
        assert [c.name for c in r.tool_calls] == [choice]
