"""Sampling settings and named sampling presets.

:class:`SamplingConfig` is the one description of how to pick the next token (the
native sampler that applies it is :class:`ggrun.llama.Sampler`). Presets live in
``presets/sampling.yaml``; :func:`resolve` merges, in order of precedence: explicit
values > the named preset > the preset that matches the model family (and thinking
mode) > the ``default`` preset.

The order follows llama.cpp's common sampler: penalties, top-k, top-p, min-p,
temperature, then a seeded distribution sampler (or greedy when temperature is 0).
``repeat_last_n = -1`` penalizes over the whole context.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from ggrun.errors import InvalidArgument, PresetError
from ggrun.presets import build, load_yaml, presets_dir

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SamplingConfig:
    """How the next token is chosen. ``temperature=0`` means greedy."""

    temperature: float = 0.7
    top_k: int = 40  # 0 disables
    top_p: float = 0.95  # 1.0 disables
    min_p: float = 0.05  # 0.0 disables
    repeat_penalty: float = 1.0  # 1.0 disables
    repeat_last_n: int = 64
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None  # None: a random seed

    def __post_init__(self) -> None:
        checks = [
            (0 <= self.temperature <= 100, "temperature must be between 0 and 100"),
            (self.top_k >= 0, "top_k must be >= 0"),
            (0.0 < self.top_p <= 1.0, "top_p must be in (0, 1]"),
            (0.0 <= self.min_p <= 1.0, "min_p must be in [0, 1]"),
            (0 < self.repeat_penalty <= 100, "repeat_penalty must be above 0 and at most 100"),
            (self.repeat_last_n >= -1, "repeat_last_n must be >= -1"),
            (-2.0 <= self.presence_penalty <= 2.0, "presence_penalty must be in [-2, 2]"),
            (-2.0 <= self.frequency_penalty <= 2.0, "frequency_penalty must be in [-2, 2]"),
            (self.seed is None or 0 <= self.seed < 2**32, "seed must be in [0, 2**32)"),
        ]
        for ok, message in checks:
            if not ok:
                raise InvalidArgument(f"invalid sampling setting: {message}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def replace(self, **changes: Any) -> SamplingConfig:
        return dataclasses.replace(self, **changes)


SAMPLING_FIELDS = tuple(f.name for f in dataclasses.fields(SamplingConfig))


@dataclass(frozen=True)
class SamplingPreset:
    """One entry of ``presets/sampling.yaml``: partial sampling settings plus matching."""

    description: str = ""
    families: tuple[str, ...] = ()
    thinking: bool | None = None
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    repeat_penalty: float | None = None
    repeat_last_n: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None

    def values(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in SAMPLING_FIELDS if getattr(self, k, None) is not None}


@lru_cache(maxsize=4)
def load_presets(path: str | None = None) -> dict[str, SamplingPreset]:
    p = presets_dir() / "sampling.yaml" if path is None else Path(path)
    data = load_yaml(p)
    if not isinstance(data, dict):
        raise PresetError(f"{p}: expected a mapping of preset names")
    presets = {}
    for name, entry in data.items():
        preset = build(SamplingPreset, entry, where=f"{p}: preset {name!r}")
        try:
            SamplingConfig(**preset.values())
        except InvalidArgument as e:
            raise PresetError(f"{p}: preset {name!r}: {e}") from None
        presets[str(name)] = preset
    return presets


def preset_for(family: str, think: bool | None) -> str | None:
    """The name of the preset that applies automatically to a model family."""
    for name, preset in load_presets().items():
        if (
            family
            and family in preset.families
            and (preset.thinking is None or think is None or preset.thinking == think)
        ):
            return name
    return None


def resolve(
    *,
    preset: str | None = None,
    family: str = "",
    think: bool | None = None,
    **explicit: Any,
) -> SamplingConfig:
    """Merge explicit values over a named or automatic preset over ``default``."""
    presets = load_presets()
    unknown = set(explicit) - set(SAMPLING_FIELDS)
    if unknown:
        raise InvalidArgument(f"unknown sampling setting(s): {', '.join(sorted(unknown))}")
    values: dict[str, Any] = {}
    if "default" in presets:
        values.update(presets["default"].values())
    name = preset or preset_for(family, think)
    if name is not None:
        if name not in presets:
            raise PresetError(
                f"unknown sampling preset {name!r} (known: {', '.join(sorted(presets))})"
            )
        values.update(presets[name].values())
        logger.info("sampling preset %s", name)
    values.update({k: v for k, v in explicit.items() if v is not None})
    return SamplingConfig(**values)
