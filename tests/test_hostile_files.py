"""Hostile files: what a batch line may name, and every file ggrun reads or writes.

A batch line (or any request read from data) names a task preset, never a file: a path
in a line is an error record for that line and the rest of the batch completes. Every
file ggrun reads on the operator's behalf (tasks, presets, schemas, grammars, tool
files, saved chats, the batch input) must be a regular file, opened without blocking
and read within a cap: a directory, a FIFO, ``/dev/zero``, ``/proc/self/environ``, a
file over the cap, bytes that are not UTF-8 or text that is not YAML are one clear error
line, never a hang, a traceback or the file's contents in the message.

Commands run in a subprocess with a time limit (a FIFO would hang them) and an
address-space limit (``/dev/zero`` would eat the machine's memory).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pexpect
import pytest

import ggrun
from ggrun.batching import batch
from ggrun.errors import GgrunError, GrammarError, InvalidArgument, PresetError
from ggrun.presets import load_yaml
from ggrun.request import Request, one
from ggrun.tasks import load_task
from tests.test_chat_cli import PROMPT, spawn
from tests.test_server import _free_port, _wait_healthy

SECRET = "db_password: hunter2-xyzzy\napi_token: tok-777\n"
MEMORY_CAP = 6 << 30  # bytes of address space a command may map


def _cap_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))


def ggrun_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``python -m ggrun ARGS`` with bounded time and memory; a hang fails the test."""
    return subprocess.run(
        [sys.executable, "-m", "ggrun", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=_cap_memory,
        env={**os.environ, "NO_COLOR": "1"},
    )


@pytest.fixture
def hostile(tmp_path: Path) -> dict[str, Path]:
    """Files no data file should be: each is refused, with one line and no contents."""
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    big = tmp_path / "big.yaml"
    with big.open("wb") as f:
        f.truncate(5 << 20)
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"system: caf\xe9\n")
    folder = tmp_path / "folder.yaml"
    folder.mkdir()
    return {
        "fifo": fifo,
        "dev-zero": Path("/dev/zero"),
        "proc-environ": Path("/proc/self/environ"),
        "directory": folder,
        "root": Path("/"),
        "over the cap": big,
        "not UTF-8": latin,
    }


WHY = {
    "fifo": "is a FIFO",
    "dev-zero": "is a device",
    "proc-environ": "invalid YAML",
    "directory": "is a directory",
    "root": "is a directory",
    "over the cap": "over 4 MiB",
    "not UTF-8": "not UTF-8",
}


def _one_clean_line(p: subprocess.CompletedProcess[str], *secrets: str) -> str:
    assert p.returncode == 1, (p.stdout, p.stderr)
    assert "Traceback" not in p.stderr and p.stderr.count("\n") == 1, p.stderr
    assert p.stderr.startswith("ggrun: error: ")
    for s in secrets:
        assert s not in p.stderr and s not in p.stdout
    return p.stderr


# ---------------------------------------------------------------- batch lines


def test_a_batch_line_names_a_preset_never_a_file(smol_path: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret.yaml"
    secret.write_text(SECRET)
    fifo = tmp_path / "task.fifo"
    os.mkfifo(fifo)
    bad = {
        "secret": str(secret),
        "environ": "/proc/self/environ",
        "fifo": str(fifo),
        "zero": "/dev/zero",
        "relative": "../tasks/sentiment",
        "a number": 5,
        "a mapping": {"system": "x"},
    }
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    lines = [{"id": k, "task": v, "text": "I loved it"} for k, v in bad.items()]
    lines += [{"id": "plain", "prompt": "Hello"},
              {"id": "preset", "task": "sentiment", "text": "I loved it"}]  # fmt: skip
    src.write_text("".join(json.dumps(x) + "\n" for x in lines))
    p = ggrun_cli("batch", str(smol_path), str(src), "-o", str(out), "-n", "24", "-p", "2")
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    recs = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert set(recs) == set(bad) | {"plain", "preset"}
    for k in bad:
        assert recs[k]["finish_reason"] == "error"
        assert "task preset" in recs[k]["error"], recs[k]["error"]
    assert recs["plain"]["error"] is None and recs["plain"]["text"]
    assert recs["preset"]["error"] is None and recs["preset"]["data"]["sentiment"]
    for s in ("db_password", "hunter2", "api_token"):
        assert s not in out.read_text() and s not in p.stderr


def test_python_batch_items_name_presets_too(smol: Any, tmp_path: Path) -> None:
    """The same rule for dicts given to ``ggrun.batch``; a Task object is the way to
    bring a task file (the caller's own choice)."""
    task = tmp_path / "mine.yaml"
    task.write_text("system: Answer yes.\nmax_tokens: 2\n")
    items = [
        {"task": "/dev/zero", "prompt": "x"},
        {"task": str(task), "prompt": "x"},
        {"task": load_task(str(task)), "prompt": "x"},
        "Hello",
    ]
    r = batch(smol, items, max_tokens=2)
    assert "task preset" in (r[0].error or "") and "task preset" in (r[1].error or "")
    assert r[2].error is None and r[3].error is None
    with pytest.raises(PresetError, match="is a device"):  # the caller's own choice
        smol.run_task("/dev/zero", "x")


# ---------------------------------------------------------------- the operator's files


@pytest.mark.parametrize("kind", WHY)
def test_task_files_are_checked(smol_path: Path, hostile: dict[str, Path], kind: str) -> None:
    p = ggrun_cli("generate", str(smol_path), "--task", str(hostile[kind]), "x")
    assert WHY[kind] in _one_clean_line(p)


def test_a_secret_yaml_is_not_a_task_and_its_keys_stay_secret(
    smol_path: Path, tmp_path: Path
) -> None:
    secret = tmp_path / "secret.yaml"
    secret.write_text(SECRET)
    p = ggrun_cli("generate", str(smol_path), "--task", str(secret), "x")
    assert "not a ggrun task file" in _one_clean_line(p, "db_password", "hunter2", "api_token")


@pytest.mark.parametrize(
    ("option", "kinds"),
    [
        ("--schema", ("fifo", "dev-zero", "directory", "over the cap", "not UTF-8")),
        ("--grammar", ("fifo", "dev-zero", "root", "not UTF-8")),
        ("--tools", ("fifo", "dev-zero", "directory", "over the cap")),
    ],
)
def test_schema_grammar_and_tool_files_are_checked(
    smol_path: Path, hostile: dict[str, Path], option: str, kinds: tuple[str, ...]
) -> None:
    for kind in kinds:
        p = ggrun_cli("generate", str(smol_path), option, str(hostile[kind]), "x")
        assert WHY[kind] in _one_clean_line(p), (option, kind)


@pytest.mark.parametrize(
    ("command", "kinds"),
    [
        (["generate", "{model}", "--file"], ("fifo", "dev-zero", "directory", "not UTF-8")),
        (["serve", "{model}", "--api-key-file"], ("fifo", "dev-zero", "root", "not UTF-8")),
        (["bench", "{model}", "--text"], ("fifo", "dev-zero", "directory")),
    ],
)
def test_prompt_key_and_text_files_are_checked(
    smol_path: Path, hostile: dict[str, Path], command: list[str], kinds: tuple[str, ...]
) -> None:
    """generate --file read /dev/zero until memory ran out, and waited on a FIFO for ever."""
    args = [a.format(model=smol_path) for a in command]
    for kind in kinds:
        p = ggrun_cli(*args, str(hostile[kind]), timeout=60)
        assert WHY[kind] in _one_clean_line(p), (command, kind)


def test_the_batch_input_and_output_are_regular_files(
    smol_path: Path, hostile: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "out.jsonl"
    for kind in ("fifo", "dev-zero", "directory"):
        p = ggrun_cli("batch", str(smol_path), str(hostile[kind]), "-o", str(out))
        assert WHY[kind] in _one_clean_line(p), kind
    src = tmp_path / "in.jsonl"
    src.write_text('{"prompt": "Hello"}\n')
    for kind in ("fifo", "dev-zero", "root"):
        p = ggrun_cli("batch", str(smol_path), str(src), "-o", str(hostile[kind]))
        line = _one_clean_line(p)
        assert line.startswith(f"ggrun: error: -o {hostile[kind]}"), line


def test_yaml_that_is_not_text_is_a_preset_error() -> None:
    with pytest.raises(PresetError, match="invalid YAML") as e:
        load_yaml(Path("/proc/self/environ"))
    assert "\n" not in str(e.value) and "=" not in str(e.value)


# ---------------------------------------------------------------- tool names


def _tool(name: str) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "parameters": {"type": "object"}}}


@pytest.mark.parametrize("name", ["get_weather\n", "get_weather\n\n", "\nget_weather", "a b"])
def test_a_tool_name_matches_in_full(smol: Any, name: str) -> None:
    msgs = [{"role": "user", "content": "Weather in Paris?"}]
    with pytest.raises(InvalidArgument, match="function.name must be"):
        smol.chat(msgs, tools=[_tool(name)], max_tokens=4)
    assert Request.build(messages=msgs, tools=[_tool("get_weather")]).tools[0].name == "get_weather"


def test_a_tool_file_with_a_bad_name_is_refused(smol_path: Path, tmp_path: Path) -> None:
    tools = tmp_path / "tools.json"
    tools.write_text(json.dumps([_tool("get_weather\n")]))
    p = ggrun_cli("generate", str(smol_path), "--tools", str(tools), "x")
    assert "function.name must be" in _one_clean_line(p)


# ---------------------------------------------------------------- tuple schemas

DRAFT7 = "http://json-schema.org/draft-07/schema#"
TUPLE = [{"type": "string", "maxLength": 8}, {"type": "integer"}]


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        ({"$schema": DRAFT7, "type": "array", "items": TUPLE}, "write the list as 'prefixItems'"),
        ({"type": "array", "items": TUPLE}, "write the list as 'prefixItems'"),
        (
            {"type": "object", "properties": {"p": {"$schema": DRAFT7, "items": TUPLE}}},
            "'items' at /properties/p/items is a list",
        ),
        ({"type": "array", "prefixItems": TUPLE, "items": {"type": "integer"}}, "'items': false"),
        ({"type": "array", "prefixItems": TUPLE, "minItems": 3}, "outside minItems"),
    ],
)
def test_tuple_schemas_ggrun_cannot_keep_are_refused(
    smol: Any, schema: dict[str, Any], message: str
) -> None:
    with pytest.raises(GrammarError, match=message):
        smol.generate("A pair:", schema=schema, max_tokens=16)
    with pytest.raises(GrammarError, match=message):
        smol.chat([{"role": "user", "content": "A pair?"}], schema=schema, max_tokens=16)


def test_prefix_items_make_a_tuple(smol: Any) -> None:
    schema = {"type": "array", "prefixItems": TUPLE, "items": False}
    r = smol.chat([{"role": "user", "content": "A name and an age?"}], schema=schema,
                  max_tokens=40, temperature=0)  # fmt: skip
    assert isinstance(r.data, list) and len(r.data) == 2 and isinstance(r.data[1], int)


@pytest.fixture(scope="module")
def server(smol_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = _free_port()
    cmd = [sys.executable, "-m", "ggrun", "serve", str(smol_path), "--port", str(port)]
    env = {**os.environ, "GGRUN_HOME": str(tmp_path_factory.mktemp("home"))}
    proc = subprocess.Popen(cmd + ["--ctx", "512"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(base, proc)
        yield base
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


def test_the_server_refuses_list_items_and_bad_tool_names(server: str) -> None:
    url = server + "/v1/chat/completions"
    msgs = [{"role": "user", "content": "x"}]
    fmt = {"type": "json_schema", "json_schema": {"name": "t", "schema": {"$schema": DRAFT7,
           "type": "array", "items": TUPLE}}}  # fmt: skip
    r = httpx.post(url, json={"messages": msgs, "response_format": fmt}, timeout=60)
    assert r.status_code == 400 and "prefixItems" in r.json()["error"]["message"], r.text
    r = httpx.post(url, json={"messages": msgs, "tools": [_tool("get_weather\n")]}, timeout=60)
    assert r.status_code == 400 and "function.name" in r.json()["error"]["message"], r.text


# ---------------------------------------------------------------- chat /save and /load


def test_chat_save_and_load_of_bad_targets_keep_the_session(
    smol_path: Path, isolated_home: Path, tmp_path: Path, hostile: dict[str, Path]
) -> None:
    save_fifo = tmp_path / "save.fifo"
    os.mkfifo(save_fifo)
    targets = {
        "save": ["/", str(tmp_path), str(save_fifo), "/proc/ggrun-chat.json", "/dev/null"],
        "load": ["/", str(hostile["directory"]), str(hostile["fifo"]), "/dev/zero",
                 "/proc/self/environ", str(hostile["not UTF-8"]), str(tmp_path / "none")],
    }  # fmt: skip
    child = spawn(smol_path, "--temp", "0", "-n", "8", home=isolated_home)
    child.timeout = 30  # a hang on a FIFO fails here
    try:
        child.sendline("My name is Zorblat.")
        child.expect_exact(PROMPT)
        for command, paths in targets.items():
            for path in paths:
                child.sendline(f"/{command} {path}")
                child.expect(r"error: [^\n]+\n")
                assert "Traceback" not in child.before
                child.expect_exact(PROMPT)
        good = tmp_path / "good.json"
        child.sendline(f"/save {good}")
        child.expect("saved to")
        child.expect_exact(PROMPT)
        child.sendline("/exit")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0
    data = json.loads(good.read_text())
    assert [m["role"] for m in data["messages"]] == ["user", "assistant"]
    assert data["messages"][0]["content"] == "My name is Zorblat."


def test_chat_load_refuses_special_files(smol: Any, hostile: dict[str, Path]) -> None:
    chat = ggrun.Chat(smol, max_tokens=2)
    chat.send("Hello")
    kept = list(chat.history)
    for kind in ("fifo", "dev-zero", "directory", "proc-environ"):
        with pytest.raises(GgrunError):
            chat.load(hostile[kind])
        assert chat.history == kept, kind


def test_a_line_cannot_pass_off_text_as_an_object(smol: Any) -> None:
    r = batch(smol, [{"prompt": "x", "constraint": "root ::= x"}, "Hello"], max_tokens=2)
    assert "constraint must be" in (r[0].error or "") and r[1].error is None


def test_requests_never_open_task_files() -> None:
    line = {"task": "/dev/zero", "prompt": "x"}
    with pytest.raises(PresetError, match="task preset"):
        one(line, 0)
    assert Request.build(task="sentiment", prompt="x").constraint is not None
