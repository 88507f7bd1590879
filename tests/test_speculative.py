"""Speculative decoding on real models: lossless (the same tokens as plain decoding),
grammars still hold, the draft model is checked and planned. Speed is measured in
benchmarks/speculative.py, never here."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from ggrun import speculative, textstream
from ggrun.batching import batch
from ggrun.engine import LoadConfig, Model, load
from ggrun.errors import InsufficientMemory, InvalidArgument

CODE = """def area(shapes):
    total = 0
    for shape in shapes:
        if shape.kind == "square":
            total += shape.side * shape.side
        elif shape.kind == "circle":
            total += 3.14159 * shape.radius * shape.radius
    return total
"""
PROMPTS = [
    "Rename `total` to `acc` in this function. Return only the code.\n\n" + CODE,
    "Copy this text exactly: The quick brown fox jumps over the lazy dog. The quick brown fox.",
    "List the numbers from 1 to 30, separated by commas.",
    "Write a short poem about the sea.",
    "Repeat after me three times: ggrun runs models locally.",
    "Extract the name and the city as JSON: 'Ada Lovelace lived in London; Ada wrote notes.'",
]


def _chat(model: Any, text: str, **kw: Any) -> Any:
    return model.chat([{"role": "user", "content": text}], max_tokens=96, **kw)


def test_lookup_continues_a_copy_and_realigns() -> None:
    look = speculative.Lookup([1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3])
    assert look.available() > 0 and look.propose(3) == [4, 5, 6]
    look.extend([4, 5, 9])  # two guesses accepted, then the text departs
    assert look.available() == 0 or look.propose(2) != [6, 7]
    look.extend([1, 2])
    assert look.available() > 0 and look.propose(2) == [3, 4]


def test_lookup_goes_on_past_a_renamed_token() -> None:
    source = list(range(100, 130))  # the text to edit
    look = speculative.Lookup([*source, 1, 2, *source[:2]])
    assert look.available() > 0 and look.propose(4) == source[2:6]
    look.extend(source[2:12])  # a long run of the copy
    look.extend([7])  # then one token for another: source[12] renamed
    assert look.available() > 0 and look.propose(3) == source[13:16]
    look.extend([8, 9])  # after a short run that departs, nothing is assumed
    assert look.available() == 0 or look.propose(1) != source[14:15]


def test_lookup_guesses_what_usually_follows_where_nothing_is_copied() -> None:
    look = speculative.Lookup([5, 9, 1, 6, 5, 9, 2, 3, 5])
    assert look.available() == 0  # no 2-gram seen before: nothing to copy
    assert look.ngrams() == [9]  # 9 followed 5 twice; after (5, 9) the text went two ways
    look.extend([9, 1, 6])
    assert look.available() > 0 and look.propose(2) == [5, 9]  # now a copy again


def test_a_copy_is_not_trusted_where_the_text_went_on_differently_each_time() -> None:
    look = speculative.Lookup([8, 7, 1, 8, 7, 2, 8, 7, 3, 8, 7])  # keys of a JSON object
    assert look.available() == 0
    assert look.ngrams() == []


def test_earlier_replies_are_guessed_where_they_match_the_longest() -> None:
    """The keys of a JSON object are nowhere in a new document, but earlier replies wrote
    them; where several went on differently, the ones that match more of the text decide."""
    memory = speculative.Memory()
    assert memory.propose([5, 8, 7]) == []
    memory.learn([8, 7, 1, 2, 9])
    memory.learn([3, 8, 7, 1, 2, 9])
    assert memory.propose([5, 8, 7], 2) == [1, 2]
    assert memory.propose([5, 8, 7]) == [1, 2, 9]  # to where the replies end
    memory.learn([4, 4, 6, 8, 7, 5, 5])  # after (6, 8, 7) it went on with 5, 5
    assert memory.propose([6, 8, 7]) == [5, 5]  # the longer match wins
    assert memory.propose([0, 8, 7]) == [1, 2, 9]  # matched as long: 2 of 3 say 1, 2, 9
    memory.learn([0, 8, 7, 6])
    memory.learn([0, 8, 7, 5])
    assert memory.propose([0, 8, 7]) == []  # 6 once, 5 once: no continuation is most


def test_memory_forgets_the_oldest_replies_and_leaves_nothing_behind(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(speculative.Memory, "LIMIT", 10)
    memory, fresh = speculative.Memory(), speculative.Memory()
    replies = [[1, 2, 3, 4], [5, 6, 7, 1, 2], [1, 2, 4, 8], [9, 9, 9]]
    for r in replies:
        memory.learn(r)
    assert memory.size <= 10 and list(memory.replies) == replies[2:]
    for r in replies[2:]:
        fresh.learn(r)

    def places(m: speculative.Memory) -> dict[Any, list[Any]]:  # by reply, not number
        return {k: [(m.replies[n - m.first], at) for n, at in v] for k, v in m.index.items()}

    assert places(memory) == places(fresh)  # forgotten places are gone
    assert memory.propose([3, 1, 2]) == [4, 8]
    memory.learn(list(range(100)))  # one long reply: its last LIMIT tokens
    assert memory.size == 10 and memory.replies[-1] == list(range(90, 100))
    assert memory.propose([1, 2]) == []
    memory.clear()
    assert not memory.index and not memory.replies and memory.propose([95, 96]) == []


def test_a_request_without_memory_neither_guesses_from_it_nor_teaches_it(smol: Any) -> None:
    smol.memory.clear()
    first = _chat(smol, PROMPTS[4], temperature=0, speculative="off")
    again = _chat(smol, PROMPTS[4], temperature=0, speculative="lookup", memory=False)
    assert again.text == first.text and len(smol.memory.replies) == 1
    with_memory = _chat(smol, PROMPTS[4], temperature=0, speculative="lookup")
    assert with_memory.accepted_tokens > again.accepted_tokens  # the memory did guess
    assert len(smol.memory.replies) == 2


def test_a_model_loaded_without_memory_has_none(smol_path: Path) -> None:
    with Model(smol_path, LoadConfig(n_ctx=512, memory=False)) as m:
        assert m.memory is None
        r = _chat(m, PROMPTS[4], temperature=0, speculative="lookup")
        assert r.text
    with load(str(smol_path), n_ctx=512, memory=False) as m:  # as `ggrun serve --no-memory`
        assert m.memory is None
    from typer.testing import CliRunner

    from ggrun.cli.app import app

    assert "--no-memory" in CliRunner().invoke(app, ["serve", "--help"]).output


def test_a_model_remembers_its_replies_for_later_requests(smol: Any) -> None:
    smol.memory.clear()
    first = _chat(smol, PROMPTS[4], temperature=0, speculative="off")
    assert smol.detokenize(smol.memory.replies[-1]) == first.text
    again = _chat(smol, PROMPTS[4], temperature=0, speculative="lookup")
    assert again.text == first.text
    assert again.accepted_tokens > 0
    assert len(smol.memory.replies) == 2
    done = batch(smol, [[{"role": "user", "content": t}] for t in PROMPTS[:2]], parallel=2,
                 max_tokens=8, temperature=0)  # fmt: skip
    learned = [smol.detokenize(r) for r in list(smol.memory.replies)[2:]]
    assert sorted(learned) == sorted(r.text for r in done)  # a batch's replies teach it too


def test_the_cost_of_one_row_is_inferred_while_every_step_guesses() -> None:
    costs = speculative.CostModel()
    assert costs.one is None
    costs.observe(4, 0.181)
    one = costs.one
    assert one is not None and abs(one - 0.1) < 0.01  # 4 rows cost 1.81 rows' time (prior)
    costs.observe(1, 0.2)
    assert costs.one == 0.2


def test_the_cost_of_rows_is_taken_against_one_row_of_the_moment() -> None:
    """A slow minute, then a fast one, then one decode in the long tail: 4 rows still
    cost 1.8 rows' time (averages of raw times from different minutes said 3.4)."""
    costs = speculative.CostModel()
    for _ in range(10):
        costs.observe(1, 0.15)
        costs.observe(4, 0.27)
    for _ in range(10):
        costs.observe(1, 0.10)
    costs.observe(4, 0.6)
    assert 1.7 < costs.cost(4) < 2.0


def test_a_batch_is_priced_only_against_a_recent_single_row(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = [100.0]
    monkeypatch.setattr(speculative.time, "monotonic", lambda: clock[0])
    costs = speculative.CostModel()
    costs.observe(1, 0.10)
    clock[0] += 30  # a minute later, on a slower host, every step guesses
    for _ in range(20):
        costs.observe(4, 0.40)
    assert costs.cost(4) == pytest.approx(1.81)  # the prior: nothing to compare with
    costs.observe(1, 0.22)
    costs.observe(4, 0.40)
    assert costs.cost(4) < 1.9


def test_the_controller_stops_guessing_when_it_does_not_pay() -> None:
    ctl = speculative.Controller(speculative.CostModel())
    assert ctl.choose(32) > 0  # optimistic at first
    for _ in range(20):
        ctl.record(4, 0)  # every guess wrong
    assert ctl.choose(32) == 0
    idle = 0
    while not ctl.choose(32):  # steps without guesses: the evidence fades, it tries again
        idle += 1
    assert 3 <= idle <= 64
    for _ in range(20):
        ctl.record(8, 8)  # every guess right
    assert ctl.choose(32) >= 8


def test_guesses_are_padded_to_the_cheaper_row_count() -> None:
    costs = speculative.CostModel()
    assert [costs.padded(n) for n in (1, 2, 3, 4)] == [1, 2, 4, 4]  # 4 rows cost less than 3
    spec = speculative.Speculation("lookup", [1, 2, 1], costs, None)
    spec.extend([2])  # the copy has two tokens to guess: 1, 2
    guesses = spec.guess([1, 2, 1, 2])
    assert guesses[:2] == [1, 2] and len(guesses) == 3 and spec.guessed == 2
    assert len(spec.guess([1, 2, 1, 2], room=2)) == 2  # no padding past the room


def test_a_small_batch_bounds_the_guesses(smol_path: Path) -> None:
    """n_batch 8: guesses stop at 7 (llama.cpp aborts on a batch over n_batch)."""
    with Model(smol_path, LoadConfig(n_ctx=512, n_batch=8)) as m:
        plain = _chat(m, PROMPTS[1], temperature=0, speculative="off")
        fast = _chat(m, PROMPTS[1], temperature=0, speculative="lookup")
    assert fast.text == plain.text and fast.accepted_tokens > 0


def test_a_costly_draft_is_probed_now_and_then() -> None:
    ctl = speculative.Controller(speculative.CostModel(), draft_cost=0.5)
    for _ in range(20):
        ctl.record(3, 1)
    picks = [ctl.choose(32) for _ in range(400)]
    probes = [k for k in picks if k]
    # a failed probe of 3 wastes 1.81 + 1.5 - 1 plain steps: at most 2% of 400 steps
    assert probes and set(probes) == {3} and len(probes) <= 400 * 0.02 / 2.31
    for _ in range(20):
        ctl.record(3, 3)  # the probes hold: every guess right
    assert ctl.choose(32) >= 3


@pytest.mark.parametrize("which", ["smol", "qwen"])
def test_greedy_lookup_gives_the_same_tokens(which: str, request: Any) -> None:
    model = request.getfixturevalue(which)
    drafted = accepted = 0
    for text in PROMPTS:
        plain = _chat(model, text, temperature=0, speculative="off")
        # guesses from the prompt and the reply so far: the model's memory of the plain
        # reply would guess every token of a poem too, verified in batches where a near-tie
        # may flip (ggrun/decoder.py; the memory's own test is on a copying prompt)
        model.memory.clear()
        fast = _chat(model, text, temperature=0, speculative="lookup")
        assert fast.text == plain.text, text
        assert fast.completion_tokens == plain.completion_tokens
        drafted += fast.drafted_tokens
        accepted += fast.accepted_tokens
    assert drafted > 0 and accepted > 0  # it really guessed, and some guesses held


def test_sampling_keeps_the_distribution_and_the_seed(qwen: Any) -> None:
    """One draw per position either way: with the same seed, the same tokens."""
    for seed in (1, 2, 3):
        kw = {"temperature": 0.8, "top_k": 40, "seed": seed}
        a = _chat(qwen, PROMPTS[0], speculative="off", **kw)
        b = _chat(qwen, PROMPTS[0], speculative="lookup", **kw)
        assert a.text == b.text


def test_grammar_with_speculation_gives_valid_json(qwen: Any) -> None:
    schema = {"type": "object", "properties": {"name": {"type": "string"},
              "city": {"type": "string"}}, "required": ["name", "city"]}  # fmt: skip
    r = _chat(qwen, PROMPTS[5], temperature=0, schema=schema, speculative="lookup")
    jsonschema.validate(r.data, schema)
    plain = _chat(qwen, PROMPTS[5], temperature=0, schema=schema, speculative="off")
    assert r.data == plain.data


def test_a_draft_model_gives_the_same_tokens(
    qwen_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[Any] = []
    read, done = speculative.DraftModel.read, textstream.TextStream.prompt_done
    monkeypatch.setattr(
        speculative.DraftModel, "read", lambda d, t: events.append(read(d, t)) or events[-1]
    )
    monkeypatch.setattr(
        textstream.TextStream, "prompt_done", lambda st: events.append("prompt") or done(st)
    )
    # the 0.5B model drafting for itself: the same tokenizer, every guess right
    with Model(qwen_path, LoadConfig(n_ctx=1024), speculative="draft", draft=qwen_path) as m:
        plain = _chat(m, PROMPTS[0], temperature=0, speculative="off")
        events.clear()
        fast = _chat(m, PROMPTS[0], temperature=0)
        assert fast.text == plain.text
        assert fast.accepted_tokens > 0.8 * fast.drafted_tokens > 0
    # the draft read the prompt with the prompt's time; its first guess read one token
    assert events[1] == "prompt" and events[0] > 50
    assert events[2] == 1


def test_a_draft_left_idle_is_not_probed_when_catching_up_costs_too_much() -> None:
    def picks(catch_up: float) -> list[int]:
        ctl = speculative.Controller(speculative.CostModel(), draft_cost=0.5)
        ctl.catch_up = catch_up  # what reading a missed token costs, against a step
        for _ in range(20):
            ctl.record(3, 1)
        out, lag = [], 1
        for _ in range(400):
            k, _ = ctl.plan(32, lag)
            out.append(k)
            lag = 1 if k else lag + 1  # a step without a guess: one more token missed
        return out

    assert any(picks(0.0))  # probed when catching up is free
    assert not any(picks(0.12))  # 0.12 a token: more than probing may lose


def test_auto_uses_the_draft_only_where_it_has_little_to_read(qwen_path: Path) -> None:
    with Model(qwen_path, LoadConfig(n_ctx=1024), speculative="auto", draft=qwen_path) as m:
        assert m.draft is not None
        long = _chat(m, PROMPTS[0], temperature=0)  # ~100 tokens the draft would read first
        assert m.draft.cached == []  # the lookup guessed; the draft never ran
        plain = _chat(m, PROMPTS[0], temperature=0, speculative="off")
        assert long.text == plain.text and long.drafted_tokens > 0
        short = _chat(m, "Count from 1 to 20.", temperature=0)
        n_prompt = len(
            m.tokenize_prompt(m.format_chat([{"role": "user", "content": "Count from 1 to 20."}]))
        )
        assert len(m.draft.cached) > n_prompt  # a short prompt: the draft guessed
        plain = _chat(m, "Count from 1 to 20.", temperature=0, speculative="off")
        assert short.text == plain.text and short.accepted_tokens > 0


def test_a_draft_of_another_tokenizer_is_refused(qwen_path: Path, smol_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="cannot draft"):
        Model(qwen_path, LoadConfig(n_ctx=256), speculative="draft", draft=smol_path)


def test_draft_and_model_are_planned_together(qwen_path: Path) -> None:
    from ggrun.hardware import detect_hardware

    hw = detect_hardware()
    # room for the model alone, not for a second copy beside it
    small = dataclasses.replace(hw, ram_available=1 << 30, ram_total=1 << 30)
    load(qwen_path, n_ctx=512, hardware=small).close()
    with pytest.raises(InsufficientMemory, match="draft"):
        load(qwen_path, n_ctx=512, hardware=small, speculative=speculative.Draft(str(qwen_path)))


def test_bad_modes_are_refused(smol: Any) -> None:
    with pytest.raises(InvalidArgument, match="speculative"):
        _chat(smol, "hi", speculative="turbo")
    with pytest.raises(InvalidArgument, match="draft model"):
        _chat(smol, "hi", speculative="draft")


def test_a_copy_is_found_by_its_text_inside_a_longer_token() -> None:
    """A value copied from a document starts after a quote: ``Ada`` where the document
    has `` Ada``; the n-grams cannot see it, the text can."""
    text = {1: b" Name:", 2: b" Ada", 3: b" Lov", 4: b"elace", 5: b' "', 6: b"Ada", 7: b" sea"}
    look = speculative.Lookup([1, 2, 3, 4, 7], text_of=text.__getitem__)
    look.extend([5, 6])
    assert look.available() > 0 and look.propose(2) == [3, 4]
    look = speculative.Lookup([1, 2, 3, 4, 7], text_of=text.__getitem__)
    look.extend([5, 7])  # a whole token of the prompt: the n-grams' business, not a copy
    assert look.available() == 0
