"""Qwen3 on small machines: the thinking budget, soft switches, room to think, the
quantized KV cache and compacting long chats."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from ggrun.batching import batch
from ggrun.engine import LoadConfig, Model
from ggrun.templates import THINK_BUDGET_MESSAGE
from tests.helpers import QWEN3_TEMPLATE, rewrite_gguf

MARK = "{%- if add_generation_prompt %}"
THINKING_ONLY = (
    QWEN3_TEMPLATE.split(MARK)[0]
    + MARK
    + ("{{- '<|im_start|>assistant\\n<think>\\n' }}{%- endif %}")
)  # as Qwen3's thinking-only models: the reply starts inside a thought
MSGS = [{"role": "user", "content": "What is 12 times 13?"}]


@pytest.fixture(scope="module")
def thinker(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The random-weights Qwen3 (real Qwen tokenizer) in a thinking-only template: its
    noise never closes the thought by itself."""
    p = rewrite_gguf(tiny_model, tmp_path_factory.mktemp("t") / "think.gguf",
                     template=THINKING_ONLY)  # fmt: skip
    with Model(p, LoadConfig(n_ctx=512)) as m:
        yield m


def _forced(m: Any) -> int:
    """Tokens of the budget message up to and including </think> (they are reasoning)."""
    head = THINK_BUDGET_MESSAGE.split("</think>")[0] + "</think>"
    return len(m.tokenize(head))


@pytest.mark.parametrize("budget", [0, 8, 64])
def test_the_budget_caps_the_thought(thinker: Any, budget: int) -> None:
    r = thinker.chat(MSGS, think_budget=budget, max_tokens=budget + 60, temperature=1, seed=1)
    assert r.reasoning is not None and r.reasoning.count("Considering the limited time") == 1
    assert r.reasoning.rstrip().endswith("thinking directly now.")
    assert r.reasoning_tokens == budget + _forced(thinker)
    assert r.completion_tokens > r.reasoning_tokens  # the answer follows the thought
    assert "</think>" not in r.text and r.text.strip()  # noise, but an answer


def test_a_thought_closed_in_a_small_batch(thinker: Any) -> None:
    """The budget's closing text is longer than a batch of 8 rows: it is read in parts
    (llama.cpp aborts on a batch over n_batch), with the same reply as in one."""
    whole = thinker.chat(MSGS, think_budget=8, max_tokens=60, temperature=0)
    with Model(thinker.path, LoadConfig(n_ctx=512, n_batch=8)) as m:
        assert _forced(m) > 8
        small = m.chat(MSGS, think_budget=8, max_tokens=60, temperature=0)
        (b,) = batch(m, [MSGS, MSGS, MSGS], parallel=3, think_budget=8, max_tokens=60,
                     temperature=0)[:1]  # fmt: skip
    assert small.reasoning == whole.reasoning and small.text == whole.text
    assert b.error is None and b.text == whole.text


def test_the_budget_streams_and_batches_alike(thinker: Any) -> None:
    chunks = list(thinker.chat_stream(MSGS, think_budget=8, max_tokens=40, temperature=0))
    streamed = "".join(c.reasoning for c in chunks)
    assert streamed.count("Considering the limited time") == 1
    whole = thinker.chat(MSGS, think_budget=8, max_tokens=40, temperature=0)
    (b,) = batch(thinker, [MSGS], think_budget=8, max_tokens=40, temperature=0)
    assert b.error is None and b.reasoning == whole.reasoning and b.text == whole.text
    assert chunks[-1].reasoning_tokens == whole.reasoning_tokens == b.reasoning_tokens


def test_without_a_budget_it_keeps_thinking(thinker: Any) -> None:
    r = thinker.chat(MSGS, max_tokens=30, temperature=0)
    assert r.reasoning_tokens == 30 and not r.text and r.finish_reason == "length"


# ---------------------------------------------------------------- the KV cache


@pytest.mark.parametrize("cache", ["q8_0", "q4_0"])
@pytest.mark.parametrize("which", ["smol_path", "qwen_path"])
def test_a_quantized_cache_loads_generates_and_is_planned_right(
    which: str, cache: str, request: pytest.FixtureRequest
) -> None:
    import re

    from ggrun.gguffile import read_gguf
    from ggrun.llama import captured_llama_log
    from ggrun.planner import ModelShape

    path = request.getfixturevalue(which)
    with captured_llama_log() as lines, Model(path, LoadConfig(n_ctx=1024, cache_type=cache)) as m:
        r = m.chat(MSGS, max_tokens=16, temperature=0)
        assert r.completion_tokens > 0 and r.text.strip()
    logged = re.search(r"KV buffer size =\s+([\d.]+) MiB", "".join(lines))
    assert logged, "".join(lines)[-1500:]
    planned = ModelShape.from_gguf(read_gguf(path)).with_cache(cache).kv_bytes(1024)
    assert planned / (1 << 20) == pytest.approx(float(logged.group(1)), abs=0.01)


def test_the_reference_shape_at_4096() -> None:
    from ggrun import planner

    shape = dict(planner.shapes_for("qwen3-1.7b:q4_k_m"))["qwen3-1.7b:q4_k_m"]
    mib = 1 << 20
    assert shape.kv_bytes(4096) == 448 * mib  # f16
    assert shape.with_cache("q8_0").kv_bytes(4096) == 238 * mib
    assert shape.with_cache("q4_0").kv_bytes(4096) == 126 * mib


@pytest.mark.parametrize(
    ("profile", "ctx", "cache"),
    [
        ("pi5-4gb", 8192, "q8_0"),  # f16 would give only 4096
        ("mac-m1-8gb", 16384, "q8_0"),  # f16 would give only 8192
        ("pi5-8gb", 16384, "f16"),
        ("mac-m2-16gb", 16384, "f16"),
        ("cpu-2core-4gb", 8192, "q8_0"),
    ],
)
def test_a_thinking_model_gets_room_to_think(profile: str, ctx: int, cache: str) -> None:
    from ggrun import hardware, planner

    shape = dict(planner.shapes_for("qwen3-1.7b:q4_k_m"))["qwen3-1.7b:q4_k_m"]
    p = planner.plan(shape, hardware.load_profile(profile))
    assert (p.n_ctx, p.cache_type) == (ctx, cache)
    assert 4 * p.kv_bytes <= p.budget_bytes  # a quarter of the memory at most
    assert p.flash_attn == ("on" if cache != "f16" else "auto")
    plain = planner.plan(shape, hardware.load_profile(profile), thinking=False)
    assert plain.n_ctx == 4096  # a model that does not think keeps the usual default
    forced = planner.plan(shape, hardware.load_profile(profile), cache_type="q4_0")
    assert forced.cache_type == "q4_0"


def test_a_thinking_reply_gets_the_room_left(thinker: Any) -> None:
    r = thinker.chat(MSGS, temperature=0)  # no max_tokens: the room left, not 256
    assert r.finish_reason == "length"
    assert r.prompt_tokens + r.completion_tokens == thinker.n_ctx
    plain = thinker.chat(MSGS, temperature=0, max_tokens=12)
    assert plain.completion_tokens == 12


# ---------------------------------------------------------------- compaction


def test_compaction_keeps_the_gist_of_the_first_turn(qwen_path: Path) -> None:
    """20 turns in a 768-token context: the oldest turns become a note, not nothing.
    Whether the model still recalls the fact is recorded, not asserted (see RESULTS.md)."""
    from ggrun.chat import Chat

    with Model(qwen_path, LoadConfig(n_ctx=768)) as m:
        chat = Chat(m, compact=True, temperature=0, max_tokens=40)
        chat.send("Remember this: my cat is called Pixel and she is 7 years old.")
        for i in range(19):
            chat.send(f"Tell me one short fact about the number {i + 10}.")
        assert chat.summary is not None  # compacted, not silently dropped
        assert len(chat.history) < 40
        r = chat.send("What is my cat called?")
        print(f"\ncompaction: note={chat.summary!r}\nrecall: {r.text!r}")
    # the note is data: a quoted user turn, never the system message (there is none here)
    note, ack = chat.messages[0], chat.messages[1]
    assert note.role == "user" and "<notes>" in note.content and chat.summary in note.content
    assert ack.role == "assistant" and all(m.role != "system" for m in chat.messages)


def test_json_after_a_budgeted_thought(thinker: Any) -> None:
    """The lazy grammar takes over after the forced </think>: the answer is JSON (the
    random model may not finish it: then the error carries what it wrote)."""
    from ggrun.structured import IncompleteOutput

    try:
        r = thinker.chat(MSGS, think_budget=8, json=True, max_tokens=80, temperature=1, seed=3)
        text = r.text
        assert isinstance(r.data, (dict, list))
    except IncompleteOutput as e:
        text = e.result.text
    assert text.lstrip().startswith("{")


def test_a_q4_0_cache_on_a_qwen2_model_is_warned_about(
    qwen_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="ggrun"):
        Model(qwen_path, LoadConfig(n_ctx=256, cache_type="q4_0")).close()
    assert any("ruins Qwen2-family" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------- a reply without a thought


def test_a_required_call_holds_when_the_model_answers_without_thinking(tiny_model: Path) -> None:
    """With thinking on, a required call's grammar waits for the end of the thought; a
    reply that starts without one (this noise never writes <think>) is constrained at once."""
    pick = {"type": "function", "function": {"name": "pick", "parameters": {
        "type": "object", "properties": {"color": {"enum": ["red", "blue"]}},
        "required": ["color"]}}}  # fmt: skip
    with Model(tiny_model, LoadConfig(n_ctx=512)) as m:
        for seed in (1, 2, 3):
            r = m.chat(MSGS, tools=[pick], tool_choice="required", max_tokens=120,
                       temperature=1, seed=seed)  # fmt: skip
            assert r.error is None, r.error
            assert [c.name for c in r.tool_calls][:1] == ["pick"]
            assert r.tool_calls[0].arguments["color"] in ("red", "blue")
