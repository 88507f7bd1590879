"""MCP servers as tools (ggrun.mcp_tools): real stdio servers written here with the SDK.

The servers are small scripts in ``tmp_path``: one answers ``lookup(key)`` from a dict
whose values no model can guess, one misbehaves on purpose (hangs, dies, writes garbage
to its stdout, fails, offers a schema ggrun cannot hold), and three never become servers
(one exits at once, one answers with garbage, one hangs before it answers). The model
tests (slow) run Qwen2.5-Coder-1.5B through ``Chat(mcp=...)`` and ``ggrun chat --mcp``.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("mcp")

from ggrun.errors import GgrunError, InvalidArgument  # noqa: E402
from ggrun.mcp_tools import Servers, parse_specs, read_config  # noqa: E402

SECRETS = {"alpha": "zebra-4417", "bravo": "quartz-9021"}

LOOKUP = """
import os
from mcp.server.mcpserver import MCPServer

app = MCPServer("vault")
DATA = {data}


@app.tool()
def lookup(key: str) -> str:
    \"\"\"The value stored under a key in the vault.\"\"\"
    return DATA.get(key, "no such key")


@app.tool()
def pid() -> int:
    \"\"\"This server's process id.\"\"\"
    return os.getpid()


@app.tool()
def env(name: str) -> str:
    \"\"\"An environment variable of this server.\"\"\"
    return os.environ.get(name, "unset")


app.run()
"""

TROUBLE = """
import os
import sys
import time
from typing import Annotated

from pydantic import Field
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

app = MCPServer("trouble")


@app.tool()
def hang() -> str:
    \"\"\"Never answers.\"\"\"
    time.sleep(600)
    return "woke"


@app.tool()
def die() -> str:
    \"\"\"Exits mid-call.\"\"\"
    os._exit(3)


@app.tool()
def shout(word: str) -> str:
    \"\"\"Writes garbage into the protocol stream, then answers.\"\"\"
    sys.stdout.write("this is not JSON-RPC {{{\\n")
    sys.stdout.flush()
    return word.upper()


@app.tool()
def fail() -> str:
    \"\"\"Raises.\"\"\"
    raise ToolError("the vault is locked")


@app.tool()
def picky(word: Annotated[str, Field(json_schema_extra={"not": {"const": "a"}})]) -> str:
    \"\"\"A schema keyword ggrun refuses.\"\"\"
    return word


app.run()
"""

EXITS = "import sys\nsys.stderr.write('broken on purpose\\n')\nsys.exit(1)\n"
GARBAGE = "import sys\nfor line in sys.stdin:\n    print('garbage {{{', flush=True)\n"
STUCK = "import time\ntime.sleep(600)\n"


def script(tmp_path: Path, name: str, text: str) -> str:
    """The command line that runs ``text`` as a Python script."""
    path = tmp_path / f"{name}.py"
    path.write_text(text)
    return shlex.join([sys.executable, str(path)])


@pytest.fixture
def vault(tmp_path: Path) -> str:
    return script(tmp_path, "vault", LOOKUP.format(data=repr(SECRETS)))


@pytest.fixture
def trouble(tmp_path: Path) -> str:
    return script(tmp_path, "trouble", TROUBLE)


def by_name(servers: Servers) -> dict[str, Any]:
    return {t.name: t.fn for t in servers.tools}


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "zombie" in status.read_text()


# ---------------------------------------------------------------- model-free


def test_tools_are_listed_and_called(vault: str, isolated_home: Path) -> None:
    with Servers([vault]) as servers:
        assert [t.name for t in servers.tools] == ["lookup", "pid", "env"]
        assert servers.origin == dict.fromkeys(["lookup", "pid", "env"], "vault")
        assert servers.notices == []
        lookup = next(t for t in servers.tools if t.name == "lookup")
        assert lookup.description == "The value stored under a key in the vault."
        assert lookup.parameters["required"] == ["key"]
        fns = by_name(servers)
        assert fns["lookup"](key="alpha") == "zebra-4417"
        assert fns["lookup"](key="nope") == "no such key"
    assert (isolated_home / "logs" / "mcp-vault.log").is_file()


def test_close_stops_the_servers(vault: str) -> None:
    servers = Servers([vault, vault])  # the same command twice: two servers
    assert sorted(set(servers.origin.values())) == ["vault"]  # tools of the second clash
    assert any("another tool has that name" in n for n in servers.notices)
    pid = int(by_name(servers)["pid"]())
    assert not gone(pid)
    servers.close()
    assert gone(pid)
    servers.close()  # idempotent
    assert by_name(servers)["lookup"](key="alpha").startswith("error:")


def test_the_tool_limit_holds_with_the_users_tools(vault: str) -> None:
    from ggrun.tools import MAX_TOOLS

    mine = tuple(f"mine{i}" for i in range(MAX_TOOLS - 1))
    with Servers([vault], reserved=(*mine, "env")) as servers:
        assert [t.name for t in servers.tools] == []  # no room left at all
    with Servers([vault], reserved=mine) as servers:
        assert [t.name for t in servers.tools] == ["lookup"]
        assert servers.notices == [
            f"MCP server 'vault': more than {MAX_TOOLS} tools in all; 2 of its tools left out"
        ]


def test_servers_that_never_start_are_left_out(tmp_path: Path, vault: str) -> None:
    exits = script(tmp_path, "exits", EXITS)
    garbage = script(tmp_path, "garbage", GARBAGE)
    stuck = script(tmp_path, "stuck", STUCK)
    with Servers([exits, garbage, vault, stuck, "/no/such/command"], start_timeout=3) as servers:
        assert len(servers.notices) == 4, servers.notices
        for name in ("exits", "garbage", "stuck", "command"):
            assert sum(f"MCP server {name!r}" in n for n in servers.notices) == 1
        assert all("left out" in n and "\n" not in n for n in servers.notices)
        assert by_name(servers)["lookup"](key="bravo") == "quartz-9021"
    log = Path(os.environ["GGRUN_HOME"]) / "logs" / "mcp-exits.log"
    assert "broken on purpose" in log.read_text()


def test_misbehaving_tools_give_error_results(trouble: str, vault: str) -> None:
    with Servers([trouble, vault], call_timeout=1) as servers:
        assert "picky" not in servers.origin
        assert [n for n in servers.notices if "'picky'" in n and "not" in n], servers.notices
        fns = by_name(servers)
        assert fns["hang"]().startswith("error: the MCP server 'trouble' did not answer")
        assert fns["shout"](word="hi") == "HI"
        failed = fns["fail"]()
        assert failed.startswith("error:") and "the vault is locked" in failed
        died = fns["die"]()
        assert died.startswith("error: the MCP server 'trouble'"), died
        after = fns["shout"](word="hi")
        assert after.startswith("error: the MCP server 'trouble' is not running"), after
        assert fns["lookup"](key="alpha") == "zebra-4417"


def test_config_files_and_dicts(tmp_path: Path, vault: str) -> None:
    argv = shlex.split(vault)
    config = {"mcpServers": {"my vault": {"command": argv[0], "args": argv[1:],
                                          "env": {"VAULT_MODE": "sealed"}}}}  # fmt: skip
    path = tmp_path / "mcp.json"
    path.write_text(json.dumps(config))
    assert read_config(path) == config
    with Servers(path) as servers:
        assert set(servers.origin.values()) == {"my-vault"}
        assert by_name(servers)["env"](name="VAULT_MODE") == "sealed"
    specs = parse_specs(["npx -y @scope/server-files@1.2 /tmp", "uvx mcp-server-git", config])
    assert [s.name for s in specs] == ["server-files", "mcp-server-git", "my-vault"]


@pytest.mark.parametrize(
    "bad",
    [
        {"servers": {}},
        {"mcpServers": {"web": {"url": "http://localhost:1/mcp"}}},
        {"mcpServers": {"x": {"command": "x", "args": "--flag"}}},
        {"mcpServers": {"x": {"command": "x", "env": {"K": 1}}}},
        "",
        'python "unclosed',
        42,
    ],
)
def test_bad_specs_are_one_line_errors(bad: object) -> None:
    with pytest.raises(InvalidArgument):
        parse_specs(bad)


def test_a_bad_config_file(tmp_path: Path) -> None:
    path = tmp_path / "mcp.json"
    path.write_text("{not json")
    with pytest.raises(InvalidArgument, match="not JSON"):
        read_config(path)


def test_without_the_mcp_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mcp", None)
    with pytest.raises(GgrunError, match=r"pip install 'ggrun\[mcp\]'"):
        Servers(["anything"])


# ---------------------------------------------------------------- with a model


@pytest.mark.slow
def test_chat_calls_an_mcp_tool(qwen15: Any, vault: str) -> None:
    from ggrun.chat import Chat

    with Chat(qwen15, mcp=[vault], auto_run=True, temperature=0) as chat:
        assert {t.name for t in chat.tools} == {"lookup", "pid", "env"}
        reply = chat.send("What value is stored under the key 'alpha' in the vault?")
        called = [m for m in chat.history if m.role == "tool"]
        assert called and called[0].content == "zebra-4417"
        assert "zebra-4417" in reply.text
        servers = chat.mcp
    assert servers is not None and servers.tools  # closed with the chat
    assert by_name(servers)["lookup"](key="alpha").startswith("error:")


@pytest.mark.slow
def test_chat_cli_with_mcp(qwen15_path: Path, vault: str, tmp_path: Path) -> None:
    import pexpect

    from tests.test_chat_cli import PROMPT, spawn

    exits = script(tmp_path, "exits", EXITS)
    child = spawn(
        qwen15_path, "--temp", "0", "--mcp", vault, "--mcp", exits, "--yes",
        home=Path(os.environ["GGRUN_HOME"]),
    )  # fmt: skip
    child.timeout = 300  # the 1.5B on 2 cores: a call, then an answer
    try:
        assert "MCP server 'exits' failed to start" in child.before
        child.sendline("/tools")
        child.expect(r"lookup +MCP server vault")
        child.expect_exact(PROMPT)
        child.sendline("What value is stored under the key 'bravo' in the vault?")
        child.expect_exact("← quartz-9021")
        child.expect_exact(PROMPT)
        assert "quartz-9021" in child.before
        child.sendline("/exit")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0


@pytest.mark.slow
def test_chat_cli_asks_before_an_mcp_call(qwen15_path: Path, vault: str) -> None:
    import pexpect

    from tests.test_chat_cli import PROMPT, spawn

    child = spawn(qwen15_path, "--temp", "0", "--mcp", vault, home=Path(os.environ["GGRUN_HOME"]))
    child.timeout = 300  # the 1.5B on 2 cores: a call, then an answer
    try:
        child.sendline("What value is stored under the key 'alpha' in the vault?")
        child.expect(r"run lookup\(.*\)\? \[y/N\]")
        child.sendline("y")
        child.expect_exact("← zebra-4417")
        child.expect_exact(PROMPT)
        child.sendline("/exit")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0
