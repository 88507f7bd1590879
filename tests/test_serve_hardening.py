"""`ggrun serve` against hostile input, second round: the ollama API typed like the OpenAI
one, Host names (DNS rebinding), no file paths in answers, a model that cannot load, and
``--max-loaded`` as a hard cap.

One server runs in this process (uvicorn on a loopback port, a real HTTP client) over a
pool whose loader counts the models in memory itself, so the cap is checked against real
loads and unloads. Its models: SmolLM2 under two names (``a``, the default, and ``b``),
a corrupt file and a missing one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from ggrun.api.ollama import MAX_KEEP_ALIVE, keep_alive
from ggrun.cli.app import app
from ggrun.errors import ApiError
from ggrun.pool import Pool
from ggrun.server import Server
from tests.test_server import _free_port, _wait_healthy

ollama = pytest.importorskip("ollama")
runner = CliRunner()


class Counted:
    """A loader that counts the models in memory: from the start of a load to close()."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = self.peak = self.loads = 0

    def load(self, ref: str) -> Any:
        from ggrun.engine import load

        self._add(1)
        try:
            model = load(ref, n_ctx=512, context=False, n_threads=1)
        except BaseException:
            self._add(-1)
            raise
        close = model.close

        def counted_close() -> None:
            if not getattr(model, "_counted_closed", False):
                model._counted_closed = True
                self._add(-1)
            close()

        model.close = counted_close
        return model

    def _add(self, n: int) -> None:
        with self.lock:
            self.now += n
            self.loads += max(n, 0)
            self.peak = max(self.peak, self.now)

    def reset(self) -> None:
        with self.lock:
            self.peak = self.now


class Served:
    def __init__(self, base: str, pool: Pool, counted: Counted, paths: list[str]) -> None:
        self.base, self.pool, self.counted, self.paths = base, pool, counted, paths

    def reset(self) -> None:
        self.counted.reset()
        self.pool.peak_loaded = len(self.pool.loaded)


@pytest.fixture(scope="module")
def served(smol_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    import uvicorn

    tmp = tmp_path_factory.mktemp("models")
    broken = tmp / "broken.gguf"
    broken.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\xff" * 64)  # a header, then junk
    refs = {"a": str(smol_path), "b": str(smol_path), "broken": str(broken),
            "gone": str(tmp / "gone.gguf")}  # fmt: skip
    counted = Counted()
    pool = Pool(refs, counted.load, parallel=2, slot_ctx=512, max_loaded=1)
    server = Server(pool, host="0.0.0.0", extra_hosts=["ggrun.test"])  # as --host 0.0.0.0
    port = _free_port()
    uv = uvicorn.Server(uvicorn.Config(server.app, host="127.0.0.1", port=port,
                                       log_level="warning"))  # fmt: skip
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert uv.started
    paths = [str(smol_path), str(smol_path.parent), str(tmp)]
    yield Served(f"http://127.0.0.1:{port}", pool, counted, paths)
    uv.should_exit = True
    thread.join(timeout=30)
    server.close()
    assert counted.now == 0  # every model loaded was closed


def _post(served: Served, path: str, body: Any, **kw: Any) -> httpx.Response:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", **kw.pop("headers", {})}
    return httpx.post(served.base + path, content=raw, headers=headers, timeout=120, **kw)


# ---------------------------------------------------------------- the ollama API's types

MSG = [{"role": "user", "content": "hi"}]
CHAT = {"model": "a", "messages": MSG, "stream": False, "options": {"num_predict": 1}}
GENERATE = {"model": "a", "prompt": "hi", "stream": False, "options": {"num_predict": 1}}
# raw JSON, so values Python's json would not write (a 401-digit integer, a lone surrogate)
JUNK = ['"x"', "[]", "{}", "true", "1.5", "-7", "9" * 401, "1e300", '"\\ud800"',
        '[{"a": [1, {"b": null}]}]']  # fmt: skip
OPTION_KEYS = ["temperature", "top_k", "top_p", "min_p", "seed", "repeat_penalty",
               "repeat_last_n", "presence_penalty", "frequency_penalty", "num_predict",
               "num_ctx", "stop"]  # fmt: skip
CHAT_FIELDS = ["model", "messages", "stream", "format", "think", "keep_alive", "logprobs",
               "top_logprobs", "tools", "options", "messages.0", "messages.0.role",
               "messages.0.content", "messages.0.tool_calls", "messages.0.images",
               *(f"options.{k}" for k in OPTION_KEYS)]  # fmt: skip
GENERATE_FIELDS = ["prompt", "system", "raw", "images", "suffix", "template", "context",
                   "options.num_predict"]  # the others are read as /api/chat's  # fmt: skip
MARK = "__junk__"


def _with(body: dict[str, Any], field: str, raw: str) -> bytes:
    """The body as JSON with ``field`` (dotted, into objects and lists) set to ``raw``."""
    body = json.loads(json.dumps(body))
    *outer, last = field.split(".")
    at: Any = body
    for key in outer:
        at = at[int(key)] if isinstance(at, list) else at.setdefault(key, {})
    if isinstance(at, list):
        at[int(last)] = MARK
    else:
        at[last] = MARK
    return json.dumps(body).replace(f'"{MARK}"', raw).encode()


def _with_key(body: dict[str, Any], where: str, key: str) -> bytes:
    """The body as JSON with a junk key (raw JSON) at the top or in ``options``."""
    text = json.dumps(body)
    if where == "options":
        return text.replace('"options": {', '"options": {' + key + ": 1, ", 1).encode()
    return ("{" + key + ": 1, " + text[1:]).encode()


def _fuzz(served: Served, path: str, base: dict[str, Any], fields: list[str]) -> list[str]:
    bodies = [(f"{f}={raw[:20]}", _with(base, f, raw)) for f in fields for raw in JUNK]
    bodies += [(f"{where} key {key}", _with_key(base, where, key))
               for where in ("top", "options") for key in ('"\\ud800"', '""', '"x "')]  # fmt: skip
    wrong = []
    for what, body in bodies:
        r = _post(served, path, body)
        err = r.json().get("error") if r.status_code != 200 else None
        if r.status_code not in (200, 400, 404, 422) or (
            r.status_code != 200 and not isinstance(err, str)
        ):
            wrong.append(f"{what}: {r.status_code} {r.text[:120]}")
        ps = httpx.get(served.base + "/api/ps", timeout=30)
        if ps.status_code != 200:
            wrong.append(f"{what}, then /api/ps: {ps.status_code}")
    return wrong


def test_every_chat_field_of_the_wrong_type_is_a_400(served: Served) -> None:
    assert _fuzz(served, "/api/chat", CHAT, CHAT_FIELDS) == []


def test_every_generate_field_of_the_wrong_type_is_a_400(served: Served) -> None:
    assert _fuzz(served, "/api/generate", GENERATE, GENERATE_FIELDS) == []


def test_show_fields_of_the_wrong_type_are_400s(served: Served) -> None:
    for field in ("model", "name", "verbose"):
        for raw in JUNK:
            r = _post(served, "/api/show", _with({"model": "a"}, field, raw))
            assert r.status_code in (200, 400, 404), (field, raw, r.text)
            assert r.status_code == 200 or isinstance(r.json()["error"], str)
    r = _post(served, "/api/show", {"model": "a", "wat": 1})
    assert r.status_code == 400 and "wat" in r.json()["error"]


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("options", {"num_predict": "x"}, "num_predict"),
        ("options", {"num_predict": []}, "num_predict"),
        ("options", {"num_predict": {}}, "num_predict"),
        ("options", {"num_ctx": "big"}, "num_ctx"),
        ("messages", [{"role": "assistant", "content": "", "tool_calls": 5}], "tool_calls"),
        ("messages", [{"role": "assistant", "content": "", "tool_calls": True}], "tool_calls"),
        ("keep_alive", {"m": 5}, "keep_alive"),
        ("keep_alive", "five minutes", "keep_alive"),
        ("logprobs", "yes", "logprobs"),
        ("tools", {"type": "function"}, "tools"),
    ],
)
def test_a_bad_ollama_field_is_a_400_in_ollamas_shape(served: Served, field: str, value: Any,
                                                      says: str) -> None:  # fmt: skip
    r = _post(served, "/api/chat", {**CHAT, field: value})
    assert r.status_code == 400, r.text
    assert set(r.json()) == {"error"} and says in r.json()["error"]


def test_the_ollama_client_gets_a_400_for_a_bad_num_predict(served: Served) -> None:
    oc = ollama.Client(host=served.base)
    with pytest.raises(ollama.ResponseError) as e:
        oc.chat(model="a", messages=MSG, options={"num_predict": "x"})
    assert e.value.status_code == 400 and "num_predict" in e.value.error


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (None, None), (300, 300.0), (1.5, 1.5), (0, 0.0), (-1, -1.0), (-5, -1.0),
        ("5m", 300.0), ("1h30m", 5400.0), ("250ms", 0.25), ("0", 0.0), ("-1", -1.0),
        ("-1m", -1.0), ("90", 90.0), (" 2h ", 7200.0), ("1.5s", 1.5),
        (10**401, MAX_KEEP_ALIVE), (1e300, MAX_KEEP_ALIVE), (-(10**401), -1.0),
        ("5" * 60 + "h", MAX_KEEP_ALIVE),
    ],
)  # fmt: skip
def test_keep_alive_is_parsed_and_clamped(value: Any, seconds: float | None) -> None:
    assert keep_alive(value) == seconds


@pytest.mark.parametrize("value", [True, [], {}, "5 minutes", "m", "-", "1.2.3s", "5" * 100,
                                   "1d", float("nan")])  # fmt: skip
def test_keep_alive_refuses_what_is_no_duration(value: Any) -> None:
    with pytest.raises(ApiError) as e:
        keep_alive(value)
    assert e.value.status == 400


def _expires(served: Served, model: str) -> float:
    """Seconds from now until /api/ps says ``model`` goes."""
    ps = httpx.get(served.base + "/api/ps", timeout=30)
    assert ps.status_code == 200, ps.text
    (m,) = [m for m in ps.json()["models"] if m["model"] == model]
    when = datetime.fromisoformat(m["expires_at"].replace("Z", "+00:00"))
    return (when - datetime.now(timezone.utc)).total_seconds()


def test_ps_never_fails_after_a_huge_keep_alive(served: Served) -> None:
    raw = json.dumps(CHAT)[:-1] + ', "keep_alive": ' + "9" * 401 + "}"
    r = _post(served, "/api/chat", raw.encode())
    assert r.status_code == 200, r.text
    assert MAX_KEEP_ALIVE - 60 < _expires(served, "a") <= MAX_KEEP_ALIVE
    assert _post(served, "/api/chat", {**CHAT, "keep_alive": 1e300}).status_code == 200
    assert _expires(served, "a") <= MAX_KEEP_ALIVE
    assert _post(served, "/api/chat", {**CHAT, "keep_alive": "5m"}).status_code == 200
    assert 240 < _expires(served, "a") <= 300
    assert _post(served, "/api/chat", {**CHAT, "keep_alive": -1}).status_code == 200
    assert _expires(served, "a") > MAX_KEEP_ALIVE  # forever
    assert ollama.Client(host=served.base).ps().models[0].model == "a"


# ---------------------------------------------------------------- Host, paths, load errors


def test_host_must_be_an_ip_localhost_or_an_allowed_name(served: Served) -> None:
    port = served.base.rsplit(":", 1)[1]
    for host, status in [("evil.example", 400), (f"rebind.attacker.test:{port}", 400),
                         ("ggrun.test.evil.example", 400), ("", 400),
                         (f"127.0.0.1:{port}", 200), ("192.168.1.20", 200), ("[::1]:80", 200),
                         (f"localhost:{port}", 200), ("ggrun.test", 200),
                         (f"GGRUN.test:{port}", 200)]:  # fmt: skip
        r = httpx.get(served.base + "/v1/models", headers={"Host": host})
        assert r.status_code == status, (host, r.text)
        if status == 400:
            assert r.json()["error"]["code"] == "bad_host"


def test_no_answer_names_a_file_path(served: Served) -> None:
    texts = [httpx.get(served.base + p).text for p in
             ("/v1/models", "/api/tags", "/api/ps", "/health", "/metrics")]  # fmt: skip
    for model in ("a", "b", "broken", "gone"):
        r = _post(served, "/api/show", {"model": model})
        assert r.status_code == 200, r.text
        texts.append(r.text)
    assert json.loads(texts[-4])["modelfile"] == "FROM a"
    for model in ("broken", "gone"):  # their errors name them, not their files
        texts.append(_post(served, "/api/chat", {**CHAT, "model": model}).text)
        texts.append(_post(served, "/v1/chat/completions", {"model": model, "messages": MSG,
                                                             "max_tokens": 1}).text)  # fmt: skip
    for text in texts:
        for path in served.paths:
            assert path not in text and "/tmp" not in text and ".gguf" not in text, text


def test_a_model_that_cannot_load_is_a_503_that_says_why(served: Served) -> None:
    for model, why in (("broken", "broken"), ("gone", "gone")):
        r = _post(served, "/api/chat", {**CHAT, "model": model})
        assert r.status_code == 503, r.text
        assert r.json()["error"].startswith(f"cannot load {model}: ") and why in r.json()["error"]
        r = _post(served, "/v1/chat/completions", {"model": model, "messages": MSG})
        assert r.status_code == 503 and r.json()["error"]["code"] == "model_unavailable"
        r = _post(served, "/api/generate", {"model": model})  # a load only
        assert r.status_code == 503
    assert _post(served, "/api/chat", CHAT).status_code == 200  # the others still work


# ---------------------------------------------------------------- --max-loaded


def test_max_loaded_holds_under_concurrent_requests_for_two_models(served: Served) -> None:
    served.reset()
    loads = served.counted.loads
    results: dict[int, int] = {}

    def one(i: int) -> None:
        body = {"model": "ab"[i % 2], "messages": MSG, "max_tokens": 2}
        if i % 3:
            results[i] = _post(served, "/v1/chat/completions", body).status_code
        else:
            ollama_body = {**CHAT, "model": body["model"]}
            results[i] = _post(served, "/api/chat", ollama_body).status_code

    threads = [threading.Thread(target=one, args=(i,)) for i in range(36)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert sorted(results) == list(range(36)) and set(results.values()) == {200}, results
    assert served.counted.loads > loads  # it swapped
    assert served.counted.peak == 1 and served.pool.peak_loaded == 1


def test_a_pinned_model_gives_way(served: Served) -> None:
    oc = ollama.Client(host=served.base)
    served.reset()
    r = oc.generate(model="a", keep_alive=-1)  # an empty prompt: load and pin
    assert r.done_reason == "load" and [m.model for m in oc.ps().models] == ["a"]
    r2 = oc.chat(model="b", messages=MSG, options={"num_predict": 2})
    assert r2.done
    assert [m.model for m in oc.ps().models] == ["b"]
    assert served.counted.peak == 1 and served.pool.peak_loaded == 1
    # pinned while a stream on it is still running: the request for b waits, then swaps
    with httpx.stream("POST", served.base + "/api/chat", json={**CHAT, "model": "a",
                      "keep_alive": -1, "stream": True, "options": {"num_predict": 24}},
                      timeout=120) as s:  # fmt: skip
        lines = s.iter_lines()
        next(lines)
        assert oc.chat(model="b", messages=MSG, options={"num_predict": 2}).done
        assert all(json.loads(x).get("error") is None for x in lines if x)
    assert [m.model for m in oc.ps().models] == ["b"]
    assert served.counted.peak == 1 and served.pool.peak_loaded == 1


# ---------------------------------------------------------------- ggrun serve --allowed-host


def test_allowed_host_must_be_a_host_name() -> None:
    r = runner.invoke(app, ["serve", "nothing.gguf", "--allowed-host", "evil example"])
    assert r.exit_code == 1 and "--allowed-host" in r.stderr and r.stderr.count("\n") == 1


def test_serve_on_all_interfaces_checks_the_host(smol_path: Path, tmp_path: Path) -> None:
    port = _free_port()
    cmd = [sys.executable, "-m", "ggrun", "serve", str(smol_path), "--host", "0.0.0.0",
           "--port", str(port), "--ctx", "256", "--parallel", "1",
           "--allowed-host", "ggrun.test", "--allowed-host", "box.lan"]  # fmt: skip
    env = {**os.environ, "GGRUN_HOME": str(tmp_path)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(base, proc)
        for host, status in [("evil.example", 400), ("ggrun.test", 200), ("box.lan:80", 200),
                             ("localhost", 200), ("10.1.2.3", 200)]:  # fmt: skip
            assert httpx.get(base + "/v1/models", headers={"Host": host}).status_code == status
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0 and b"Traceback" not in out, out.decode()
