"""The native sampler: ggrun's in-place penalties pick exactly llama.cpp's tokens."""

from __future__ import annotations

from typing import Any

import pytest

from ggrun import llama
from ggrun.sampling import SamplingConfig

CASES = [
    SamplingConfig(temperature=0, repeat_penalty=1.3, repeat_last_n=64),
    SamplingConfig(temperature=0, repeat_penalty=1.05, repeat_last_n=16),
    SamplingConfig(temperature=0.8, top_k=40, top_p=0.95, min_p=0.05, repeat_penalty=1.1, seed=3),
    SamplingConfig(
        temperature=0.7,
        top_k=20,
        top_p=0.8,
        min_p=0.0,
        repeat_penalty=1.05,
        presence_penalty=0.5,
        frequency_penalty=0.3,
        seed=11,
    ),  # fmt: skip
    SamplingConfig(temperature=0, repeat_penalty=1.2, repeat_last_n=-1),  # the whole context
]


def _generate(model: Any, cfg: SamplingConfig, reference: bool, n: int = 48) -> list[int]:
    """Greedy or seeded tokens after a prompt, with the fast or llama.cpp's own penalties."""
    prompt = model.tokenize_prompt("List fruits: apple, banana, apple, banana, apple,")
    params = llama.ContextParams(n_ctx=256, n_batch=256)
    out: list[int] = []
    with llama.Context(model.weights, params) as ctx, llama.Batch(256) as b:
        s = llama.Sampler(cfg, ctx, reference_penalties=reference)
        try:
            for i, t in enumerate(prompt):
                b.add(t, i, 0, i == len(prompt) - 1)
            ctx.decode(b)
            for pos in range(len(prompt), len(prompt) + n):
                tok = s.sample(b.n - 1)
                out.append(tok)
                b.clear()
                b.add(tok, pos, 0, True)
                ctx.decode(b)
        finally:
            s.close()
    return out


@pytest.mark.parametrize("cfg", CASES, ids=lambda c: f"t{c.temperature}-rp{c.repeat_penalty}")
@pytest.mark.parametrize("which", ["smol", "qwen"])
def test_in_place_penalties_pick_llama_cpps_tokens(which: str, cfg: SamplingConfig,
                                                   request: Any) -> None:  # fmt: skip
    model = request.getfixturevalue(which)
    fast = _generate(model, cfg, reference=False)
    slow = _generate(model, cfg, reference=True)
    assert fast == slow
    plain = _generate(model, cfg.replace(repeat_penalty=1.0, presence_penalty=0.0,
                                         frequency_penalty=0.0), reference=False)  # fmt: skip
    if cfg.repeat_penalty >= 1.2:
        assert plain != fast  # the penalty really changed the choice (the test can fail)
