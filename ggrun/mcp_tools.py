"""Tools from Model Context Protocol servers, for :class:`~ggrun.chat.Chat` and ``ggrun chat``.

:class:`Servers` starts MCP servers over stdio, only from what the user gave: a command
line (``"npx -y @modelcontextprotocol/server-filesystem /tmp"``) or an ``mcpServers``
config (a dict, or a JSON file as Claude Desktop and LM Studio write it)::

    {"mcpServers": {"files": {"command": "npx", "args": ["..."], "env": {"K": "v"}}}}

One background thread runs an asyncio loop that owns every session: each server is one
task that starts the process, initializes, lists its tools, then waits to be stopped.
Each server's tools become :class:`~ggrun.tools.Tool` objects whose schemas went through
ggrun's schema rules (so every call is valid by construction) and whose ``fn`` calls the
server, with a timeout, and returns the result as text. Whatever goes wrong (a server
that does not start, exits, hangs or writes garbage; a schema ggrun cannot hold) gives a
one-line notice (:attr:`Servers.notices`, also logged as a warning) or an ``error: ...``
tool result: never a hang, never a traceback. Each server's stderr goes to
``$GGRUN_HOME/logs/mcp-<name>.log``. A tool result is data for the model, like any
tool message.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import os
import re
import shlex
import threading
from collections.abc import Mapping
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ggrun.errors import GgrunError, GrammarError, InvalidArgument
from ggrun.files import read_text
from ggrun.models import ggrun_home
from ggrun.tools import MAX_TOOLS, NAME, Tool, from_dict

logger = logging.getLogger(__name__)

START_TIMEOUT = 20.0  # seconds for a server to start, initialize and list its tools
CALL_TIMEOUT = 60.0  # seconds for one tools/call
STOP_TIMEOUT = 10.0  # seconds for all servers to stop (the SDK escalates to SIGKILL)
MAX_SERVERS = 32
MAX_CONFIG_BYTES = 1 << 20
MAX_DESCRIPTION = 2000  # characters of a tool's description shown to the model
MAX_RESULT = 32_000  # characters of a tool result given back to the model
MISSING = "MCP servers need the mcp package: pip install 'ggrun[mcp]'"
# launchers whose first argument names the server better than they do
LAUNCHERS = {"python", "python3", "node", "npx", "uv", "uvx", "deno", "bun", "pipx", "docker"}


@dataclass(frozen=True)
class ServerSpec:
    """How to start one server: its name (for notices, logs and /tools) and command."""

    name: str
    command: str
    args: tuple[str, ...] = ()
    env: Mapping[str, str] | None = None


@dataclass
class _Conn:
    spec: ServerSpec
    log: Path
    session: Any = None
    tools: list[Any] = field(default_factory=list)
    dead: str | None = None  # why the server no longer answers
    task: asyncio.Task[None] | None = None


# ---------------------------------------------------------------- specs


def read_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """An ``mcpServers`` JSON file (Claude Desktop's format), as a dict."""
    where = f"MCP config {path}"
    text = read_text(path, what="MCP config", limit=MAX_CONFIG_BYTES, error=InvalidArgument)
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as e:
        why = "nested too deeply" if isinstance(e, RecursionError) else str(e)[:200]
        raise InvalidArgument(f"{where}: not JSON: {why}") from None
    if not isinstance(data, dict):
        raise InvalidArgument(f'{where}: expected {{"mcpServers": {{...}}}}')
    return data


def parse_specs(mcp: Any) -> list[ServerSpec]:
    """Server specs from command lines, ``mcpServers`` configs (dicts, or paths of JSON
    files), or a list of them; names made unique."""
    items = [mcp] if isinstance(mcp, (str, Mapping, os.PathLike)) else mcp
    if not isinstance(items, (list, tuple)):
        raise InvalidArgument("mcp must be a command line, an mcpServers config, or a list")
    specs: list[ServerSpec] = []
    for item in items:
        if isinstance(item, os.PathLike):
            item = read_config(item)
        if isinstance(item, str):
            specs.append(_from_command(item))
        elif isinstance(item, Mapping):
            specs += _from_config(item)
        else:
            raise InvalidArgument("each mcp server must be a command line or an mcpServers config")
    if len(specs) > MAX_SERVERS:
        raise InvalidArgument(f"at most {MAX_SERVERS} MCP servers")
    out, seen = [], set()
    for s in specs:
        name, n = s.name, 1
        while name in seen:
            n += 1
            name = f"{s.name}-{n}"
        seen.add(name)
        out.append(ServerSpec(name, s.command, s.args, s.env))
    return out


def _from_command(line: str) -> ServerSpec:
    try:
        argv = shlex.split(line)
    except ValueError as e:
        raise InvalidArgument(f"--mcp {line!r}: {e}") from None
    if not argv:
        raise InvalidArgument("--mcp needs a command line")
    return ServerSpec(_name_of(argv), argv[0], tuple(argv[1:]))


def _name_of(argv: list[str]) -> str:
    """A short name for a server started by ``argv``: the script or package it runs."""
    words = [argv[0]]
    if Path(argv[0]).name.split(".")[0].rstrip("0123456789.") in LAUNCHERS:
        words = [a for a in argv[1:] if not a.startswith("-") and a != "run"][:1] or words
    stem = Path(words[0].rstrip("/")).name.removesuffix(".py").removesuffix(".js")
    stem = stem.rsplit("@", 1)[0] if stem.rfind("@") > 0 else stem
    return re.sub(r"[^A-Za-z0-9_-]+", "-", stem).strip("-")[:40] or "server"


def _from_config(config: Mapping[str, Any]) -> list[ServerSpec]:
    servers = config.get("mcpServers")
    if not isinstance(servers, Mapping):
        raise InvalidArgument('an MCP config must be {"mcpServers": {NAME: {"command": ...}}}')
    out = []
    for name, entry in servers.items():
        where = f"mcpServers.{name}"
        if not isinstance(entry, Mapping):
            raise InvalidArgument(f"{where} must be an object")
        if entry.get("disabled") is True:
            continue
        command, args, env = entry.get("command"), entry.get("args", []), entry.get("env")
        if not isinstance(command, str) or not command:
            raise InvalidArgument(f"{where}.command must be a command (only stdio servers run)")
        if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
            raise InvalidArgument(f"{where}.args must be a list of strings")
        if env is not None and not (
            isinstance(env, Mapping)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in env.items())
        ):
            raise InvalidArgument(f"{where}.env must map names to strings")
        safe = re.sub(r"[^A-Za-z0-9_-]+", "-", str(name)).strip("-")[:40] or "server"
        out.append(ServerSpec(safe, command, tuple(args), dict(env) if env else None))
    return out


# ---------------------------------------------------------------- servers


class Servers:
    """Running MCP servers and their tools (:attr:`tools`); a context manager.

    ``reserved`` names tools that exist already (the user's own): an MCP tool of the
    same name is left out with a notice.
    """

    def __init__(
        self,
        mcp: Any,
        *,
        start_timeout: float = START_TIMEOUT,
        call_timeout: float = CALL_TIMEOUT,
        reserved: tuple[str, ...] = (),
    ) -> None:
        try:
            from mcp import ClientSession  # noqa: F401 - only to fail early and clearly
        except ImportError:
            raise GgrunError(MISSING) from None
        specs = parse_specs(mcp)
        self.call_timeout = call_timeout
        self.notices: list[str] = []
        self.origin: dict[str, str] = {}  # tool name -> server name
        self.tools: tuple[Tool, ...] = ()
        self._conns: dict[str, _Conn] = {}  # the servers that started
        self._tasks: list[asyncio.Task[None]] = []  # every server's task, started or not
        self._closed = False
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="ggrun-mcp", daemon=True
        )
        self._thread.start()
        atexit.register(self.close)
        logs = ggrun_home() / "logs"
        try:
            logs.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            self.close()
            raise GgrunError(f"cannot make the log folder {logs}: {e.strerror or e}") from None
        _sdk_log(logs / "mcp-client.log")
        started = self._submit(self._start_all(specs, logs, start_timeout))
        try:
            started.result(start_timeout + STOP_TIMEOUT)
        except BaseException:  # Ctrl-C too: stop what started, then go on failing
            started.cancel()
            self.close()
            raise
        self.tools = self._collect(set(reserved))

    # -- starting ---------------------------------------------------------------------
    def _submit(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    async def _start_all(self, specs: list[ServerSpec], logs: Path, timeout: float) -> None:
        self._stop = asyncio.Event()
        conns = await asyncio.gather(
            *(self._start(s, logs / f"mcp-{s.name}.log", timeout) for s in specs)
        )
        self._conns = {c.spec.name: c for c in conns if c is not None}  # in the given order

    async def _start(self, spec: ServerSpec, log: Path, timeout: float) -> _Conn | None:
        conn = _Conn(spec, log)
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        conn.task = asyncio.create_task(self._serve(conn, ready))
        self._tasks.append(conn.task)
        try:
            await asyncio.wait_for(asyncio.shield(ready), timeout)
        except asyncio.TimeoutError:  # not yet the builtin TimeoutError on 3.10
            why = f"did not start within {timeout:g} s"
        except Exception as e:  # noqa: BLE001 - any failure to start is a notice
            why = f"failed to start: {_reason(e)}"
        else:
            return conn
        conn.task.cancel()
        await asyncio.gather(conn.task, return_exceptions=True)
        self._notice(f"MCP server {spec.name!r} {why}; left out (its log: {log})")
        return None

    async def _serve(self, conn: _Conn, ready: asyncio.Future[None]) -> None:
        """One server's whole life, in one task (the SDK's contexts are entered and left
        in the same task): start, initialize, list tools, wait for the stop."""
        from mcp import ClientSession, StdioServerParameters
        from mcp.client.stdio import stdio_client

        spec = conn.spec
        params = StdioServerParameters(
            command=spec.command, args=list(spec.args), env=dict(spec.env) if spec.env else None
        )
        try:
            with conn.log.open("a", encoding="utf-8") as errlog:
                async with (
                    stdio_client(params, errlog=errlog) as (read, write),
                    ClientSession(read, write) as session,
                ):
                    await session.initialize()
                    cursor = None
                    while True:
                        page = await session.list_tools(params=_page(cursor))
                        conn.tools += page.tools
                        cursor = page.next_cursor
                        if not cursor or len(conn.tools) > MAX_TOOLS:
                            break
                    conn.session = session
                    ready.set_result(None)
                    assert self._stop is not None
                    await self._stop.wait()
        except BaseException as e:
            if not ready.done():
                if isinstance(e, Exception):
                    ready.set_exception(e)
                else:
                    ready.cancel()
            elif not self._closed:
                conn.dead = f"it stopped ({_reason(e)})"
            if not isinstance(e, Exception):
                raise
        finally:
            if ready.done() and conn.dead is None and not self._closed:
                conn.dead = "it exited"

    def _collect(self, reserved: set[str]) -> tuple[Tool, ...]:
        out: list[Tool] = []
        for name, conn in self._conns.items():
            for i, t in enumerate(conn.tools):
                if len(out) + len(reserved) >= MAX_TOOLS:
                    left = len(conn.tools) - i
                    self._notice(f"MCP server {name!r}: more than {MAX_TOOLS} tools in all; "
                                 f"{left} of its tools left out")  # fmt: skip
                    break
                label = f"MCP tool {str(t.name)[:64]!r} of {name!r}"
                if not isinstance(t.name, str) or not NAME.fullmatch(t.name):
                    self._notice(f"{label}: its name is not 1-64 letters, digits, _ or -; left out")
                    continue
                if t.name in reserved or t.name in self.origin:
                    self._notice(f"{label}: another tool has that name; left out")
                    continue
                desc = (t.description or t.title or "")[:MAX_DESCRIPTION]
                spec = {"name": t.name, "description": desc, "parameters": t.input_schema}
                try:
                    tool = from_dict({"type": "function", "function": spec}, "tool")
                except (GrammarError, InvalidArgument) as e:
                    why = str(e).removeprefix(f"tool ({t.name}): ").replace("tool.function.", "")
                    self._notice(f"{label}: {why}; left out")
                    continue
                out.append(
                    Tool(tool.name, tool.description, tool.parameters, self._caller(name, t.name))
                )
                self.origin[t.name] = name
        return tuple(out)

    def _notice(self, text: str) -> None:
        self.notices.append(text)
        logger.warning("%s", text)

    # -- calling ----------------------------------------------------------------------
    def _caller(self, server: str, tool: str) -> Any:
        def call(**arguments: Any) -> str:
            return self.call(server, tool, arguments)

        call.__name__ = tool
        return call

    def call(self, server: str, tool: str, arguments: dict[str, Any]) -> str:
        """Call ``tool`` on ``server``; the result as text (``error: ...`` when it failed)."""
        conn = self._conns.get(server)
        if conn is None or self._closed:
            return f"error: the MCP server {server!r} is not running"
        if conn.dead is not None:
            return f"error: the MCP server {server!r} is not running: {conn.dead}"
        job = self._submit(
            conn.session.call_tool(tool, arguments, read_timeout_seconds=self.call_timeout)
        )
        late = f"error: the MCP server {server!r} did not answer within {self.call_timeout:g} s"
        try:
            result = job.result(self.call_timeout + 5)
        except FutureTimeout:
            job.cancel()
            return late
        except Exception as e:  # noqa: BLE001 - a protocol error is the model's tool result
            from mcp.types import CONNECTION_CLOSED, REQUEST_TIMEOUT

            logger.info("MCP call %s on %s failed: %r", tool, server, e)
            if getattr(e, "code", None) == REQUEST_TIMEOUT:
                return late
            if getattr(e, "code", None) == CONNECTION_CLOSED and conn.dead is None:
                conn.dead = f"its connection closed (its log: {conn.log})"
            if conn.dead is not None:
                return f"error: the MCP server {server!r} is not running: {conn.dead}"
            return f"error: the MCP server {server!r}: {_reason(e)}"
        return _as_text(result)

    # -- stopping ---------------------------------------------------------------------
    def close(self) -> None:
        """Stop every server (closing stdin, then SIGTERM, then SIGKILL); idempotent."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        if self._loop.is_running():
            try:
                self._submit(self._stop_all()).result(STOP_TIMEOUT)
            except Exception as e:  # noqa: BLE001 - stopping must not raise
                logger.warning("MCP servers did not all stop: %s", _reason(e))
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(STOP_TIMEOUT)
        if not self._thread.is_alive():
            self._loop.close()

    async def _stop_all(self) -> None:
        if self._stop is not None:
            self._stop.set()  # a started server leaves its contexts
        started = {c.task for c in self._conns.values()}
        for task in self._tasks:
            if task not in started:
                task.cancel()  # one still starting (Ctrl-C, a close from another thread)
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def __enter__(self) -> Servers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _sdk_log(path: Path) -> None:
    """The SDK's own messages (a garbage line from a server comes with a traceback) go
    to ``path``, not to the terminal; once per process, and only when nobody set up the
    ``mcp`` logger."""
    sdk = logging.getLogger("mcp")
    if sdk.handlers:
        return
    handler = logging.FileHandler(path, encoding="utf-8", delay=True)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    sdk.addHandler(handler)
    sdk.propagate = False


def _page(cursor: str | None) -> Any:
    if cursor is None:
        return None
    from mcp.types import PaginatedRequestParams

    return PaginatedRequestParams(cursor=cursor)


def _reason(e: BaseException) -> str:
    """One line about an error, also for exception groups (anyio's task groups)."""
    while getattr(e, "exceptions", None):  # an ExceptionGroup (3.11+): its first error
        e = e.exceptions[0]  # type: ignore[attr-defined]
    text = " ".join(str(e).split())[:300]
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _as_text(result: Any) -> str:
    """A tools/call result as text: its text parts, or its structured content as JSON;
    ``error: ...`` when the server says the call failed."""
    parts = []
    for part in getattr(result, "content", None) or []:
        kind = getattr(part, "type", "")
        if kind == "text":
            parts.append(part.text)
        elif kind == "resource" and isinstance(getattr(part.resource, "text", None), str):
            parts.append(part.resource.text)
        else:
            parts.append(f"[{kind or 'unknown'} content not shown]")
    text = "\n".join(parts)
    structured = getattr(result, "structured_content", None)
    if not text.strip() and structured is not None:
        text = json.dumps(structured, ensure_ascii=False, default=str)
    if len(text) > MAX_RESULT:
        text = text[:MAX_RESULT] + f"\n[cut: the result held {len(text)} characters]"
    if getattr(result, "is_error", False):
        return f"error: {text or 'the tool failed'}"
    return text
