"""Tool calling: valid calls and exact-match accuracy, with ggrun's grammar and without it.

36 cases in the style of the Berkeley Function Calling Leaderboard: "simple" (one tool,
one call), "multiple" (several tools, the right one must be picked) and "parallel" (two
calls in one reply), each with the expected name and arguments. Every case runs twice
on each model: with the grammar (ggrun's default: calls valid by construction) and with
prompting only (the tools in the prompt, the reply parsed afterwards, as ollama does: tagged
calls, and JSON objects with a name and arguments, bare or in a fenced block).

It reports, per model and setting: call validity (schema-valid calls / calls made),
exact-match accuracy of names and arguments, replies with no call at all, and replies cut
off by ``max_tokens`` (200) before their call was complete (no call is returned for them).

    python benchmarks/tools.py --models qwen2.5-coder-0.5b,qwen2.5-coder-1.5b --out tools.json

A Qwen3-1.7B-shaped file with random weights (benchmarks/RESULTS.md says how it is made)
runs Qwen3's pipeline (its template, a thought closed by the budget, then the call grammar);
its calls can only show validity, so it runs with ``--tool-choice required``:

    python benchmarks/tools.py --models Qwen3-1.7B-shaped-Q4_K_M.gguf --grammar on \
        --tool-choice required --think-budget 16
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jsonschema  # noqa: E402

from ggrun.engine import LoadConfig, Model  # noqa: E402
from ggrun.errors import GgrunError  # noqa: E402
from ggrun.request import Request  # noqa: E402
from ggrun.textstream import Result  # noqa: E402
from ggrun.tools import to_tools  # noqa: E402


def fn(name: str, desc: str, props: dict[str, Any], required: list[str]) -> dict[str, Any]:
    params = {"type": "object", "properties": props, "required": required}
    return {"type": "function", "function": {"name": name, "description": desc,
                                             "parameters": params}}  # fmt: skip


S, N = {"type": "string"}, {"type": "number"}
WEATHER = fn("get_weather", "Current weather for a city.",
             {"city": S, "unit": {"enum": ["celsius", "fahrenheit"]}}, ["city"])  # fmt: skip
CALC = fn("calculate", "Evaluate an arithmetic expression.", {"expression": S}, ["expression"])
CURRENCY = fn("convert_currency", "Convert an amount of money between currencies.",
              {"amount": N, "from_currency": S, "to_currency": S},
              ["amount", "from_currency", "to_currency"])  # fmt: skip
FLIGHTS = fn("search_flights", "Find flights between two cities on a date, as YYYY-MM-DD.",
             {"origin": S, "destination": S, "date": S},
             ["origin", "destination", "date"])  # fmt: skip
REMIND = fn("set_reminder", "Set a reminder in some minutes.",
            {"text": S, "minutes": {"type": "integer"}}, ["text", "minutes"])  # fmt: skip
STOCK = fn("get_stock_price", "The latest price of a stock by its ticker symbol.",
           {"symbol": S}, ["symbol"])  # fmt: skip
LOOKUP = fn("lookup_customer", "Find a customer record.",
            {"kind": {"enum": ["person", "company"]},
             "where": {"type": "object", "properties": {"country": S, "city": S},
                       "required": ["country", "city"]}}, ["kind", "where"])  # fmt: skip
ALL = [WEATHER, CALC, CURRENCY, FLIGHTS, REMIND, STOCK, LOOKUP]


def call(name: str, **args: Any) -> dict[str, Any]:
    return {"name": name, "arguments": args}


CASES: list[tuple[str, str, list[dict[str, Any]], list[dict[str, Any]]]] = [
    # (category, question, tools offered, expected calls)
    ("simple", "What's the weather in Paris?", [WEATHER], [call("get_weather", city="Paris")]),
    (
        "simple",
        "How warm is it in Tokyo right now?",
        [WEATHER],
        [call("get_weather", city="Tokyo")],
    ),
    (
        "simple",
        "Weather in Berlin in fahrenheit please.",
        [WEATHER],
        [call("get_weather", city="Berlin", unit="fahrenheit")],
    ),  # fmt: skip
    ("simple", "Compute 17 * 23.", [CALC], [call("calculate", expression="17 * 23")]),
    ("simple", "What is (4 + 5) * 3?", [CALC], [call("calculate", expression="(4 + 5) * 3")]),
    (
        "simple",
        "Convert 100 USD to EUR.",
        [CURRENCY],
        [call("convert_currency", amount=100, from_currency="USD", to_currency="EUR")],
    ),  # fmt: skip
    (
        "simple",
        "Find flights from London to Rome on 2025-06-01.",
        [FLIGHTS],
        [call("search_flights", origin="London", destination="Rome", date="2025-06-01")],
    ),  # fmt: skip
    (
        "simple",
        "Remind me to call mom in 30 minutes.",
        [REMIND],
        [call("set_reminder", text="call mom", minutes=30)],
    ),  # fmt: skip
    ("simple", "What's the price of AAPL?", [STOCK], [call("get_stock_price", symbol="AAPL")]),
    (
        "simple",
        "Find the company Acme in Berlin, Germany.",
        [LOOKUP],
        [call("lookup_customer", kind="company", where={"country": "Germany", "city": "Berlin"})],
    ),  # fmt: skip
    (
        "simple",
        "Look up the person Jane Roe in Lyon, France.",
        [LOOKUP],
        [call("lookup_customer", kind="person", where={"country": "France", "city": "Lyon"})],
    ),  # fmt: skip
    ("simple", "Stock price of MSFT?", [STOCK], [call("get_stock_price", symbol="MSFT")]),
    ("multiple", "What's the weather in Madrid?", ALL, [call("get_weather", city="Madrid")]),
    ("multiple", "Calculate 250 / 5.", ALL, [call("calculate", expression="250 / 5")]),
    (
        "multiple",
        "How much is 50 GBP in JPY?",
        ALL,
        [call("convert_currency", amount=50, from_currency="GBP", to_currency="JPY")],
    ),  # fmt: skip
    (
        "multiple",
        "Any flights from Oslo to Vienna on 2025-09-15?",
        ALL,
        [call("search_flights", origin="Oslo", destination="Vienna", date="2025-09-15")],
    ),  # fmt: skip
    (
        "multiple",
        "Set a reminder to water the plants in 45 minutes.",
        ALL,
        [call("set_reminder", text="water the plants", minutes=45)],
    ),  # fmt: skip
    ("multiple", "What's NVDA trading at?", ALL, [call("get_stock_price", symbol="NVDA")]),
    (
        "multiple",
        "Find the person Ada Lovelace in London, UK.",
        ALL,
        [call("lookup_customer", kind="person", where={"country": "UK", "city": "London"})],
    ),  # fmt: skip
    ("multiple", "Is it raining in Seattle?", ALL, [call("get_weather", city="Seattle")]),
    (
        "multiple",
        "What is 2 to the power of 10? Use the calculator.",
        ALL,
        [call("calculate", expression="2 ** 10")],
    ),  # fmt: skip
    (
        "multiple",
        "Convert 20 EUR into USD.",
        ALL,
        [call("convert_currency", amount=20, from_currency="EUR", to_currency="USD")],
    ),  # fmt: skip
    (
        "multiple",
        "Remind me in 10 minutes to stretch.",
        ALL,
        [call("set_reminder", text="stretch", minutes=10)],
    ),  # fmt: skip
    ("multiple", "Price of the TSLA stock, please.", ALL, [call("get_stock_price", symbol="TSLA")]),
    (
        "parallel",
        "What's the weather in Oslo and in Rome?",
        [WEATHER],
        [call("get_weather", city="Oslo"), call("get_weather", city="Rome")],
    ),  # fmt: skip
    (
        "parallel",
        "Compute 3 + 4 and 10 - 2.",
        [CALC],
        [call("calculate", expression="3 + 4"), call("calculate", expression="10 - 2")],
    ),  # fmt: skip
    (
        "parallel",
        "Get the prices of AAPL and GOOG.",
        [STOCK],
        [call("get_stock_price", symbol="AAPL"), call("get_stock_price", symbol="GOOG")],
    ),  # fmt: skip
    (
        "parallel",
        "Weather in Lima and the price of IBM stock.",
        ALL,
        [call("get_weather", city="Lima"), call("get_stock_price", symbol="IBM")],
    ),  # fmt: skip
    (
        "parallel",
        "Convert 10 USD to EUR and 10 USD to GBP.",
        [CURRENCY],
        [
            call("convert_currency", amount=10, from_currency="USD", to_currency="EUR"),
            call("convert_currency", amount=10, from_currency="USD", to_currency="GBP"),
        ],
    ),  # fmt: skip
    (
        "parallel",
        "Remind me to eat in 60 minutes and to sleep in 120 minutes.",
        [REMIND],
        [
            call("set_reminder", text="eat", minutes=60),
            call("set_reminder", text="sleep", minutes=120),
        ],
    ),  # fmt: skip
    (
        "parallel",
        "What's the weather in Cairo and Nairobi?",
        ALL,
        [call("get_weather", city="Cairo"), call("get_weather", city="Nairobi")],
    ),  # fmt: skip
    (
        "parallel",
        "Calculate 6 * 7 and tell me the weather in Bern.",
        ALL,
        [call("calculate", expression="6 * 7"), call("get_weather", city="Bern")],
    ),  # fmt: skip
    (
        "parallel",
        "Flights from Paris to Nice on 2025-07-04 and the weather in Nice.",
        ALL,
        [
            call("search_flights", origin="Paris", destination="Nice", date="2025-07-04"),
            call("get_weather", city="Nice"),
        ],
    ),  # fmt: skip
    (
        "parallel",
        "Prices for AMZN and META.",
        ALL,
        [call("get_stock_price", symbol="AMZN"), call("get_stock_price", symbol="META")],
    ),  # fmt: skip
    (
        "parallel",
        "Weather in Dublin and in Cork, in celsius.",
        [WEATHER],
        [
            call("get_weather", city="Dublin", unit="celsius"),
            call("get_weather", city="Cork", unit="celsius"),
        ],
    ),  # fmt: skip
    (
        "parallel",
        "Convert 5 EUR to CHF and compute 5 * 12.",
        ALL,
        [
            call("convert_currency", amount=5, from_currency="EUR", to_currency="CHF"),
            call("calculate", expression="5 * 12"),
        ],
    ),  # fmt: skip
]


def _norm(v: Any) -> Any:
    if isinstance(v, str):
        return " ".join(v.lower().replace(" ", "").split())
    if isinstance(v, dict):
        return {k: _norm(x) for k, x in v.items()}
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


def matches(got: dict[str, Any], want: dict[str, Any]) -> bool:
    """Same name; every expected argument equal (strings ignoring case and spaces)."""
    if got["name"] != want["name"] or not isinstance(got["arguments"], dict):
        return False
    args = _norm(got["arguments"])
    return all(args.get(k) == _norm(v) for k, v in want["arguments"].items())


def run_case(
    m: Model, question: str, tools: list[dict[str, Any]], grammar: bool, **kw: Any
) -> Result:
    req = Request.build(messages=[{"role": "user", "content": question}], tools=tools,
                        temperature=0, max_tokens=200, **kw)  # fmt: skip
    job = m.prepare(req)
    if not grammar:  # prompting only: the tools are in the prompt, nothing constrains
        run = job.run and dataclasses.replace(job.run, grammar_sha256=None)
        job = dataclasses.replace(job, grammar=None, activation=None, run=run)
    from ggrun.textstream import Result as R

    return R.collect(m.run(job))


def lenient_calls(text: str) -> list[dict[str, Any]]:
    """Calls written as text without the tags, as a lenient client parses them (ollama
    reads JSON objects with a name and arguments): a fenced block or bare JSON objects."""
    s = text.strip()
    if s.startswith("```"):
        s = s.split("\n", 1)[1] if "\n" in s else ""
        s = s.rsplit("```", 1)[0]
    found, i, dec = [], 0, json.JSONDecoder()
    while (j := s.find("{", i)) >= 0:
        try:
            obj, i = dec.raw_decode(s, j)
        except ValueError:
            i = j + 1
            continue
        items = obj if isinstance(obj, list) else [obj]
        found += [o for o in items if isinstance(o, dict) and "name" in o]
    return [{"name": o["name"], "arguments": o.get("arguments", o.get("parameters"))}
            for o in found]  # fmt: skip


def score(m: Model, grammar: bool, **kw: Any) -> dict[str, Any]:
    made = valid = exact = no_call = cut_off = 0
    by_cat: dict[str, list[int]] = {}
    for cat, question, tools, want in CASES:
        r = run_case(m, question, tools, grammar, **kw)
        schemas = {t.name: t.parameters for t in to_tools(tools)}
        got = [{"name": c.name, "arguments": c.arguments} for c in r.tool_calls]
        if not grammar and not got and not r.error:
            got = lenient_calls(r.text)  # prompting only: read what the text holds
        cut = bool(r.error) and r.finish_reason == "length"  # max_tokens ended it first
        cut_off += cut
        bad = 1 if r.error and not cut else 0  # a call that did not parse or validate
        for c in got:
            try:
                jsonschema.validate(c["arguments"], schemas[c["name"]])
                valid += 1
            except (jsonschema.ValidationError, KeyError, TypeError):
                bad += 1
        made += len(got) + bad
        if not got and not bad and not cut:
            no_call += 1
        ok = len(got) == len(want) and all(
            any(matches(g, w) for g in got) for w in want
        ) and not bad and not cut  # fmt: skip
        exact += ok
        by_cat.setdefault(cat, []).append(int(ok))
    return {
        "calls": made,
        "valid": valid,
        "validity": valid / made if made else 1.0,
        "exact": exact,
        "accuracy": exact / len(CASES),
        "no_call": no_call,
        "cut_off": cut_off,
        "by_category": {k: sum(v) / len(v) for k, v in by_cat.items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="qwen2.5-coder-0.5b,qwen2.5-coder-1.5b")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--grammar", default="on,off", help="settings to run: on, off or both")
    ap.add_argument("--tool-choice", default="auto", help="auto (the benchmark) or required")
    ap.add_argument("--think-budget", type=int, help="Qwen3: think at most N tokens first")
    args = ap.parse_args()
    from tests.conftest import fetch

    rows = []
    for name in args.models.split(","):
        path = Path(name) if Path(name).exists() else fetch(name)
        with Model(path, LoadConfig(n_ctx=2048, n_threads=args.threads)) as m:
            for grammar in [x == "on" for x in args.grammar.split(",")]:
                t0 = time.perf_counter()
                try:
                    kw = {"tool_choice": args.tool_choice, "think_budget": args.think_budget}
                    s = score(m, grammar, **kw)
                except GgrunError as e:
                    s = {"error": str(e)}
                s |= {"model": path.name, "grammar": grammar, "tool_choice": args.tool_choice,
                      "seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip
                rows.append(s)
                print(json.dumps(s), file=sys.stderr, flush=True)
    print(
        "| model | grammar | valid calls | exact match | simple | multiple | parallel | no call "
        "| cut off |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for s in rows:
        if "error" in s:
            print(f"| {s['model']} | {'on' if s['grammar'] else 'off'} | error: {s['error']} |")
            continue
        c = s["by_category"]
        print(f"| {s['model']} | {'on' if s['grammar'] else 'off (prompting only)'} | "
              f"{s['valid']}/{s['calls']} ({s['validity']:.0%}) | {s['exact']}/{len(CASES)} "
              f"({s['accuracy']:.0%}) | {c['simple']:.0%} | {c['multiple']:.0%} | "
              f"{c['parallel']:.0%} | {s['no_call']} | {s['cut_off']} |")  # fmt: skip
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
