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


# typical-p and mirostat: one row each in ggrun.sampling.OPTIONS, one line in build_chain
MIROSTAT = SamplingConfig(temperature=0.8, mirostat=2, mirostat_tau=4.0, seed=5)
TYPICAL = SamplingConfig(temperature=0.8, typical_p=0.5, seed=5)


@pytest.mark.parametrize(
    "cfg",
    [TYPICAL, MIROSTAT, MIROSTAT.replace(mirostat=1), MIROSTAT.replace(repeat_penalty=1.2)],
    ids=["typical", "mirostat2", "mirostat1", "mirostat2-penalized"],
)
def test_typical_and_mirostat_run_seeded_and_change_the_draw(
    smol: Any, cfg: SamplingConfig
) -> None:
    tokens = _generate(smol, cfg, reference=False)
    assert tokens == _generate(smol, cfg, reference=False)  # the same seed, the same tokens
    plain = cfg.replace(typical_p=1.0, mirostat=0)
    assert tokens != _generate(smol, plain, reference=False)  # the sampler did something
    if cfg.repeat_penalty != 1.0:  # penalties apply before mirostat, as llama.cpp's do
        assert tokens == _generate(smol, cfg, reference=True)


def test_mirostat_reads_its_target(smol: Any) -> None:
    greedy = SamplingConfig(temperature=0, repeat_penalty=1.0)
    expected = _generate(smol, greedy, False)
    assert _generate(smol, greedy.replace(mirostat=2), False) == expected  # temperature 0
    # a target of no surprise, never adjusted, leaves only the likeliest token
    zero = greedy.replace(temperature=0.8, mirostat=2, mirostat_tau=0, mirostat_eta=0, seed=1)
    assert _generate(smol, zero, False) == expected
    assert _generate(smol, zero.replace(mirostat_tau=8.0, mirostat_eta=0.1), False) != expected


def test_typical_and_mirostat_through_a_request(smol: Any) -> None:
    opts = {"max_tokens": 12, "seed": 7, "temperature": 0.9, "typical_p": 0.9}
    miro = {"mirostat": 2, "mirostat_tau": 3.0}
    first = smol.generate("Once upon a time", **opts, **miro).text
    assert first == smol.generate("Once upon a time", **opts, **miro).text
    assert first != smol.generate("Once upon a time", **opts).text


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"typical_p": 0}, "typical_p must be above 0 and at most 1, got 0"),
        ({"typical_p": "0.5"}, "typical_p must be a number, got str"),
        ({"mirostat": 3}, "mirostat must be between 0 and 2, got 3"),
        ({"mirostat": 2.0}, "mirostat must be an integer, got float"),
        ({"mirostat_tau": -1}, "mirostat_tau must be between 0 and 100, got -1"),
        ({"mirostat_eta": float("nan")}, "mirostat_eta must be a finite number, got nan"),
    ],
)
def test_bad_typical_and_mirostat_values(bad: dict[str, Any], message: str) -> None:
    from ggrun.errors import InvalidArgument
    from ggrun.request import Request

    with pytest.raises(InvalidArgument) as err:
        Request.build(prompt="x", **bad)
    assert str(err.value) == message
