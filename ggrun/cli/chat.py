"""``ggrun chat``: an interactive conversation in the terminal.

Line editing and history come from prompt_toolkit when stdin is a terminal (plain
lines otherwise, so the REPL can be driven by a pipe). Slash commands are a registry
(:data:`COMMANDS`). Ctrl-C during a reply stops that reply and keeps it; Ctrl-C or
Ctrl-D at an empty prompt exits.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

import typer

from ggrun.cli import options
from ggrun.cli.options import CACHE, LOAD, SAMPLING, THINKING, ModelArg

MULTILINE = '"""'
SOFT_SWITCHES = ("/think", "/no_think")  # Qwen3's per-turn switches: a message, not a command


def is_soft_switch(text: str) -> bool:
    """A line that starts with /think or /no_think is a message to the model."""
    word = text.split(maxsplit=1)[0] if text.split() else ""
    return word in SOFT_SWITCHES


@dataclass
class Session:
    chat: Any  # ggrun.Chat
    show_thinking: bool
    running: bool = True

    def say(self, text: str) -> None:
        print(text, flush=True)


def _help(s: Session, arg: str) -> None:
    for name, (_fn, usage, text) in COMMANDS.items():
        s.say(f"  /{name}{(' ' + usage) if usage else '':<14} {text}")
    s.say(f"  {MULTILINE} ... {MULTILINE}         multi-line input")


def _reset(s: Session, arg: str) -> None:
    s.chat.reset()
    s.say("(history cleared)")


def _system(s: Session, arg: str) -> None:
    s.chat.set_system(arg.strip() or None)
    s.say("(system prompt set)" if arg.strip() else "(system prompt cleared)")


def _save(s: Session, arg: str) -> None:
    if not arg.strip():
        s.say("usage: /save FILE")
        return
    s.say(f"(saved to {s.chat.save(arg.strip())})")


def _load(s: Session, arg: str) -> None:
    if not arg.strip():
        s.say("usage: /load FILE")
        return
    s.chat.load(arg.strip())
    s.say(f"(loaded {len(s.chat.history)} messages)")


def _stats(s: Session, arg: str) -> None:
    m = s.chat.model
    used = s.chat.context_used()
    s.say(f"  model:    {m.path.name} ({m.info.arch}, {m.info.file_type})")
    s.say(f"  context:  {used} / {m.n_ctx} tokens used; threads {m.n_threads}")
    if m.plan is not None:
        s.say(f"  plan:     {m.plan.summary()}")
    last = s.chat.last
    if last is not None:
        s.say(
            f"  last:     {last.prompt_tokens} prompt tokens ({last.cached_tokens} from "
            f"cache) at {last.prompt_tps:.1f} tok/s, {last.completion_tokens} generated at "
            f"{last.generation_tps:.1f} tok/s ({last.finish_reason})"
        )


def _tools(s: Session, arg: str) -> None:
    if not s.chat.tools:
        s.say("(no tools)")
        return
    origin = s.chat.mcp.origin if s.chat.mcp is not None else {}
    for t in s.chat.tools:
        where = f"MCP server {origin[t.name]}" if t.name in origin else "--tools"
        about = t.description.strip().split("\n", 1)[0][:80]
        s.say(f"  {t.name:<24} {where:<28} {about}")


def _exit(s: Session, arg: str) -> None:
    s.running = False


COMMANDS: dict[str, tuple[Callable[[Session, str], None], str, str]] = {
    "help": (_help, "", "show this help"),
    "reset": (_reset, "", "clear the conversation"),
    "system": (_system, "TEXT", "set (or clear) the system prompt"),
    "save": (_save, "FILE", "save the conversation as JSON"),
    "load": (_load, "FILE", "load a conversation saved with /save"),
    "stats": (_stats, "", "tokens, speed and context used"),
    "tools": (_tools, "", "the tools the model may call, and where each came from"),
    "exit": (_exit, "", "quit (also Ctrl-D)"),
}


class _Input:
    """Reads user turns: prompt_toolkit on a terminal, plain lines otherwise."""

    def __init__(self) -> None:
        self.session: Any = None
        if sys.stdin.isatty() and sys.stdout.isatty():
            from prompt_toolkit import PromptSession
            from prompt_toolkit.history import FileHistory

            from ggrun.models import ggrun_home

            home = ggrun_home()
            try:
                home.mkdir(parents=True, exist_ok=True)
                history: Any = FileHistory(str(home / "chat_history"))
            except OSError:
                history = None
            self.session = PromptSession(history=history)

    def line(self, prompt: str) -> str:
        if self.session is not None:
            return str(self.session.prompt(prompt))
        sys.stdout.write(prompt)
        sys.stdout.flush()
        text = sys.stdin.readline()
        if not text:
            raise EOFError
        return text.rstrip("\n")

    def turn(self) -> str:
        first = self.line(">>> ")
        if not first.lstrip().startswith(MULTILINE):
            return first
        body = first.lstrip()[len(MULTILINE) :]
        if body.rstrip().endswith(MULTILINE) and body.strip():
            return body.rstrip()[: -len(MULTILINE)]
        lines = [body] if body else []
        while True:
            more = self.line("... ")
            if more.rstrip().endswith(MULTILINE):
                lines.append(more.rstrip()[: -len(MULTILINE)])
                return "\n".join(lines).strip("\n")
            lines.append(more)


def chat(
    model: ModelArg = None,
    system: Annotated[str | None, typer.Option("--system", "-s", help="A system prompt.")] = None,
    tools: options.ToolsOpt = None,
    compact: Annotated[
        bool,
        typer.Option(
            "--compact",
            help="When the conversation no longer fits, summarise the oldest turns into a "
            "note instead of dropping them.",
        ),
    ] = False,
    confirm: Annotated[
        bool,
        typer.Option(
            "--confirm",
            help="Ask before running each tool call (always on for MCP tools, unless --yes).",
            rich_help_panel="Tools",
        ),
    ] = False,
    mcp: options.McpOpt = None,
    mcp_config: options.McpConfigOpt = None,
    yes: Annotated[
        bool,
        typer.Option(
            "--yes", "-y", help="Run MCP tool calls without asking.", rich_help_panel="Tools"
        ),
    ] = False,
    *,
    opts: dict[str, Any],
) -> None:
    """Chat with a model in the terminal. Type /help for commands.

    Replies stream as they are generated; Ctrl-C stops a reply, Ctrl-D exits.
    """
    from ggrun.chat import Chat
    from ggrun.cli.render import write_stream
    from ggrun.errors import GgrunError

    sampling = options.sampling_kwargs(opts)
    max_tokens = sampling.pop("max_tokens", "auto")
    with options.load_model(model, opts) as m, contextlib.ExitStack() as stop:
        convo = Chat(
            m, system=system, think=opts.get("think"), max_tokens=max_tokens,
            tools=options.read_tools(tools), auto_run=True, compact=compact,
            think_budget=opts.get("think_budget"), mcp=options.mcp_servers(mcp, mcp_config),
            **sampling,
        )  # fmt: skip
        stop.callback(convo.close)  # the MCP servers, if any
        asker = _asker(convo, confirm, yes)
        session = Session(convo, show_thinking=opts["show_thinking"])
        reader = _Input()
        print(
            f"ggrun chat with {m.path.name} ({m.n_ctx} tokens of context). "
            "/help for commands, Ctrl-D to quit.",
            file=sys.stderr,
        )
        while session.running:
            try:
                text = reader.turn()
            except (EOFError, KeyboardInterrupt):
                print(file=sys.stderr)
                break
            except UnicodeDecodeError as e:
                session.say(f"error: the input is not UTF-8 text ({e.reason}); try again")
                continue
            if not text.strip():
                continue
            if text.startswith("/") and not is_soft_switch(text):
                name, _, arg = text[1:].partition(" ")
                entry = COMMANDS.get(name.strip())
                if entry is None:
                    session.say(f"unknown command /{name}; /help lists them")
                    continue
                try:
                    entry[0](session, arg)
                except GgrunError as e:
                    session.say(f"error: {e}")
                continue
            try:
                write_stream(convo.stream(text), sys.stdout, show_thinking=session.show_thinking)
                print(flush=True)
                _say_thought(session)
                _run_calls(session, asker)
            except KeyboardInterrupt:
                print("\n(interrupted)", flush=True)
            except GgrunError as e:
                print(f"\nerror: {e}", flush=True)
            if convo.trimmed:
                print(
                    f"(dropped the {convo.trimmed} oldest message(s) to fit the context)",
                    file=sys.stderr,
                )


chat = options.with_options(LOAD, CACHE, SAMPLING, THINKING)(chat)


def _asker(convo: Any, confirm: bool, yes: bool) -> Callable[[Any], bool] | None:
    """Who asks before a call: every call with --confirm, MCP calls unless --yes."""
    mcp = set(convo.mcp.origin) if convo.mcp is not None else set()
    if confirm:
        return _ask
    if mcp and not yes:
        return lambda call: call.name not in mcp or _ask(call)
    return None


def _run_calls(session: Session, confirm: Callable[[Any], bool] | None) -> None:
    """Run the tools the model called, show each call and result dimmed, and let the
    model go on, until it answers or the step limit."""
    from ggrun.cli.render import dim, write_stream

    for calls, results, stream in session.chat.run_calls(confirm=confirm):
        for c in calls:
            session.say(dim(f"→ {c.name}({json.dumps(c.arguments, ensure_ascii=False)})"))
        for r in results:
            session.say(dim(f"← {r.content[:2000]}"))
        write_stream(stream, sys.stdout, show_thinking=session.show_thinking)
        print(flush=True)


def _say_thought(session: Session) -> None:
    """Whether this turn thought, and for how long (a thinking model only)."""
    from ggrun.cli.render import dim

    last, convo = session.chat.last, session.chat
    if last is None or not convo.model.thinks(convo.think):
        return
    if last.reasoning:
        secs, n = last.thinking_time, last.reasoning_tokens
        print(dim(f"(thought for {secs:.1f} s, {n} tokens)"), file=sys.stderr)
    else:
        print(dim("(no thinking this turn)"), file=sys.stderr)


def _ask(call: Any) -> bool:
    args = json.dumps(call.arguments, ensure_ascii=False)[:2000]
    try:
        answer = input(f"run {call.name}({args})? [y/N] ").strip().lower()
    except EOFError:
        return False
    return answer in ("y", "yes")
