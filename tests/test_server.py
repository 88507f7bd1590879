"""`ggrun serve` as a real process on a loopback port, driven by the official openai client."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest

openai = pytest.importorskip("openai")

KEY = "test-key-123"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_healthy(base: str, proc: subprocess.Popen[Any]) -> None:
    """Until /health answers; fails if the server process dies first."""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            if httpx.get(base + "/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.2)
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
    raise AssertionError(f"{base} did not become healthy in 90 s")


@pytest.fixture(scope="module")
def server(smol_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = _free_port()
    cmd = [sys.executable, "-m", "ggrun", "serve", str(smol_path), "--port", str(port)]
    cmd += ["--parallel", "4", "--ctx", "512", "--api-key", KEY]
    env = {**os.environ, "GGRUN_HOME": str(tmp_path_factory.mktemp("home"))}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    _wait_healthy(base, proc)
    yield base
    proc.terminate()  # SIGTERM: a clean shutdown
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert b"Traceback" not in out, out


@pytest.fixture()
def client(server: str) -> Any:
    return openai.OpenAI(base_url=server + "/v1", api_key=KEY, max_retries=0)


def test_models_and_chat(client: Any) -> None:
    (m,) = client.models.list().data
    assert m.id == "SmolLM2-135M-Instruct.Q4_1"
    r = client.chat.completions.create(
        model=m.id,
        messages=[{"role": "user", "content": "Say hello."}],
        max_tokens=8,
        temperature=0,
    )
    choice = r.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert r.usage.completion_tokens <= 8 and r.usage.prompt_tokens > 5
    c = client.completions.create(model=m.id, prompt="The sky is", max_tokens=4, temperature=0)
    assert c.choices[0].text and c.usage.completion_tokens <= 4


def test_streaming_matches_the_whole(client: Any) -> None:
    msgs = [{"role": "user", "content": "Name three colours."}]
    whole = client.chat.completions.create(
        model="SmolLM2-135M-Instruct.Q4_1", messages=msgs, max_tokens=16, temperature=0
    )
    parts, finish = [], None
    for ev in client.chat.completions.create(
        model="SmolLM2-135M-Instruct.Q4_1", messages=msgs, max_tokens=16, temperature=0,
        stream=True,
    ):  # fmt: skip
        delta = ev.choices[0].delta
        parts.append(delta.content or "")
        finish = ev.choices[0].finish_reason or finish
    assert "".join(parts) == whole.choices[0].message.content
    assert finish == whole.choices[0].finish_reason


SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}


def test_response_format_json_schema_validates(client: Any) -> None:
    r = client.chat.completions.create(
        model="SmolLM2-135M-Instruct.Q4_1",
        messages=[{"role": "user", "content": "Invent a person with a name and an age."}],
        max_tokens=60,
        temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "p", "schema": SCHEMA}},
    )
    jsonschema.validate(json.loads(r.choices[0].message.content), SCHEMA)


def test_eight_concurrent_streams_overlap(server: str, client: Any) -> None:
    spans: dict[int, tuple[float, float, str]] = {}

    def one(i: int) -> None:
        t0, text = time.monotonic(), []
        for ev in client.chat.completions.create(
            model="SmolLM2-135M-Instruct.Q4_1",
            messages=[{"role": "user", "content": f"Count to {i + 3}."}],
            max_tokens=24, temperature=0, stream=True,
        ):  # fmt: skip
            text.append(ev.choices[0].delta.content or "")
        spans[i] = (t0, time.monotonic(), "".join(text))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert sorted(spans) == list(range(8)) and all(s[2] for s in spans.values())
    # batched, not serialized: the engine decoded several streams in one step (it counts
    # the most it held at once, so this does not depend on this machine's timing)
    metrics = httpx.get(server + "/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
    peak = int(metrics.split("\nggrun_requests_active_peak ")[1].split()[0])
    assert peak >= 2, metrics


def test_api_key_is_enforced(server: str) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    r = httpx.post(server + "/v1/chat/completions", json=body)
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    bad = {"Authorization": "Bearer nope"}
    assert httpx.get(server + "/v1/models", headers=bad).status_code == 401
    assert httpx.get(server + "/metrics").status_code == 401
    assert httpx.get(server + "/health").status_code == 200  # health needs no key


def test_bad_requests_get_4xx_and_the_server_lives_on(server: str) -> None:
    h = {"Authorization": f"Bearer {KEY}"}
    url = server + "/v1/chat/completions"
    r = httpx.post(url, content=b"{not json", headers={**h, "Content-Type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    r = httpx.post(url, json={"model": "gpt-9", "messages": [{"role": "user", "content": "x"}]},
                   headers=h)  # fmt: skip
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    r = httpx.post(url, content=b"x" * (2 << 20), headers={**h, "Content-Type": "application/json"})
    assert r.status_code == 413 and "error" in r.json()
    r = httpx.post(url, json={"messages": [{"role": "user", "content": "x"}],
                              "max_tokens": 100000}, headers=h)  # fmt: skip
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens"
    r = httpx.post(url, json={"messages": "hello"}, headers=h)
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    r = httpx.post(url, json={"messages": [{"role": "user", "content": "x"}],
                              "temperature": "hot"}, headers=h)  # fmt: skip
    assert r.status_code == 400
    bad_schema = {"type": "json_schema", "json_schema": {"schema": {"type": "nonsense"}}}
    r = httpx.post(url, json={"messages": [{"role": "user", "content": "x"}],
                              "response_format": bad_schema}, headers=h)  # fmt: skip
    assert r.status_code == 400
    assert httpx.get(server + "/health").json()["status"] == "ok"


def test_client_disconnect_frees_the_slot(server: str, client: Any) -> None:
    h = {"Authorization": f"Bearer {KEY}"}
    body = {"messages": [{"role": "user", "content": "Write a long story."}],
            "max_tokens": 400, "stream": True}  # fmt: skip
    with httpx.stream("POST", server + "/v1/chat/completions", json=body, headers=h) as r:
        for line in r.iter_lines():
            if line.startswith("data:") and "content" in line:
                break  # leave mid-stream
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        metrics = httpx.get(server + "/metrics", headers=h).text
        if "ggrun_requests_active 0" in metrics:
            break
        time.sleep(0.2)
    assert "ggrun_requests_active 0" in metrics
    assert "ggrun_requests_cancelled_total 0" not in metrics
    r2 = client.chat.completions.create(
        model="SmolLM2-135M-Instruct.Q4_1",
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=2,
    )
    assert r2.choices[0].message.content is not None


def test_ctrl_c_stops_the_server_with_130(smol_path: Path, tmp_path: Path) -> None:
    import signal

    port = _free_port()
    cmd = [sys.executable, "-m", "ggrun", "serve", str(smol_path), "--port", str(port)]
    env = {**os.environ, "GGRUN_HOME": str(tmp_path)}
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    _wait_healthy(f"http://127.0.0.1:{port}", proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and "ggrun: interrupted" in err and "Traceback" not in err


def test_port_in_use_is_one_line_before_loading(smol_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        cmd = [sys.executable, "-m", "ggrun", "serve", str(smol_path), "--port", str(port)]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert r.stderr.startswith(f"ggrun: error: cannot listen on 127.0.0.1:{port}")
    assert r.stderr.count("\n") == 1 and "serving" not in r.stderr


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
            "required": ["city"],
        },
    },
}


def test_tool_calls_whole_streamed_and_the_round_trip(client: Any) -> None:
    msgs: list[dict[str, Any]] = [{"role": "user", "content": "Weather in Rome?"}]
    args = {"model": "SmolLM2-135M-Instruct.Q4_1", "tools": [WEATHER],
            "tool_choice": "required", "temperature": 0, "max_tokens": 60}  # fmt: skip
    whole = client.chat.completions.create(messages=msgs, **args)
    choice = whole.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.function.name == "get_weather"
    arguments = json.loads(call.function.arguments)
    jsonschema.validate(arguments, WEATHER["function"]["parameters"])
    assert not choice.message.content  # the call markup never reaches content
    # streamed: index, id and name first, then the arguments
    pieces: dict[int, dict[str, str]] = {}
    finish = None
    for ev in client.chat.completions.create(messages=msgs, stream=True, **args):
        for tc in ev.choices[0].delta.tool_calls or []:
            p = pieces.setdefault(tc.index, {"id": "", "name": "", "arguments": ""})
            if tc.id:
                p["id"] = tc.id
            if tc.function and tc.function.name:
                p["name"] = tc.function.name
            if tc.function and tc.function.arguments:
                p["arguments"] += tc.function.arguments
        finish = ev.choices[0].finish_reason or finish
    assert finish == "tool_calls"
    assert [(p["name"], json.loads(p["arguments"])) for p in pieces.values()] == [
        (c.function.name, json.loads(c.function.arguments)) for c in choice.message.tool_calls
    ]
    # the round trip: the call, its result, and an answer
    msgs += [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [c.model_dump() for c in choice.message.tool_calls],
        },  # fmt: skip
        {"role": "tool", "tool_call_id": call.id, "content": "18 degrees and sunny"},
    ]
    final = client.chat.completions.create(
        model=args["model"], messages=msgs, tools=[WEATHER], temperature=0, max_tokens=20
    )
    assert final.choices[0].finish_reason in ("stop", "length", "tool_calls")


def test_a_bad_tool_is_a_400_that_names_it(server: str) -> None:
    h = {"Authorization": f"Bearer {KEY}"}
    bad = {"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"n": {"type": "number", "not": {}}}}}}  # fmt: skip
    r = httpx.post(server + "/v1/chat/completions", headers=h, json={
        "messages": [{"role": "user", "content": "x"}], "tools": [bad]})  # fmt: skip
    assert r.status_code == 400 and "'not'" in r.json()["error"]["message"]


# ---------------------------------------------------------------- cut off by max_tokens


def test_a_parse_cut_off_by_max_tokens_is_openais_length_error(client: Any) -> None:
    """A json_schema reply cut off by max_tokens is a 200 with finish_reason length, as
    OpenAI answers it: the openai SDK's parse raises its own LengthFinishReasonError."""
    from pydantic import BaseModel

    class Person(BaseModel):
        name: str
        age: int

    with pytest.raises(openai.LengthFinishReasonError):
        client.chat.completions.parse(
            model="SmolLM2-135M-Instruct.Q4_1", max_tokens=5, temperature=0,
            messages=[{"role": "user", "content": "Invent a person."}], response_format=Person,
        )  # fmt: skip


def test_parse_fills_a_pydantic_model_with_bounds_a_uuid_and_an_email(client: Any) -> None:
    """What Pydantic writes (``Field(ge=0, le=150)``, ``UUID``, ``EmailStr``) is held by
    the grammar: openai's parse gives a valid instance, on every seed."""
    from uuid import UUID

    from pydantic import BaseModel, EmailStr, Field

    class Person(BaseModel):
        name: str = Field(max_length=20)
        age: int = Field(ge=0, le=150)
        id: UUID
        email: EmailStr

    for seed in range(3):
        r = client.chat.completions.parse(
            model="SmolLM2-135M-Instruct.Q4_1", max_tokens=160, temperature=1, seed=seed,
            messages=[{"role": "user", "content": "Invent a person."}], response_format=Person,
        )  # fmt: skip
        p = r.choices[0].message.parsed
        assert isinstance(p, Person) and 0 <= p.age <= 150 and isinstance(p.id, UUID)


def test_a_streamed_schema_cut_off_ends_with_length_not_an_error(server: str) -> None:
    rf = {"type": "json_schema", "json_schema": {"name": "p", "schema": SCHEMA}}
    body = {"messages": [{"role": "user", "content": "Invent a person."}], "stream": True,
            "response_format": rf, "max_tokens": 5, "temperature": 0}  # fmt: skip
    h = {"Authorization": f"Bearer {KEY}"}
    with httpx.stream("POST", server + "/v1/chat/completions", headers=h, json=body) as r:
        assert r.status_code == 200
        lines = [ln[6:] for ln in r.iter_lines() if ln.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    events = [json.loads(ln) for ln in lines[:-1]]
    assert not any("error" in e for e in events)
    assert [c["finish_reason"] for e in events for c in e["choices"]][-1] == "length"
    text = "".join(c["delta"].get("content") or "" for e in events for c in e["choices"])
    assert text.startswith("{")  # what was generated, cut off


def test_a_forced_tool_call_cut_off_is_a_200_with_length(client: Any) -> None:
    r = client.chat.completions.create(
        model="SmolLM2-135M-Instruct.Q4_1", tools=[WEATHER], tool_choice="required",
        messages=[{"role": "user", "content": "Weather in Rome?"}], max_tokens=3,
        temperature=0,
    )  # fmt: skip
    choice = r.choices[0]
    assert choice.finish_reason == "length" and not choice.message.tool_calls
    assert "<tool" not in (choice.message.content or "")  # no partial call markup
