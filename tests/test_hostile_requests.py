"""Hostile requests: grammars, HTTP bodies, batch lines and chat input.

Each bad input ends as one clear error (CLI: exit 1 and one line; server: a 4xx with an
OpenAI error body; batch: an error record for that line), in bounded time and memory,
and the process stays up for everybody else. Files (GGUF, templates, presets, the
converter's inputs) are attacked in tests/test_hostile_files.py.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from ggrun.cli.app import app
from ggrun.errors import ContextOverflow, GgrunError, GrammarError, InvalidArgument
from ggrun.request import Request

KEY = "hostile-key-42"
runner = CliRunner()


# ---------------------------------------------------------------- grammars


@pytest.mark.parametrize(
    "grammar",
    [
        'root ::= "a" "\\x00"',  # a character no token can produce, after a legal one
        "root ::= [\\x00]",
        "root ::= " + "(" * 200 + '"a"' + ")" * 200,  # llama.cpp's parser recurses
        "root ::= x0\n" + "".join(f"x{i} ::= x{i + 1}\n" for i in range(6000)) + 'x6000 ::= "a"',
    ],
    ids=["nul-literal", "nul-class", "deep-parens", "too-many-rules"],
)
def test_hostile_grammars_are_refused_before_llama_cpp(smol_path: Path, tmp_path: Path,
                                                       grammar: str) -> None:  # fmt: skip
    g = tmp_path / "g.gbnf"
    g.write_text(grammar)
    r = runner.invoke(app, ["generate", str(smol_path), "Say a", "--grammar", str(g), "-n", "4"])
    assert r.exit_code == 1, r.output
    assert r.stderr.count("\n") == 1 and "ggrun: error:" in r.stderr, r.stderr
    assert "Traceback" not in r.output


def test_grammar_file_is_read_as_a_file(smol_path: Path, tmp_path: Path) -> None:
    """--grammar FILE hands the file's text to llama.cpp, not its name."""
    g = tmp_path / "yes.gbnf"
    g.write_text('root ::= "yes" | "no"\n')
    args = ["generate", str(smol_path), "Answer yes or no: is the sky blue?", "--grammar", str(g)]
    r = runner.invoke(app, [*args, "--temp", "0", "-n", "8"])
    assert r.exit_code == 0, r.output
    assert r.stdout.strip() in ("yes", "no")


RUNTIME_DEAD_END = textwrap.dedent(
    """
    import sys
    from ggrun import llama
    from ggrun.engine import LoadConfig, Model
    from ggrun.errors import GrammarError
    from ggrun.sampling import SamplingConfig

    m = Model(sys.argv[1], LoadConfig(n_ctx=64))
    (a,) = m.tokenize("a")
    ctx = llama.Context(m.weights, llama.ContextParams(n_ctx=64))
    b = llama.Batch(4)
    b.add(m.tokenize("Hi")[0], 0, 0, True)
    ctx.decode(b)
    # no up-front check here: the sampler alone must stop the dead end
    s = llama.Sampler(SamplingConfig(temperature=0), ctx, 'root ::= "a" "\\\\x00"')
    assert s.sample(0) == a
    b.clear(); b.add(a, 1, 0, True); ctx.decode(b)
    try:
        s.sample(0)
    except GrammarError as e:
        print("GrammarError:", e)
    """
)


def test_a_dead_end_at_run_time_is_an_error_not_an_abort(smol_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-c", RUNTIME_DEAD_END, str(smol_path)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr  # llama.cpp would abort with 134
    assert "GrammarError: the grammar allows no token here" in r.stdout


def test_expensive_grammar_is_stopped_within_a_step_budget(smol_path: Path) -> None:
    """Overlapping alternatives that double the grammar's stacks at every nesting level."""
    from ggrun import llama
    from ggrun.engine import LoadConfig, Model
    from ggrun.sampling import SamplingConfig

    bomb = 'root ::= x\nx ::= "[" x "]" | "[" x "]" " " | "[" x "]" "  " | "a"\n'
    with Model(smol_path, LoadConfig(n_ctx=512)) as m:
        (open_,) = m.tokenize("[")
        with llama.Context(m.weights, llama.ContextParams(n_ctx=512)) as ctx, llama.Batch(4) as b:
            b.add(m.tokenize("Hi")[0], 0, 0, True)
            ctx.decode(b)
            s = llama.Sampler(SamplingConfig(temperature=0), ctx, bomb)
            steps = 0
            try:
                with pytest.raises(GrammarError, match="too expensive"):
                    for pos in range(1, 200):
                        ctx.logits(0)[open_] = 1e9  # the model keeps opening brackets
                        tok = s.sample(0)
                        steps += 1
                        b.clear()
                        b.add(tok, pos, 0, True)
                        ctx.decode(b)
            finally:
                s.close()
    assert steps >= 5  # it ran a while before it got too expensive


def test_schema_sizes_are_bounded_before_the_converter_inlines_them() -> None:
    for schema in (
        {"type": "array", "items": {"type": "integer"}, "minItems": 10**9},
        {"type": "string", "maxLength": 10**9},
        {"type": "string", "pattern": "^((a{100}){100}){100}$"},
        {"type": "string", "minLength": "5"},
    ):
        with pytest.raises(GrammarError):
            Request.build(prompt="x", schema=schema)
    deep: dict[str, Any] = {"type": "string"}
    for _ in range(200):
        deep = {"type": "array", "items": deep}
    with pytest.raises(GrammarError, match="nested"):
        Request.build(prompt="x", schema=deep)


# ---------------------------------------------------------------- requests


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"max_tokens": "5"}, "max_tokens"),
        ({"temperature": float("nan")}, "temperature"),
        ({"temperature": 10**401}, "temperature"),  # past any float: OverflowError before
        ({"temperature": 1e300}, "temperature"),
        ({"repeat_penalty": 1e300}, "repeat_penalty"),  # inf as llama.cpp's float before
        ({"top_k": 1.5}, "top_k"),
        ({"seed": -1}, "seed"),
        ({"seed": 2**32 - 1}, "seed"),  # llama.cpp's "a random seed": never reproducible
        ({"max_tokens": 10**400}, "max_tokens"),
        ({"think": "yes"}, "think"),
        ({"stop": [1, 2]}, "stop[0]"),
        ({"stop": ["x"] * 100}, "stop"),
        ({"prompt": "bad \ud800 text"}, "prompt"),
        ({"preset": "no-such-preset"}, "preset"),
        ({"wat": 1}, "wat"),
    ],
)
def test_a_bad_option_names_its_field(options: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidArgument, match=field.replace("[", r"\[").replace("]", r"\]")):
        Request.build(**{"prompt": "x", **options})


@pytest.mark.parametrize(
    ("parse", "body", "param"),
    [
        ("chat", {"messages": [{"role": "user", "content": "hi"}], "user": 5}, "user"),
        ("completions", {"prompt": "hi", "user": ["x"]}, "user"),
        ("embeddings", {"input": "x", "user": {"id": 1}}, "user"),
    ],
)
def test_openai_user_must_be_a_string(parse: str, body: dict[str, Any], param: str) -> None:
    """``user`` was let through as any type (a number, a list) on the OpenAI routes."""
    from ggrun.api import openai
    from ggrun.errors import ApiError

    adapter = {"chat": openai.CHAT, "completions": openai.COMPLETIONS,
               "embeddings": openai.EMBEDDINGS}[parse]  # fmt: skip
    with pytest.raises(ApiError) as e:
        adapter.parse(body)
    assert e.value.status == 400 and e.value.param == param
    adapter.parse({**body, "user": "someone"})  # a string is fine


def test_a_tools_strict_flag_is_a_boolean() -> None:
    from ggrun import tools

    fn = {"name": "f", "parameters": {"type": "object"}}
    with pytest.raises(InvalidArgument, match="strict must be true or false"):
        tools.from_dict({"type": "function", "function": {**fn, "strict": "yes"}})
    for ok in (True, False, None):
        tools.from_dict({"type": "function", "function": {**fn, "strict": ok}})


def test_a_stop_string_is_a_string() -> None:
    assert Request.build(prompt="x", stop="leash").stop == ("leash",)


# ---------------------------------------------------------------- batch lines


def _batch(smol_path: Path, src: Path, out: Path, *extra: str) -> Any:
    return runner.invoke(app, ["batch", str(smol_path), str(src), "-o", str(out), "-n", "4",
                               "-p", "2", *extra])  # fmt: skip


def test_bad_batch_lines_get_error_records(smol_path: Path, tmp_path: Path) -> None:
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    deep = "[" * 100_000 + "]" * 100_000
    lines = [
        json.dumps({"id": "ok", "prompt": "Hello"}),
        json.dumps({"id": "str-max", "prompt": "Hello", "max_tokens": "5"}),
        '{"id": "\\ud800", "prompt": "Hello"}',  # a lone surrogate in the id
        '{"id": "sur", "prompt": "bad \\udc00"}',  # ... and in the prompt
        '{"id": "deep", "prompt": ' + deep + "}",
        json.dumps({"id": "types", "messages": [{"role": "user", "content": 5}]}),
        json.dumps({"id": "stop", "prompt": "Hello", "stop": "leash"}),
        json.dumps({"id": "schema-path", "prompt": "x", "schema": "/etc/passwd"}),
    ]
    src.write_bytes(("\n".join(lines) + "\n").encode() + b'{"id": "utf8", "prompt": "\xff"}\n')
    r = _batch(smol_path, src, out)
    assert r.exit_code == 0, r.output
    recs = {str(x["id"]): x for x in map(json.loads, out.read_text().splitlines())}
    assert recs["ok"]["error"] is None and recs["stop"]["error"] is None
    assert "max_tokens" in recs["str-max"]["error"]
    assert "surrogate" in recs["sur"]["error"]
    assert "content" in recs["types"]["error"]
    assert "object" in recs["schema-path"]["error"]  # a schema is never a path
    errors = [x["error"] for x in recs.values()]
    assert any("lone surrogate" in (e or "") and "'id'" in (e or "") for e in errors)
    assert any("nested too deeply" in (e or "") for e in errors)
    assert any("not UTF-8" in (e or "") for e in errors)
    assert len(recs) == 9


def test_output_must_be_a_results_file(smol_path: Path, tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"id": 1, "prompt": "Hello"}) + "\n")
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\nthe last line has no newline")
    before = notes.read_bytes()
    for out, message in ((notes, "not a ggrun result"), (src, "input file"),
                         (tmp_path, "directory")):  # fmt: skip
        r = _batch(smol_path, src, out)
        assert r.exit_code == 1 and message in r.stderr, r.output
    assert notes.read_bytes() == before and src.read_text().count("\n") == 1


def test_two_runs_cannot_write_one_output(smol_path: Path, tmp_path: Path) -> None:
    import fcntl

    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text(json.dumps({"id": 1, "prompt": "Hello"}) + "\n")
    out.write_text("")
    with out.open("a") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)  # another run holds it
        r = _batch(smol_path, src, out)
    assert r.exit_code == 1 and "another ggrun batch" in r.stderr
    assert _batch(smol_path, src, out).exit_code == 0  # free again


# ---------------------------------------------------------------- chat


def test_chat_keeps_its_history_through_bad_input(smol: Any, tmp_path: Path) -> None:
    from ggrun.chat import Chat

    chat = Chat(smol, temperature=0, max_tokens=4)
    chat.send("Hello")
    kept = list(chat.history)
    with pytest.raises(ContextOverflow, match="kept"):
        chat.send("word " * 5000)  # larger than the whole context
    assert chat.history == kept
    with pytest.raises(GgrunError):
        chat.save(tmp_path)  # a directory
    bad = tmp_path / "bad.json"
    for raw in (b"\xff\xfe not utf-8", b"[" * 100_000, b'{"messages": [{"role": 1}]}', b"{"):
        bad.write_bytes(raw)
        with pytest.raises(GgrunError):
            chat.load(bad)
        assert chat.history == kept


def test_non_utf8_input_is_a_clean_error(smol_path: Path, tmp_path: Path) -> None:
    bad = tmp_path / "p.txt"
    bad.write_bytes(b"caf\xe9 au lait")
    r = runner.invoke(app, ["generate", str(smol_path), "--file", str(bad)])
    assert r.exit_code == 1 and "not UTF-8" in r.stderr and r.stderr.count("\n") == 1
    cmd = [sys.executable, "-m", "ggrun", "generate", str(smol_path), "-n", "2"]
    p = subprocess.run(cmd, input=b"\xff\xfe", capture_output=True, timeout=120)
    assert p.returncode == 1 and b"not UTF-8" in p.stderr and b"Traceback" not in p.stderr
    chat = [sys.executable, "-m", "ggrun", "chat", str(smol_path), "-n", "2", "--temp", "0"]
    p = subprocess.run(chat, input=b"\xff\xfe bad\n/think hi\n/nope\n", capture_output=True,
                       timeout=120)  # fmt: skip
    assert p.returncode == 0 and b"Traceback" not in p.stderr, p.stderr
    out = p.stdout.decode()
    assert "error:" in out and "unknown command /nope" in out
    assert "unknown command /think" not in out  # Qwen3's soft switch is a message


# ---------------------------------------------------------------- the server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(smol_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    home = tmp_path_factory.mktemp("home")
    keyfile = home / "key"
    keyfile.write_text(KEY + "\n")
    port = _free_port()
    cmd = [sys.executable, "-m", "ggrun", "serve", str(smol_path), "--port", str(port),
           "--parallel", "2", "--ctx", "512", "--api-key-file", str(keyfile)]  # fmt: skip
    env = {**os.environ, "GGRUN_HOME": str(home), "GGRUN_BODY_TIMEOUT": "2"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(base + "/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.2)
        assert proc.poll() is None
    yield base
    proc.terminate()
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert b"Traceback" not in out, out.decode()  # no request ever made a traceback


H = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
MSG = [{"role": "user", "content": "hi"}]


def _post(base: str, body: Any, headers: dict[str, str] | None = None,
          path: str = "/v1/chat/completions") -> httpx.Response:  # fmt: skip
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(base + path, content=raw, headers=headers or H, timeout=60)


@pytest.mark.parametrize(
    ("body", "what"),
    [
        (b"[" * 100_000 + b"]" * 100_000, "JSON"),
        (b'{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}', "NaN"),
        (b'{"messages": [{"role": "user", "content": "hi"}], "top_p": Infinity}', "Infinity"),
        ({"messages": MSG, "temperature": 10**401}, "temperature"),
        (b'{"messages": [{"role": "user", "content": "\\ud800"}]}', "surrogate"),
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}, "text"),
        ({"messages": MSG, "stream": "no"}, "stream"),
        ({"messages": MSG, "n": 10**9}, "'n'"),
        ({"messages": MSG, "logit_bias": {"1": 5e300}}, "logit_bias"),
        ({"messages": MSG, "logit_bias": {"9" * 5000: 1}}, "logit_bias"),
        ({"messages": MSG, "logit_bias": {"2147483647": 1}}, "logit_bias"),
        ({"messages": MSG, "logit_bias": {str(i): 1 for i in range(10_000)}}, "logit_bias"),
        ({"messages": MSG, "max_tokens": "5"}, "max_tokens"),
        ({"messages": MSG, "whatever": 1}, "whatever"),
        ({"messages": [{"role": "user"}] * 3 + [{"role": 5}]}, "role"),
        ({"messages": MSG, "stop": "x" * 5000}, "stop"),
        (
            {
                "messages": MSG,
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"schema": "/etc/passwd"},
                },
            },
            "JSON object",
        ),  # fmt: skip
        (
            {
                "messages": MSG,
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"schema": {"type": "string", "pattern": "^\\x00$"}},
                },
            },
            "NUL",
        ),  # fmt: skip
        (
            {
                "messages": MSG,
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {
                        "schema": {"type": "array", "items": {"type": "integer"}, "minItems": 10**9}
                    },
                },
            },
            "minItems",
        ),  # fmt: skip
    ],
)
def test_malformed_bodies_are_400s_that_say_why(server: str, body: Any, what: str) -> None:
    r = _post(server, body)
    assert r.status_code == 400, r.text
    assert what in r.json()["error"]["message"] or r.json()["error"]["param"] == what


# A lone surrogate is legal JSON but not text: in a field an adapter echoes (Responses'
# tools, metadata, user) it made the reply fail to encode (a 500 and a traceback); in a
# tool's text it reached the tokenizer as broken UTF-8. Every route refuses it up front.
SURROGATES = [
    ("/v1/responses", b'{"input": "hi", "user": "\\ud800"}', "user"),
    ("/v1/responses", b'{"input": "hi", "metadata": {"\\ud800": "x"}}', "metadata"),
    ("/v1/responses", b'{"input": "hi", "tools": [{"type": "function", "name": "f", '
     b'"description": "\\udfff", "parameters": {"type": "object"}}]}', "tools"),
    ("/v1/responses", b'{"input": "hi", "tools": [{"type": "function", "name": "f", '
     b'"parameters": {"type": "object", "properties": {"\\ud800": {}}}}]}', "tools"),
    ("/v1/messages/count_tokens", b'{"messages": [{"role": "user", "content": "x"}], '
     b'"tools": [{"name": "f", "description": "\\ud800", "input_schema": {"type": "object"}}]}',
     "tools"),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "x"}], '
     b'"response_format": {"type": "json_schema", "json_schema": {"schema": '
     b'{"type": "string", "enum": ["\\ud800"]}}}}', "response_format"),
]  # fmt: skip


@pytest.mark.parametrize(("path", "body", "param"), SURROGATES)
def test_a_lone_surrogate_anywhere_is_a_400(server: str, path: str, body: bytes,
                                            param: str) -> None:  # fmt: skip
    r = _post(server, body, path=path)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert "lone surrogate" in err["message"], err
    if path != "/v1/messages/count_tokens":  # Anthropic's shape has no param
        assert err["param"] == param


def test_requests_from_a_web_page_are_refused(server: str) -> None:
    port = server.rsplit(":", 1)[1]
    r = _post(server, {"messages": MSG}, {**H, "Host": "evil.example"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "bad_host"
    r = _post(server, {"messages": MSG, "max_tokens": 1}, {**H, "Host": f"localhost:{port}"})
    assert r.status_code == 200
    r = _post(server, {"messages": MSG}, {**H, "Content-Type": "text/plain"})
    assert r.status_code == 415  # a form or a fetch without a CORS preflight
    r = _post(server, {"messages": MSG}, {**H, "Authorization": f"Bearer {KEY[:-1]}"})
    assert r.status_code == 401


def test_a_slow_body_times_out(server: str) -> None:
    host, port = server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            + f"Authorization: Bearer {KEY}\r\n".encode()
            + b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"
        )
        reply = s.recv(4096)
    assert b" 408 " in reply.split(b"\r\n")[0]


def test_a_body_cut_midway_leaves_no_traceback(server: str) -> None:
    host, port = server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as s:
        s.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            + f"Authorization: Bearer {KEY}\r\n".encode()
            + b'Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"mess'
        )
    assert httpx.get(server + "/health").status_code == 200  # (the fixture checks the log)


def _metric(server: str, name: str) -> int:
    text = httpx.get(server + "/metrics", headers=H).text
    return int(float(text.split(f"\n{name} ")[1].split()[0]))


def test_a_non_streaming_client_that_leaves_frees_its_slot(server: str) -> None:
    before = _metric(server, "ggrun_requests_cancelled_total")
    body = json.dumps({"messages": [{"role": "user", "content": "Write a long story."}],
                       "max_tokens": 400, "temperature": 0}).encode()  # fmt: skip
    host, port = server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as s:
        s.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            + f"Authorization: Bearer {KEY}\r\nContent-Length: {len(body)}\r\n".encode()
            + b"Content-Type: application/json\r\n\r\n"
            + body
        )
        deadline = time.monotonic() + 30
        while _metric(server, "ggrun_requests_active") == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and _metric(server, "ggrun_requests_active"):
        time.sleep(0.1)
    assert _metric(server, "ggrun_requests_active") == 0
    assert _metric(server, "ggrun_requests_cancelled_total") == before + 1


def test_output_cut_off_by_max_tokens_is_a_200_with_length(server: str) -> None:
    """As OpenAI answers it: the client sees finish_reason length and acts on it."""
    story = {"type": "string", "minLength": 40}  # no valid answer fits in 3 tokens
    schema = {"type": "object", "properties": {"story": story}, "required": ["story"]}
    rf = {"type": "json_schema", "json_schema": {"schema": schema}}
    body = {"messages": MSG, "response_format": rf, "max_tokens": 3, "temperature": 1.0}
    r = _post(server, body)
    assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] == "length"


def test_a_huge_number_is_not_echoed_whole() -> None:
    with pytest.raises(InvalidArgument) as e:
        Request.build(prompt="x", max_tokens=10**400)
    assert len(str(e.value)) < 120 and "401 digits" in str(e.value)


def test_either_key_header_lets_in_and_a_wrong_one_never(server: str) -> None:
    body = {"messages": MSG, "max_tokens": 1}
    plain = {"Content-Type": "application/json"}
    assert _post(server, body, {**plain, "x-api-key": KEY}).status_code == 200
    assert _post(server, body, {**H, "x-api-key": "wrong"}).status_code == 200  # Bearer is right
    assert _post(server, body, {**plain, "x-api-key": KEY, "Authorization": "Bearer no"}
                 ).status_code == 200  # fmt: skip
    assert _post(server, body, {**plain, "x-api-key": "wrong"}).status_code == 401
    assert _post(server, body, {**plain, "x-api-key": ""}).status_code == 401


def test_a_model_card_needs_a_name(server: str) -> None:
    r = httpx.get(server + "/v1/models/", headers=H)
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    assert httpx.get(server + "/v1/models/nope", headers=H).status_code == 404
