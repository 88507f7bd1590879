"""Real inference through ggrun's engine on the small models of MODELS.md."""

from __future__ import annotations

from pathlib import Path

import pytest

from ggrun.engine import LoadConfig, Model, Result
from ggrun.errors import ContextOverflow, GgrunError, UnsupportedArchitecture
from ggrun.request import Request
from tests.helpers import QWEN3_TEMPLATE, rewrite_gguf

THINK_GRAMMAR = r'''root ::= "<think>" [a-z ]{5,40} "</think>" "\n\n" [A-Za-z ]{3,40} "."'''


@pytest.fixture(scope="session")
def qwen3_style_path(smol_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2 carrying a Qwen3-style chat template (enable_thinking, <think> stripping)."""
    dst = tmp_path_factory.mktemp("q3") / "smol-qwen3-template.gguf"
    return rewrite_gguf(smol_path, dst, template=QWEN3_TEMPLATE)


@pytest.fixture(scope="session")
def qwen3_style(qwen3_style_path: Path):  # type: ignore[no-untyped-def]
    with Model(qwen3_style_path, LoadConfig(n_ctx=1024)) as m:
        yield m


def test_seed_gives_same_output(smol: Model) -> None:
    a = smol.generate("Once upon a time", max_tokens=24, seed=42, temperature=0.9)
    b = smol.generate("Once upon a time", max_tokens=24, seed=42, temperature=0.9)
    assert a.text == b.text and a.text.strip()
    others = {
        smol.generate("Once upon a time", max_tokens=24, seed=s, temperature=0.9).text
        for s in (1, 2, 3)
    }
    assert len(others | {a.text}) > 1, "different seeds should not all give the same text"


def test_stream_equals_generate(smol: Model) -> None:
    chunks = list(smol.stream("The three primary colours are", max_tokens=30, seed=7))
    whole = smol.generate("The three primary colours are", max_tokens=30, seed=7)
    assert "".join(c.text for c in chunks) == whole.text
    assert chunks[-1].finish_reason == whole.finish_reason
    assert chunks[-1].completion_tokens == whole.completion_tokens
    assert all(c.finish_reason is None for c in chunks[:-1])


def test_max_tokens_gives_length(smol: Model) -> None:
    r = smol.generate("List the numbers from one to one hundred:", max_tokens=10, temperature=0)
    assert r.finish_reason == "length"
    assert r.completion_tokens == 10
    assert r.prompt_tokens > 5 and r.prompt_tps > 0 and r.generation_tps > 0


def test_reply_stops_at_end_of_turn(qwen: Model) -> None:
    r = qwen.chat(
        [{"role": "user", "content": "What is the capital of France? One word."}],
        temperature=0,
        max_tokens=50,
    )
    assert r.finish_reason == "stop"
    assert "Paris" in r.text
    assert "<|im_end|>" not in r.text


def test_prompt_larger_than_context(smol: Model) -> None:
    prompt = "word " * 3000
    with pytest.raises(ContextOverflow) as err:
        smol.generate(prompt, max_tokens=10)
    assert err.value.n_ctx == smol.n_ctx and err.value.n_tokens > smol.n_ctx
    assert str(smol.n_ctx) in str(err.value)


def test_max_tokens_capped_by_context(smol: Model) -> None:
    prompt = "one two three four " * 250  # about 1000 of the 1024 tokens
    n = smol.count_tokens(prompt)
    assert n < smol.n_ctx
    r = smol.generate(prompt, max_tokens=500, temperature=0)
    assert r.completion_tokens <= smol.n_ctx - n


def test_chinese_streams_as_valid_utf8(qwen: Model) -> None:
    chunks = list(
        qwen.chat_stream(
            [{"role": "user", "content": "用中文写一句关于春天的话。"}],
            temperature=0,
            max_tokens=40,
        )
    )
    text = "".join(c.text for c in chunks)
    assert "\ufffd" not in text
    assert sum("\u4e00" <= ch <= "\u9fff" for ch in text) >= 5
    for c in chunks:
        c.text.encode("utf-8")  # every chunk is whole characters


def test_thinking_is_split_from_the_answer(qwen3_style: Model) -> None:
    # a grammar forces a <think> block out of a real model, token by token
    req = Request.build(
        messages=[{"role": "user", "content": "Hi"}],
        think=True,
        grammar=THINK_GRAMMAR,
        temperature=0,
        max_tokens=120,
    )
    job = qwen3_style.prepare(req)
    assert not job.lazy  # a grammar that spells out the thought applies from the start
    chunks = list(qwen3_style.run(job))
    r = Result.collect(iter(chunks))
    assert r.reasoning and "<think>" not in r.reasoning and "</think>" not in r.reasoning
    assert r.text and "<think>" not in r.text and "</think>" not in r.text
    assert r.text.endswith(".")
    assert any(c.reasoning for c in chunks) and any(c.text for c in chunks)


def test_no_think_goes_through_the_template(qwen3_style: Model) -> None:
    msgs = [{"role": "user", "content": "Hi"}]
    off = qwen3_style.format_chat(msgs, think=False)
    on = qwen3_style.format_chat(msgs, think=True)
    assert off.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert on.endswith("<|im_start|>assistant\n")
    r = qwen3_style.chat(msgs, think=False, temperature=0, max_tokens=20)
    assert r.reasoning is None


def test_family_preset_applies_and_flags_override(
    qwen: Model, qwen3_style: Model, tiny_model: Path
) -> None:
    q2 = qwen.sampling_for()
    assert qwen.family == "qwen2"
    assert (q2.top_k, q2.top_p, q2.temperature, q2.repeat_penalty) == (20, 0.8, 0.7, 1.05)
    assert qwen.sampling_for(temperature=0.1, top_k=5).top_k == 5
    # the family comes from the architecture: a Qwen3 template alone does not make qwen3
    assert qwen3_style.family == "llama"
    other = qwen3_style.sampling_for(think=True)
    assert (other.top_k, other.top_p, other.repeat_penalty) == (40, 0.95, 1.1)  # "default"
    with Model(tiny_model, LoadConfig(n_ctx=256)) as q3:  # a converted Qwen3 checkpoint
        assert q3.family == "qwen3"
        on, off = q3.sampling_for(think=True), q3.sampling_for(think=False)
        assert (on.temperature, on.top_p, on.top_k, on.min_p) == (0.6, 0.95, 20, 0.0)
        assert (off.temperature, off.top_p, off.top_k, off.min_p) == (0.7, 0.8, 20, 0.0)


def test_qwen3_family_presets() -> None:
    from ggrun import sampling

    think = sampling.resolve(family="qwen3", think=True)
    assert (think.temperature, think.top_p, think.top_k, think.min_p) == (0.6, 0.95, 20, 0.0)
    plain = sampling.resolve(family="qwen3", think=False)
    assert (plain.temperature, plain.top_p, plain.top_k, plain.min_p) == (0.7, 0.8, 20, 0.0)


def test_unknown_architecture(smol_path: Path, tmp_path: Path) -> None:
    p = rewrite_gguf(smol_path, tmp_path / "alien.gguf", arch="alienlm")
    with pytest.raises(UnsupportedArchitecture, match="alienlm"):
        Model(p)


def test_closed_model(smol_path: Path) -> None:
    m = Model(smol_path, LoadConfig(n_ctx=256))
    m.close()
    with pytest.raises(GgrunError, match="closed"):
        m.generate("hi", max_tokens=2)
