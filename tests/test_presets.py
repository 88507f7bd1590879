"""Sampling presets and YAML loading: precedence, strictness, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from ggrun import sampling
from ggrun.errors import InvalidArgument, PresetError


def test_precedence() -> None:
    base = sampling.resolve()
    assert base.temperature == 0.7 and base.top_k == 40  # the `default` preset
    greedy = sampling.resolve(preset="greedy")
    assert greedy.greedy
    assert sampling.resolve(preset="greedy", temperature=0.5).temperature == 0.5
    assert sampling.resolve(family="qwen2").top_k == 20
    assert sampling.resolve(family="qwen2", preset="creative").top_k == 0


@pytest.mark.parametrize(
    "bad",
    [{"temperature": -1}, {"top_p": 0}, {"top_p": 1.5}, {"min_p": 2}, {"seed": -1}, {"top_k": -3}],
)
def test_invalid_values(bad: dict[str, float]) -> None:
    with pytest.raises(InvalidArgument):
        sampling.resolve(**bad)


def test_unknown_preset() -> None:
    with pytest.raises(PresetError, match="unknown sampling preset 'nope'"):
        sampling.resolve(preset="nope")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("default:\n  temperature: 0.5\n  tempreature: 0.9\n", "line 3: unknown key 'tempreature'"),
        ("default:\n  top_k: lots\n", "line 2: 'top_k' has the wrong type"),
        ("default:\n  temperature: 0.5\n  temperature: 0.6\n", "duplicate key"),
        ("default: [1, 2\n", "invalid YAML"),
        ("default:\n  temperature: -2\n", "temperature must be between 0 and 100"),
        ("- just\n- a list\n", "expected a mapping"),
    ],
)
def test_bad_preset_files(custom_presets: Path, text: str, message: str) -> None:
    (custom_presets / "sampling.yaml").write_text(text)
    with pytest.raises(PresetError, match=message) as err:
        sampling.load_presets()
    assert "sampling.yaml" in str(err.value)


def test_yaml_is_loaded_safely(custom_presets: Path) -> None:
    (custom_presets / "sampling.yaml").write_text(
        "default: !!python/object/apply:os.system ['echo hacked']\n"
    )
    with pytest.raises(PresetError):
        sampling.load_presets()
