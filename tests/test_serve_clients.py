"""`ggrun serve` for the clients people use: the official ollama package, OpenAI logprobs,
and several models behind one server (loaded on first use, swapped, unloaded)."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest

from tests.helpers import serving

ollama = pytest.importorskip("ollama")
openai = pytest.importorskip("openai")

SMOL, QWEN = "SmolLM2-135M-Instruct.Q4_1", "qwen2.5-coder-0.5b-instruct-q4_k_m"


@pytest.fixture(scope="module")
def server(smol_path: Path, qwen_path: Path,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:  # fmt: skip
    args = [str(smol_path), str(qwen_path), "--parallel", "2", "--ctx", "1024",
            "--max-loaded", "1"]  # fmt: skip
    with serving(args, tmp_path_factory.mktemp("home")) as base:
        yield base


@pytest.fixture()
def oc(server: str) -> Any:
    return ollama.Client(host=server)


MSG = [{"role": "user", "content": "Name a colour."}]


def test_ollama_chat_streaming_and_generate(oc: Any) -> None:
    r = oc.chat(model=SMOL, messages=MSG, options={"temperature": 0, "num_predict": 12})
    assert r.message.role == "assistant" and r.message.content and r.done
    assert r.done_reason in ("stop", "length") and r.eval_count and r.prompt_eval_count
    assert r.total_duration and r.eval_duration and r.load_duration is not None
    parts = list(oc.chat(model=SMOL, messages=MSG, stream=True,
                         options={"temperature": 0, "num_predict": 12}))  # fmt: skip
    assert parts[-1].done and not any(p.done for p in parts[:-1])
    assert "".join(p.message.content for p in parts) == r.message.content
    g = oc.generate(model=SMOL, prompt="The sky is", options={"temperature": 0, "num_predict": 8})
    assert g.response and g.done and g.eval_count == 8


def test_ollama_format_schema_validates(oc: Any) -> None:
    schema = {"type": "object", "properties": {"colour": {"type": "string"}},
              "required": ["colour"]}  # fmt: skip
    r = oc.chat(model=SMOL, messages=MSG, format=schema, options={"temperature": 0})
    import json

    jsonschema.validate(json.loads(r.message.content), schema)


def test_ollama_list_show_ps_and_errors(oc: Any) -> None:
    names = {m.model for m in oc.list().models}
    assert names == {SMOL, QWEN}
    s = oc.show(SMOL)
    assert s.details.family == "llama" and "completion" in s.capabilities
    assert "tools" in oc.show(QWEN).capabilities
    ps = {m.model for m in oc.ps().models}
    assert ps <= names and ps  # what is loaded now
    with pytest.raises(ollama.ResponseError) as e:
        oc.chat(model="nope", messages=MSG)
    assert e.value.status_code == 404 and "nope" in e.value.error
    with pytest.raises(ollama.ResponseError) as e:
        oc.chat(model=SMOL, messages=MSG, options={"tfs_z": 1.0})  # gone from ollama too
    assert e.value.status_code == 400 and "tfs_z" in e.value.error


def test_ollama_runner_options_are_ignored_and_named(server: str, oc: Any) -> None:
    opts = {"num_thread": 4, "num_gpu": 2, "use_mmap": True, "temperature": 0, "num_predict": 4}
    assert oc.chat(model=SMOL, messages=MSG, options=opts).message.content
    body = {"model": SMOL, "messages": MSG, "stream": False, "options": opts}
    r = httpx.post(server + "/api/chat", json=body, timeout=60)
    assert r.status_code == 200 and r.json()["message"]["content"]
    assert r.headers["X-Ggrun-Ignored-Options"] == "num_thread,num_gpu,use_mmap"
    with httpx.stream("POST", server + "/api/generate", timeout=60,
                      json={"model": SMOL, "prompt": "Hi", "options": opts}) as r:  # fmt: skip
        assert r.headers["X-Ggrun-Ignored-Options"] == "num_thread,num_gpu,use_mmap"
        assert r.read()


def test_langchain_ollama_with_runner_options(server: str) -> None:
    lc = pytest.importorskip("langchain_ollama")
    llm = lc.ChatOllama(model=SMOL, base_url=server, num_thread=4, num_gpu=1, temperature=0,
                        num_predict=8)  # fmt: skip
    assert llm.invoke("hi").content


def test_openai_reasoning_effort_and_usage_in_a_last_chunk(server: str) -> None:
    c = openai.OpenAI(base_url=server + "/v1", api_key="none")
    args = {"model": SMOL, "messages": MSG, "max_tokens": 8, "temperature": 0}
    for effort in ("none", "low", "high"):
        assert c.chat.completions.create(**args, reasoning_effort=effort).choices[0].message
    r = c.chat.completions.create(**args, store=False, metadata={"k": "v"}, user="u",
                                  service_tier="auto", prompt_cache_key="p")  # fmt: skip
    assert r.choices[0].message.content
    events = list(c.chat.completions.create(**args, stream=True,
                                            stream_options={"include_usage": True}))  # fmt: skip
    *body, last = events
    assert last.choices == [] and last.usage.completion_tokens == r.usage.completion_tokens
    assert body[-1].choices[0].finish_reason and all(ev.usage is None for ev in body)
    assert "".join(ev.choices[0].delta.content or "" for ev in body) == r.choices[0].message.content


def test_several_models_swap_and_unload(server: str, oc: Any) -> None:
    for model in (SMOL, QWEN, SMOL, QWEN):  # --max-loaded 1: each request swaps them
        r = oc.chat(model=model, messages=MSG, options={"temperature": 0, "num_predict": 4})
        assert r.message.content
        assert [m.model for m in oc.ps().models] == [model]
    ids = {m["id"] for m in httpx.get(server + "/v1/models").json()["data"]}
    assert ids == {SMOL, QWEN}
    oc.chat(model=QWEN, messages=MSG, keep_alive=0, options={"num_predict": 2})
    deadline = time.monotonic() + 10
    while oc.ps().models and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not oc.ps().models  # keep_alive 0 unloaded it after the request


def test_ollama_load_and_unload(oc: Any) -> None:
    """ollama's documented load and unload: nothing to generate loads the model; the same
    with keep_alive 0 unloads it."""
    g = oc.generate(model=SMOL, prompt="")
    assert (g.done, g.done_reason, g.response) == (True, "load", "")
    assert [m.model for m in oc.ps().models] == [SMOL]
    c = oc.chat(model=QWEN, messages=[])  # --max-loaded 1: it takes SMOL's place
    assert (c.done, c.done_reason, c.message.content) == (True, "load", "")
    assert [m.model for m in oc.ps().models] == [QWEN]
    c = oc.chat(model=QWEN, messages=[], keep_alive=0)
    assert (c.done, c.done_reason) == (True, "unload")
    assert not oc.ps().models
    oc.generate(model=SMOL, prompt="")
    g = oc.generate(model=SMOL, prompt="", keep_alive=0)
    assert (g.done, g.done_reason) == (True, "unload") and not oc.ps().models


def test_ollama_format_cut_off_is_done_reason_length(oc: Any) -> None:
    schema = {"type": "object", "properties": {"colour": {"type": "string"}},
              "required": ["colour"]}  # fmt: skip
    opts = {"temperature": 0, "num_predict": 3}
    r = oc.chat(model=SMOL, messages=MSG, format=schema, options=opts)
    assert r.done and r.done_reason == "length"  # as ollama answers it, not an error
    parts = list(oc.chat(model=SMOL, messages=MSG, format=schema, options=opts, stream=True))
    assert parts[-1].done and parts[-1].done_reason == "length"


def test_logprobs_whole_and_streamed(server: str) -> None:
    c = openai.OpenAI(base_url=server + "/v1", api_key="none")
    args = {"model": SMOL, "messages": MSG, "max_tokens": 8, "temperature": 0,
            "logprobs": True, "top_logprobs": 5}  # fmt: skip
    r = c.chat.completions.create(**args)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    for t in content:
        assert t.logprob == pytest.approx(t.top_logprobs[0].logprob)  # greedy: the top one
        assert t.token == t.top_logprobs[0].token
        assert sum(math.exp(x.logprob) for x in t.top_logprobs) <= 1.0 + 1e-6
    streamed = [
        lp
        for ev in c.chat.completions.create(**args, stream=True)
        if ev.choices and ev.choices[0].logprobs
        for lp in ev.choices[0].logprobs.content
    ]
    assert [(t.token, round(t.logprob, 5)) for t in streamed] == [
        (t.token, round(t.logprob, 5)) for t in content
    ]
    comp = c.completions.create(model=SMOL, prompt="One, two,", max_tokens=4, temperature=0,
                                logprobs=3)  # fmt: skip
    lp = comp.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == 4 and len(lp.top_logprobs[0]) == 3


def test_num_ctx_is_the_request_context(oc: Any) -> None:
    """ollama's num_ctx below the slot bounds the prompt and the reply; above, the slot."""
    r = oc.chat(model=SMOL, messages=MSG, options={"temperature": 0, "num_ctx": 40,
                                                   "repeat_penalty": 1.0})  # fmt: skip
    assert r.prompt_eval_count + r.eval_count == 40 and r.done_reason == "length"
    big = oc.chat(model=SMOL, messages=MSG, options={"num_ctx": 1 << 20, "num_predict": 4})
    assert big.eval_count == 4
    with pytest.raises(ollama.ResponseError) as e:
        oc.chat(model=SMOL, messages=MSG, options={"num_ctx": 8})
    assert e.value.status_code == 400 and "context holds 8" in str(e.value)


def test_system_fingerprint_is_the_run_manifest(server: str) -> None:
    c = openai.OpenAI(base_url=server + "/v1", api_key="none")
    body: dict[str, Any] = {"model": SMOL, "messages": MSG, "max_tokens": 4, "temperature": 0}
    a, b = c.chat.completions.create(**body), c.chat.completions.create(**body)
    assert a.system_fingerprint and a.system_fingerprint.startswith("fp_")
    assert a.system_fingerprint == b.system_fingerprint  # greedy: the same manifest
    other = c.chat.completions.create(**{**body, "temperature": 0.5, "seed": 3})
    assert other.system_fingerprint != a.system_fingerprint
    chunks = list(c.chat.completions.create(**body, stream=True))
    assert {ch.system_fingerprint for ch in chunks} == {a.system_fingerprint}
