"""Multi-turn chat on real models: memory, KV reuse, trimming, persistence."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ggrun.chat import Chat
from ggrun.engine import LoadConfig, Model
from ggrun.errors import ContextOverflow, GgrunError


def test_remembers_a_name_across_turns(qwen: Model) -> None:
    chat = Chat(qwen, system="You are a helpful assistant. Answer briefly.", temperature=0)
    chat.send("Hello! My name is Zorblat. Please remember my name.")
    r = chat.send("What is my name? Reply with just the name.")
    assert "Zorblat" in r.text
    assert [m.role for m in chat.messages] == ["system", "user", "assistant", "user", "assistant"]


def test_turns_reuse_the_kv_cache(qwen: Model) -> None:
    chat = Chat(qwen, system="Answer in one short sentence.", temperature=0, max_tokens=30)
    first = chat.send("Name a colour.")
    second = chat.send("Name an animal.")
    third = chat.send("Name a fruit.")
    assert first.cached_tokens == 0 or first.cached_tokens < first.prompt_tokens
    # later turns decode only what is new: the earlier turns come from the cache
    assert second.cached_tokens >= first.prompt_tokens + first.completion_tokens - 2
    assert third.cached_tokens >= second.prompt_tokens + second.completion_tokens - 2
    assert third.prompt_tokens - third.cached_tokens < 30


def test_oldest_turns_are_dropped_never_the_system_prompt(smol_path: Path) -> None:
    with Model(smol_path, LoadConfig(n_ctx=256)) as m:
        chat = Chat(m, system="SYSTEM-MARKER", temperature=0, max_tokens=20)
        trimmed = 0
        for i in range(8):
            chat.send(f"Message {i}: " + "tell me about the weather today " * 4)
            trimmed += chat.trimmed
        assert trimmed > 0
        assert chat.messages[0].role == "system" and chat.messages[0].content == "SYSTEM-MARKER"
        assert chat.history[0].role == "user" and "Message 0" not in chat.history[0].content
        assert chat.context_used() <= m.n_ctx


def test_a_single_message_too_long_for_the_context(smol_path: Path) -> None:
    with Model(smol_path, LoadConfig(n_ctx=128)) as m:
        chat = Chat(m)
        with pytest.raises(ContextOverflow):
            chat.send("word " * 400)


def test_save_and_load(qwen: Model, tmp_path: Path) -> None:
    chat = Chat(qwen, system="Be brief.", temperature=0, max_tokens=10)
    chat.send("Say hello.")
    path = chat.save(tmp_path / "convo.json")
    data = json.loads(path.read_text())
    assert data["messages"][0] == {"role": "system", "content": "Be brief."}
    assert [m["role"] for m in data["messages"]] == ["system", "user", "assistant"]
    assert not list(tmp_path.glob(".*tmp*"))
    other = Chat(qwen)
    other.load(path)
    assert other.messages == chat.messages
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(GgrunError, match="not a saved conversation"):
        other.load(bad)


def test_interrupted_reply_is_kept(smol: Model) -> None:
    chat = Chat(smol, temperature=0, max_tokens=200)
    stream = chat.stream("Write a long story about a dragon.")
    got = [next(stream).text for _ in range(3)]
    stream.close()  # what Ctrl-C does to the stream
    assert chat.interrupted
    assert chat.history[-1].role == "assistant"
    assert chat.history[-1].content == "".join(got)
    assert chat.last is not None and chat.last.finish_reason == "interrupted"
    # the session goes on
    assert chat.send("Thanks.").text is not None


def test_reasoning_never_enters_history(smol_path: Path, tmp_path: Path) -> None:
    from tests.helpers import QWEN3_TEMPLATE, rewrite_gguf
    from tests.test_engine import THINK_GRAMMAR

    p = rewrite_gguf(smol_path, tmp_path / "q3.gguf", template=QWEN3_TEMPLATE)
    with Model(p, LoadConfig(n_ctx=512)) as m:
        chat = Chat(m, think=True, temperature=0, max_tokens=100)
        r = chat.send("Hi", grammar=THINK_GRAMMAR)
        assert r.reasoning
        assert "<think>" not in chat.history[-1].content
        assert r.reasoning not in chat.history[-1].content
