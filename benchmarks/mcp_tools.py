"""Tool use through MCP servers: valid calls, exact matches and answers, grammar on and off.

Two real stdio MCP servers, written here with the official SDK (``MCPServer``), offer seven
tools between them: ``shop`` (order_status, stock_level, customer_email) and ``office``
(employee_extension, book_room, exchange_rate, find_contact: enums, an integer, a nested
object). Every tool answers from a dict this benchmark makes, with values no model can
guess (tracking numbers, booking codes, made-up rates). ggrun's MCP client reaches them:
one ``Chat(model, mcp={"mcpServers": ...})`` per model and setting offers all seven tools
in every case, as ``ggrun chat --mcp`` does, and runs the calls the model makes.

24 cases: 8 "single" (one call with string arguments, the right tool among seven), 8
"typed" (an enum, an integer, a nested object, two currency codes in order) and 8
"parallel" (two calls in one reply). Each runs with the grammar (ggrun's default) and with
prompting only (the grammar taken off each prepared job as ``benchmarks/tools.py`` does; a
reply with no tagged call is read as a lenient client reads it, with
``benchmarks.tools.lenient_calls``, and those calls are run too). Per model and setting it
reports, for the first reply: call validity against each tool's input schema as its MCP
server lists it, exact match of names and arguments (``benchmarks.tools.matches``), replies
with no call, replies cut off by ``max_tokens`` (128 per reply); and end to end: the final
reply, after the calls went through the MCP servers (``Chat.run_calls``, at most 3 rounds,
a reply that only repeats answered calls drawn again with tool calls closed), holds every
unguessable answer the case needs. Each case prints its time; the JSON keeps every case's
calls, final reply and token counts.

    python benchmarks/mcp_tools.py --models qwen2.5-coder-0.5b,qwen2.5-coder-1.5b \
        --threads 1 --out mcp.json

(``--threads 1``: on a 2-core machine that other processes share, two llama.cpp threads
ran 6-8 times slower than one; on an idle one, leave the default 2.)
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jsonschema  # noqa: E402

from benchmarks.tools import lenient_calls, matches  # noqa: E402
from ggrun.chat import Chat  # noqa: E402
from ggrun.engine import LoadConfig, Model  # noqa: E402
from ggrun.errors import GgrunError  # noqa: E402
from ggrun.tools import ToolCall  # noqa: E402

# ---------------------------------------------------------------- the servers' data

ORDERS = {"A-1042": "shipped; tracking ZX-88213", "A-2210": "packed; tracking QM-40577",
          "B-0077": "delayed; tracking KT-19904",
          "C-3150": "delivered; tracking PL-66021"}  # fmt: skip
STOCK = {"sku-118 north": 417, "sku-118 south": 29, "sku-904 north": 1206, "sku-904 south": 83}
EMAILS = {"acme": "ap-7731@acme-ledger.example", "globex": "orders-5102@globex-hq.example",
          "initech": "it-3398@initech.example"}  # fmt: skip
EXTENSIONS = {"jane roe": "4471", "omar haddad": "5582", "li wei": "6093", "sara lind": "7316"}
ROOMS = {"atlas": "BK-7Q41", "borealis": "BK-2M95", "cirrus": "BK-5T08"}
RATES = {"EUR USD": "1.0937", "GBP JPY": "191.42", "USD CHF": "0.8815", "EUR SEK": "11.263"}
CONTACTS = {"company germany berlin": "Acme GmbH, contact id CT-4410",
            "person france lyon": "Jane Roe, contact id CT-9127",
            "company japan osaka": "Kaito Ltd, contact id CT-3385"}  # fmt: skip

SHOP = '''
from typing import Literal
from mcp.server.mcpserver import MCPServer

app = MCPServer("shop")
ORDERS, STOCK, EMAILS = {orders!r}, {stock!r}, {emails!r}


@app.tool()
def order_status(order_id: str) -> str:
    """The status and tracking number of an order, by its id (like A-1042)."""
    return ORDERS.get(order_id.strip().upper(), "no such order")


@app.tool()
def stock_level(sku: str, warehouse: Literal["north", "south"]) -> str:
    """How many units of a product (by its SKU, like SKU-118) a warehouse holds."""
    n = STOCK.get(f"{{sku.strip().lower()}} {{warehouse}}")
    return "no such product" if n is None else f"{{n}} units"


@app.tool()
def customer_email(customer: str) -> str:
    """The billing email address of a customer company, by its name."""
    return EMAILS.get(customer.strip().lower(), "no such customer")


app.run()
'''

OFFICE = '''
from typing import Annotated, Literal
from pydantic import WithJsonSchema
from mcp.server.mcpserver import MCPServer

app = MCPServer("office")
EXTENSIONS, ROOMS, RATES, CONTACTS = {extensions!r}, {rooms!r}, {rates!r}, {contacts!r}
# the nested object written out in place: a pydantic model would be a "$ref" into "$defs",
# which ggrun accepts as a tool and then cannot build the call grammar for
S = {{"type": "string"}}
Place = Annotated[dict[str, str], WithJsonSchema({{
    "type": "object", "properties": {{"country": S, "city": S}}, "required": ["country", "city"]}})]


@app.tool()
def employee_extension(name: str) -> str:
    """The phone extension of an employee, by full name."""
    return EXTENSIONS.get(name.strip().lower(), "no such employee")


@app.tool()
def book_room(room: str, date: str, hours: int) -> str:
    """Book a meeting room on a date (YYYY-MM-DD) for some hours; gives the booking code."""
    code = ROOMS.get(room.strip().lower().removeprefix("room ").removesuffix(" room"))
    if code is None:
        return "no such room"
    return f"booked {{room}} on {{date}} for {{hours}} h; booking code {{code}}"


@app.tool()
def exchange_rate(base: str, quote: str) -> str:
    """Today's exchange rate from one currency to another, by ISO code (EUR, USD ...)."""
    rate = RATES.get(f"{{base.strip().upper()}} {{quote.strip().upper()}}")
    return "no rate" if rate is None else f"1 {{base}} = {{rate}} {{quote}}"


@app.tool()
def find_contact(kind: Literal["person", "company"], where: Place) -> str:
    """Find a contact of ours, a person or a company, by the place they are in."""
    country, city = where.get("country", ""), where.get("city", "")
    key = f"{{kind}} {{country.strip().lower()}} {{city.strip().lower()}}"
    return CONTACTS.get(key, "no contact there")


app.run()
'''

# ---------------------------------------------------------------- the cases


def call(tool: str, /, **args: Any) -> dict[str, Any]:
    return {"name": tool, "arguments": args}


def place(country: str, city: str) -> dict[str, str]:
    return {"country": country, "city": city}


CASES: list[tuple[str, str, list[dict[str, Any]], list[str]]] = [
    # (category, question, expected calls, what the final reply must hold)
    ("single", "What is the tracking number of my order A-1042?",
     [call("order_status", order_id="A-1042")], ["ZX-88213"]),
    ("single", "What's the tracking number of order B-0077?",
     [call("order_status", order_id="B-0077")], ["KT-19904"]),
    ("single", "What is Omar Haddad's phone extension?",
     [call("employee_extension", name="Omar Haddad")], ["5582"]),
    ("single", "What's the billing email address of our customer Globex?",
     [call("customer_email", customer="Globex")], ["orders-5102@globex-hq.example"]),
    ("single", "What is today's exchange rate from EUR to USD?",
     [call("exchange_rate", base="EUR", quote="USD")], ["1.0937"]),
    ("single", "Give me Li Wei's extension, please.",
     [call("employee_extension", name="Li Wei")], ["6093"]),
    ("single", "I need the billing email of the customer Initech.",
     [call("customer_email", customer="Initech")], ["it-3398@initech.example"]),
    ("single", "Track order C-3150 for me: what is its tracking number?",
     [call("order_status", order_id="C-3150")], ["PL-66021"]),
    ("typed", "How many units of SKU-118 are in the north warehouse?",
     [call("stock_level", sku="SKU-118", warehouse="north")], ["417"]),
    ("typed", "What is the stock of SKU-904 in the south warehouse?",
     [call("stock_level", sku="SKU-904", warehouse="south")], ["83"]),
    ("typed", "Book the Atlas room on 2025-06-03 for 2 hours and tell me the booking code.",
     [call("book_room", room="Atlas", date="2025-06-03", hours=2)], ["BK-7Q41"]),
    ("typed", "Reserve the room Cirrus for 3 hours on 2025-07-15. What's the booking code?",
     [call("book_room", room="Cirrus", date="2025-07-15", hours=3)], ["BK-5T08"]),
    ("typed", "Find our company contact in Berlin, Germany, and give me the contact id.",
     [call("find_contact", kind="company", where=place("Germany", "Berlin"))], ["CT-4410"]),
    ("typed", "Look up the person we know in Lyon, France: what is the contact id?",
     [call("find_contact", kind="person", where=place("France", "Lyon"))], ["CT-9127"]),
    ("typed", "What is today's exchange rate from GBP to JPY?",
     [call("exchange_rate", base="GBP", quote="JPY")], ["191.42"]),
    ("typed", "How many Swiss francs is one US dollar today (the USD to CHF rate)?",
     [call("exchange_rate", base="USD", quote="CHF")], ["0.8815"]),
    ("parallel", "What are the tracking numbers of orders A-1042 and A-2210?",
     [call("order_status", order_id="A-1042"), call("order_status", order_id="A-2210")],
     ["ZX-88213", "QM-40577"]),
    ("parallel", "Give me the phone extensions of Jane Roe and Sara Lind.",
     [call("employee_extension", name="Jane Roe"), call("employee_extension", name="Sara Lind")],
     ["4471", "7316"]),
    ("parallel", "How many units of SKU-118 are in the north warehouse and in the south one?",
     [call("stock_level", sku="SKU-118", warehouse="north"),
      call("stock_level", sku="SKU-118", warehouse="south")], ["417", "29"]),
    ("parallel", "What are today's exchange rates from EUR to USD and from EUR to SEK?",
     [call("exchange_rate", base="EUR", quote="USD"),
      call("exchange_rate", base="EUR", quote="SEK")], ["1.0937", "11.263"]),
    ("parallel", "What is the tracking number of order C-3150, and Omar Haddad's extension?",
     [call("order_status", order_id="C-3150"), call("employee_extension", name="Omar Haddad")],
     ["PL-66021", "5582"]),
    ("parallel", "What are the billing email addresses of the customers Acme and Globex?",
     [call("customer_email", customer="Acme"), call("customer_email", customer="Globex")],
     ["ap-7731@acme-ledger.example", "orders-5102@globex-hq.example"]),
    ("parallel", "Book the Borealis room on 2025-08-01 for 1 hour, and what is the EUR to USD "
     "rate today?",
     [call("book_room", room="Borealis", date="2025-08-01", hours=1),
      call("exchange_rate", base="EUR", quote="USD")], ["BK-2M95", "1.0937"]),
    ("parallel", "Find our company contact in Osaka, Japan, and the stock of SKU-904 in the "
     "north warehouse.",
     [call("find_contact", kind="company", where=place("Japan", "Osaka")),
      call("stock_level", sku="SKU-904", warehouse="north")], ["CT-3385", "1206"]),
]  # fmt: skip


# ---------------------------------------------------------------- the servers


def write_servers(folder: Path) -> dict[str, Any]:
    """The two servers' scripts in ``folder``, as an ``mcpServers`` config."""
    texts = {
        "shop": SHOP.format(orders=ORDERS, stock=STOCK, emails=EMAILS),
        "office": OFFICE.format(extensions=EXTENSIONS, rooms=ROOMS, rates=RATES,
                                contacts=CONTACTS),
    }  # fmt: skip
    servers = {}
    for name, text in texts.items():
        path = folder / f"{name}.py"
        path.write_text(text)
        servers[name] = {"command": sys.executable, "args": [str(path)]}
    return {"mcpServers": servers}


async def _listed(entry: dict[str, Any]) -> dict[str, dict[str, Any]]:
    from mcp import ClientSession, StdioServerParameters
    from mcp.client.stdio import stdio_client

    params = StdioServerParameters(command=entry["command"], args=entry["args"])
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        return {t.name: t.input_schema for t in (await session.list_tools()).tools}


def input_schemas(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each tool's input schema as its server lists it (with the SDK's own client, so
    validity is judged against the servers' schemas, not ggrun's reading of them)."""
    out: dict[str, dict[str, Any]] = {}
    for entry in config["mcpServers"].values():
        out |= asyncio.run(_listed(entry))
    return out


# ---------------------------------------------------------------- the two settings


class Prompted:
    """A model whose replies nothing constrains: each prepared job loses its grammar, as
    ``benchmarks.tools.run_case`` does for prompting only. The tools stay in the prompt,
    and tagged calls are still parsed from the text."""

    def __init__(self, model: Model) -> None:
        self.model = model

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)

    def prepare(self, *args: Any, **kwargs: Any) -> Any:
        job = self.model.prepare(*args, **kwargs)
        run = job.run and dataclasses.replace(job.run, grammar_sha256=None)
        return dataclasses.replace(job, grammar=None, activation=None, run=run)


def read_leniently(chat: Chat) -> None:
    """A reply with no tagged call whose text holds calls (a fenced or bare JSON object
    with a name and arguments) gets those calls, as a lenient client (ollama) reads them,
    so that :meth:`Chat.run_calls` runs them through the MCP servers."""
    r = chat.last
    if r is None or r.tool_calls or r.error:
        return
    found = [c for c in lenient_calls(r.text) if isinstance(c["arguments"], dict)]
    if not found:
        return
    calls = [ToolCall(str(c["name"]), c["arguments"]) for c in found]
    shown = tuple({"id": c.id, "type": "function",
                   "function": {"name": c.name, "arguments": c.arguments}}
                  for c in calls)  # fmt: skip
    chat.history[-1] = dataclasses.replace(chat.history[-1], content="", tool_calls=shown)
    chat.last = dataclasses.replace(r, tool_calls=calls)


# ---------------------------------------------------------------- one case


def run_case(
    chat: Chat, grammar: bool, question: str, schemas: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """Ask ``question``; score the first reply's calls; run the calls through the MCP
    servers until the model answers; what the case needs to know."""
    chat.reset()
    first = chat.send(question)
    got = [{"name": c.name, "arguments": c.arguments} for c in first.tool_calls]
    if not grammar and not got and not first.error:
        got = lenient_calls(first.text)  # prompting only: read what the text holds
        read_leniently(chat)
    cut = bool(first.error) and first.finish_reason == "length"  # max_tokens ended it first
    bad = 1 if first.error and not cut else 0  # a tagged call that did not parse or validate
    valid = 0
    for c in got:
        try:
            jsonschema.validate(c["arguments"], schemas[c["name"]])
            valid += 1
        except (jsonschema.ValidationError, KeyError, TypeError):
            bad += 1
    final, rounds, turns = first, 0, [first]
    for _calls, _results, chunks in chat.run_calls():
        for _ in chunks:
            pass
        rounds += 1
        if not grammar:
            read_leniently(chat)
        assert chat.last is not None
        final = chat.last
        turns.append(final)
    new = sum(t.prompt_tokens - t.cached_tokens for t in turns)
    made = sum(t.completion_tokens for t in turns)
    return {"got": got, "valid": valid, "bad": bad, "cut": cut, "error": first.error,
            "rounds": rounds, "final": final.text, "prompt_new": new, "generated": made,
            "turns": [(t.prompt_tokens, t.cached_tokens, t.completion_tokens)
                      for t in turns]}  # fmt: skip


def score(
    chat: Chat, grammar: bool, schemas: dict[str, dict[str, Any]], cases: list[Any]
) -> dict[str, Any]:
    made = valid = exact = no_call = cut_off = answered = 0
    by_cat: dict[str, list[int]] = {}
    e2e_by_cat: dict[str, list[int]] = {}
    details = []
    for i, (cat, question, want, answers) in enumerate(cases):
        t0 = time.perf_counter()
        r = run_case(chat, grammar, question, schemas)
        got, bad, cut = r["got"], r["bad"], r["cut"]
        made += len(got) + (1 if r["error"] and not cut else 0)
        valid += r["valid"]
        cut_off += cut
        if not got and not bad and not cut:
            no_call += 1
        ok = len(got) == len(want) and all(
            any(matches(g, w) for g in got if isinstance(g["arguments"], dict)) for w in want
        ) and not bad and not cut  # fmt: skip
        said = r["final"].lower()
        hit = all(a.lower() in said for a in answers)
        exact += ok
        answered += hit
        by_cat.setdefault(cat, []).append(int(ok))
        e2e_by_cat.setdefault(cat, []).append(int(hit))
        dt = time.perf_counter() - t0
        print(f"  [{i + 1:2}/{len(cases)}] {cat:8} exact={int(ok)} answered={int(hit)} "
              f"calls={len(got)} rounds={r['rounds']} prompt+{r['prompt_new']} "
              f"gen {r['generated']} {dt:5.1f} s", file=sys.stderr, flush=True)  # fmt: skip
        details.append({"question": question, "category": cat, "calls": got,
                        "valid": r["valid"], "bad": bad, "cut_off": cut, "exact": ok,
                        "answered": hit, "rounds": r["rounds"], "error": r["error"],
                        "final": r["final"][:400], "prompt_new": r["prompt_new"],
                        "generated": r["generated"], "turns": r["turns"],
                        "seconds": round(dt, 1)})  # fmt: skip
    return {
        "calls": made,
        "valid": valid,
        "validity": valid / made if made else 1.0,
        "exact": exact,
        "accuracy": exact / len(cases),
        "no_call": no_call,
        "cut_off": cut_off,
        "answered": answered,
        "end_to_end": answered / len(cases),
        "by_category": {k: sum(v) / len(v) for k, v in by_cat.items()},
        "end_to_end_by_category": {k: sum(v) / len(v) for k, v in e2e_by_cat.items()},
        "cases": details,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="qwen2.5-coder-0.5b,qwen2.5-coder-1.5b")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--grammar", default="on,off", help="settings to run: on, off or both")
    ap.add_argument("--max-tokens", type=int, default=128, help="per reply")
    ap.add_argument("--cases", type=int, help="only the first N cases (a quick try)")
    args = ap.parse_args()
    from tests.conftest import fetch

    cases = CASES[: args.cases] if args.cases else CASES
    rows = []
    with tempfile.TemporaryDirectory(prefix="ggrun-mcp-bench-") as tmp:
        config = write_servers(Path(tmp))
        schemas = input_schemas(config)
        print(f"{len(schemas)} MCP tools: {', '.join(schemas)}", file=sys.stderr)
        for name in args.models.split(","):
            path = Path(name) if Path(name).exists() else fetch(name)
            with Model(path, LoadConfig(n_ctx=4096, n_threads=args.threads)) as m:
                for grammar in [x == "on" for x in args.grammar.split(",")]:
                    print(f"{path.name}, grammar {'on' if grammar else 'off'}:", file=sys.stderr)
                    t0 = time.perf_counter()
                    model: Any = m if grammar else Prompted(m)
                    try:
                        with Chat(model, mcp=config, auto_run=False, max_steps=3,
                                  max_tokens=args.max_tokens, temperature=0) as chat:  # fmt: skip
                            if chat.mcp is not None and chat.mcp.notices:
                                print("\n".join(chat.mcp.notices), file=sys.stderr)
                            s = score(chat, grammar, schemas, cases)
                    except GgrunError as e:
                        s = {"error": str(e)}
                    s |= {"model": path.name, "grammar": grammar,
                          "seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip
                    rows.append(s)
                    short = {k: v for k, v in s.items() if k != "cases"}
                    print(json.dumps(short), file=sys.stderr, flush=True)
    n = len(cases)
    print(
        "| model | grammar | valid calls | exact match | single | typed | parallel | no call "
        "| cut off | answered (end to end) | s/case |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for s in rows:
        setting = "on (ggrun's default)" if s["grammar"] else "off (prompting only)"
        if "error" in s:
            print(f"| {s['model']} | {setting} | error: {s['error']} |")
            continue
        c = s["by_category"]
        cats = " | ".join(f"{c[k]:.0%}" if k in c else "-" for k in ("single", "typed", "parallel"))
        print(f"| {s['model']} | {setting} | {s['valid']}/{s['calls']} ({s['validity']:.0%}) | "
              f"{s['exact']}/{n} ({s['accuracy']:.0%}) | {cats} | {s['no_call']} | "
              f"{s['cut_off']} | {s['answered']}/{n} ({s['end_to_end']:.0%}) | "
              f"{s['seconds'] / n:.1f} |")  # fmt: skip
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
