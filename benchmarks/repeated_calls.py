"""Tool round trips that end in a text answer: with the server's redraw of a repeated
call (the default), and with the model's own habit let through (``allow_repeated_calls``).

One ``ggrun serve`` process. For each case (a city, and a weather report the model cannot
guess), a round trip runs twice, once per mode, through two real clients:

- the openai SDK: a first chat turn with the tool (greedy), the tool's answer sent back,
  a second turn; the outcome is that second reply;
- openai-agents (``OpenAIChatCompletionsModel``, ``Runner.run`` with ``max_turns``).

An outcome is ``answer`` (text with the report's number in it), ``text`` (text without
it), ``call`` (another tool call), ``turns`` (openai-agents gave up: MaxTurnsExceeded) or
``error``. The tool runs are counted too.

    python benchmarks/repeated_calls.py --model qwen2.5-coder-1.5b
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.decode import resolve  # noqa: E402
from tests.helpers import serving  # noqa: E402

CASES = [("Lisbon", 18, "light rain"), ("Oslo", -3, "snow"), ("Nairobi", 24, "sunny"),
         ("Lima", 16, "overcast"), ("Hanoi", 31, "humid"), ("Perth", 27, "windy"),
         ("Quito", 14, "drizzle"), ("Tunis", 22, "clear")]  # fmt: skip
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}  # fmt: skip
MODES = {"redraw (default)": {}, "allow_repeated_calls": {"allow_repeated_calls": True}}


def report(city: str, degrees: int, sky: str) -> str:
    return f"{city}: {degrees} degrees, {sky}"


def outcome(text: str | None, calls: Any, degrees: int) -> str:
    if calls:
        return "call"
    return "answer" if text and str(degrees) in text else "text"


def sdk_trip(client: Any, model: str, case: tuple[str, int, str], extra: dict[str, Any],
             runs: list[str]) -> str:  # fmt: skip
    city, degrees, sky = case
    messages: list[Any] = [{"role": "user", "content": f"What is the weather in {city}? "
                            "Use the tool."}]  # fmt: skip
    kw = {"model": model, "tools": [WEATHER], "temperature": 0, "max_tokens": 80,
          "extra_body": extra}  # fmt: skip
    first = client.chat.completions.create(messages=messages, **kw).choices[0]
    if not first.message.tool_calls:
        return "no call"
    messages.append(first.message.model_dump(exclude_none=True))
    for call in first.message.tool_calls:
        runs.append(json.loads(call.function.arguments).get("city", ""))
        messages.append({"role": "tool", "tool_call_id": call.id,
                         "content": report(city, degrees, sky)})  # fmt: skip
    second = client.chat.completions.create(messages=messages, **kw).choices[0]
    return outcome(second.message.content, second.message.tool_calls, degrees)


def agents_trip(agents: Any, base: str, model: str, case: tuple[str, int, str],
                extra: dict[str, Any], runs: list[str]) -> str:  # fmt: skip
    import openai

    city, degrees, sky = case

    @agents.function_tool
    def get_weather(city: str) -> str:
        """The current weather in a city."""
        runs.append(city)
        return report(city, degrees, sky)

    async def trip() -> Any:  # the client lives and closes in the run's own event loop
        async with openai.AsyncOpenAI(base_url=base + "/v1", api_key="unused",
                                      max_retries=0) as client:  # fmt: skip
            m = agents.OpenAIChatCompletionsModel(model=model, openai_client=client)
            settings = agents.ModelSettings(temperature=0, max_tokens=80, extra_body=extra)
            agent = agents.Agent(name="weather", instructions="Use the tools.",
                                 tools=[get_weather], model=m, model_settings=settings)  # fmt: skip
            return await agents.Runner.run(agent, f"What is the weather in {city}?",
                                           max_turns=4)  # fmt: skip

    try:
        r = asyncio.run(trip())
    except agents.MaxTurnsExceeded:
        return "turns"
    except Exception as e:  # noqa: BLE001 - an outcome to count, not a crash
        print(f"  {city}: {type(e).__name__}: {str(e)[:120]}", file=sys.stderr)
        return "error"
    return outcome(str(r.final_output or ""), None, degrees)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="qwen2.5-coder-1.5b")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--home", type=Path, default=Path("/tmp/ggrun-bench-repeats"))
    a = ap.parse_args()
    import agents
    import openai

    agents.set_tracing_disabled(True)
    path = resolve(a.model)
    a.home.mkdir(parents=True, exist_ok=True)
    args = [str(path), "--parallel", "1", "--ctx", "2048", "--threads", str(a.threads)]
    tally: dict[tuple[str, str], collections.Counter[str]] = {}
    runs: dict[tuple[str, str], list[int]] = {}
    with serving(args, a.home) as base:
        client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)
        for case in CASES:
            for mode, extra in MODES.items():
                for name in ("openai SDK", "openai-agents"):
                    ran: list[str] = []
                    if name == "openai SDK":
                        got = sdk_trip(client, path.stem, case, extra, ran)
                    else:
                        got = agents_trip(agents, base, path.stem, case, extra, ran)
                    tally.setdefault((name, mode), collections.Counter())[got] += 1
                    runs.setdefault((name, mode), []).append(len(ran))
                    print(f"  {case[0]:8} {name:13} {mode:21} {got:6} tool runs {len(ran)}",
                          file=sys.stderr)  # fmt: skip
    print(f"{path.name}, {a.threads} threads, greedy, {len(CASES)} round trips per row")
    print("| client | mode | answer uses the result | text without it | another call "
          "| max turns | error | tool runs |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for (name, mode), c in tally.items():
        n = sum(c.values())
        print(
            f"| {name} | {mode} | {c['answer']}/{n} | {c['text']} | {c['call']} "
            f"| {c['turns']} | {c['error'] + c['no call']} | {sum(runs[name, mode])} |"
        )


if __name__ == "__main__":
    main()
