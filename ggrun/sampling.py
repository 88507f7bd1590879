"""Sampling options, settings and named sampling presets.

:data:`OPTIONS` is the one table of sampling options: each row declares an option's
name, type, default, range, help text, CLI flag, the request bodies that accept it and
whether presets and tasks may set it. Everything else is read off it: the fields of
:class:`SamplingConfig` and of a preset, the range checks (:meth:`Option.check`), the CLI
flags (:mod:`ggrun.cli.options`), the task keys (:mod:`ggrun.tasks`) and each API's
fields (:func:`wire_fields`, :func:`from_wire`). A new sampler is one row here plus the
line in :func:`ggrun.llama.build_chain` that applies it.

:class:`SamplingConfig` is the one description of how to pick the next token (the
native sampler that applies it is :class:`ggrun.llama.Sampler`). Presets live in
``presets/sampling.yaml``; :func:`resolve` merges, in order of precedence: explicit
values > the named preset > the preset that matches the model family (and thinking
mode) > the ``default`` preset.

The order follows llama.cpp's common sampler: penalties, top-k, typical-p, top-p, min-p,
temperature, then a seeded distribution sampler (or greedy when temperature is 0); with
mirostat on, penalties, temperature, then mirostat's own draw. ``repeat_last_n = -1``
penalizes over the whole context.
"""

from __future__ import annotations

import logging
import math
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ggrun.errors import InvalidArgument, PresetError
from ggrun.presets import build, line_of, load_yaml, presets_dir

logger = logging.getLogger(__name__)

# The request bodies an option can come in: OpenAI's chat and completions ("openai"),
# OpenAI Responses ("responses"), ollama's ``options`` ("ollama"), Anthropic Messages.
APIS = ("openai", "responses", "ollama", "anthropic")
LLAMA_SERVER = ("openai", "responses", "ollama")  # llama.cpp's server and ollama: every option

TOKEN_MAP = dict  # an option's kind: token id -> number (OpenAI's logit_bias)
MAX_TOKEN_ID = 2**31 - 1  # a key past this is no token of any model (llama_token is int32)


def _token_id(k: Any) -> int | None:
    """A map's key as a token id: an integer, or a JSON key of ASCII digits; None when it
    is neither (a model's vocabulary bounds it later: :meth:`SamplingConfig.check_vocab`)."""
    if isinstance(k, str) and k.isascii() and k.isdigit() and len(k) <= 10:
        k = int(k)
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= MAX_TOKEN_ID:
        return None
    return k


@dataclass(frozen=True)
class Option:
    """One sampling option: a row of :data:`OPTIONS`."""

    name: str  # the Python keyword, the preset and task key, the attribute of a config
    kind: type  # int, float, or dict: a map of token ids to numbers in lo..hi (TOKEN_MAP)
    default: Any
    lo: float  # the range: lo..hi, each end closed unless lo_open / hi_open
    hi: float
    flag: str = ""  # the CLI flag
    help: str = ""  # the CLI's help text
    lo_open: bool = False
    hi_open: bool = False
    apis: tuple[str, ...] = LLAMA_SERVER  # the bodies that accept it, under its own name
    renamed: tuple[tuple[str, str], ...] = ()  # (api, name) where an API spells it otherwise
    presets: bool = True  # a sampling preset may set it
    tasks: bool = True  # a task file may set it
    most: int = 0  # a map's most entries

    def wire_name(self, api: str) -> str | None:
        """Its name in ``api``'s request body; None where that API has no such field."""
        if api not in APIS:
            raise ValueError(f"unknown API {api!r} (known: {', '.join(APIS)})")
        return dict(self.renamed).get(api, self.name if api in self.apis else None)

    def has_kind(self, v: Any) -> bool:
        """Whether ``v`` is of this option's type (an integer also passes for a number;
        a map is a mapping, or a sequence of pairs: a config's own, the CLI's)."""
        if self.kind is TOKEN_MAP:
            return isinstance(v, (Mapping, tuple, list))
        return not isinstance(v, bool) and isinstance(v, int if self.kind is int else (int, float))

    def check(self, v: Any, where: str | None = None) -> Any:
        """``v`` type- and range-checked (a number as a float; a map as its sorted
        ``(token id, number)`` pairs); :class:`InvalidArgument` naming the field (``where``,
        by default the option's name) when it is wrong."""
        where = where or self.name
        if self.kind is TOKEN_MAP:
            return self._check_map(v, where)
        return self._check_one(v, where)

    def _check_map(self, v: Any, where: str) -> tuple[tuple[int, float], ...]:
        """A map of token ids (integers, or their digits as a JSON key) to numbers."""
        if not self.has_kind(v):
            kind = "null" if v is None else type(v).__name__
            raise InvalidArgument(f"{where} must map token ids to numbers, got {kind}")
        items = list(v.items()) if isinstance(v, Mapping) else list(v)
        if len(items) > self.most:
            raise InvalidArgument(f"{where} may hold at most {self.most} tokens, got {len(items)}")
        out: dict[int, float] = {}
        for item in items:
            if not (isinstance(item, tuple) and len(item) == 2):
                raise InvalidArgument(f"{where} must map token ids to numbers")
            k, x = item
            token = _token_id(k)
            if token is None:
                raise InvalidArgument(
                    f"{where} keys must be token ids (whole numbers from 0), got {_shown(k)!r}"
                )
            if token in out:
                raise InvalidArgument(f"{where} names token {token} twice")
            out[token] = self._check_one(x, f"{where}[{token}]", float)
        return tuple(sorted(out.items()))

    def _check_one(self, v: Any, where: str, kind: type | None = None) -> Any:
        kind = kind or self.kind
        if isinstance(v, bool) or not isinstance(v, int if kind is int else (int, float)):
            got = "null" if v is None else type(v).__name__
            what = "an integer" if kind is int else "a number"
            raise InvalidArgument(f"{where} must be {what}, got {got}")
        x = v
        if kind is float:
            try:
                x = float(v)
            except OverflowError:  # an integer past any float (10**401)
                x = math.inf
            if not math.isfinite(x):
                raise InvalidArgument(f"{where} must be a finite number, got {_shown(v)}")
        above = x > self.lo if self.lo_open else x >= self.lo
        below = x < self.hi if self.hi_open else x <= self.hi
        if not (above and below):
            raise InvalidArgument(f"{where} must be {self.range_text}, got {_shown(v)}")
        return x

    @property
    def range_text(self) -> str:
        lo, hi = _num(self.lo), _num(self.hi)
        if not self.lo_open and not self.hi_open:
            return f"between {lo} and {hi}"
        low = f"above {lo}" if self.lo_open else f"at least {lo}"
        return f"{low} and {'below' if self.hi_open else 'at most'} {hi}"


def _shown(v: Any) -> str:
    try:
        return str(v)[:40]
    except ValueError:  # an integer of more than 4300 digits
        return "a number of thousands of digits"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


ANTHROPIC = (*LLAMA_SERVER, "anthropic")
BIG = 1 << 30  # the largest count (top_k, a penalty window)

OPTIONS: tuple[Option, ...] = (
    Option("temperature", float, 0.7, 0, 100, apis=ANTHROPIC,
           flag="--temp", help="Temperature; 0 = greedy."),
    Option("top_k", int, 40, 0, BIG, apis=ANTHROPIC,
           flag="--top-k", help="Top-k (0 = off)."),
    Option("top_p", float, 0.95, 0, 1, lo_open=True, apis=ANTHROPIC,
           flag="--top-p", help="Top-p / nucleus (1 = off)."),
    Option("min_p", float, 0.05, 0, 1,
           flag="--min-p", help="Min-p (0 = off)."),
    Option("typical_p", float, 1.0, 0, 1, lo_open=True,
           flag="--typical-p", help="Locally typical sampling (1 = off)."),
    Option("repeat_penalty", float, 1.0, 0, 100, lo_open=True,
           flag="--repeat-penalty", help="Repeat penalty (1 = off)."),
    Option("repeat_last_n", int, 64, -1, BIG,
           flag="--repeat-last-n", help="Tokens the penalties look back over (-1 = all)."),
    Option("presence_penalty", float, 0.0, -2, 2,
           flag="--presence-penalty", help="Presence penalty (0 = off)."),
    Option("frequency_penalty", float, 0.0, -2, 2,
           flag="--frequency-penalty", help="Frequency penalty (0 = off)."),
    Option("mirostat", int, 0, 0, 2,
           flag="--mirostat", help="Mirostat 1 or 2 (its version) replaces top-k, typical-p, "
           "top-p and min-p: it keeps the text's surprise near --mirostat-tau (0 = off)."),
    Option("mirostat_tau", float, 5.0, 0, 100,
           flag="--mirostat-tau", help="Mirostat's target surprise, in bits per token."),
    Option("mirostat_eta", float, 0.1, 0, 1,
           flag="--mirostat-eta", help="Mirostat's learning rate."),
    # 2**32 - 1 is llama.cpp's "pick one at random": a seed given must be below it
    Option("seed", int, None, 0, 2**32 - 2, presets=False, tasks=False,
           flag="--seed", help="Random seed: the same seed and settings give the same output."),
    # OpenAI's: applied before every other sampler, as llama.cpp's common sampler does;
    # -100 bans the token outright (minus infinity), +100 all but forces it
    Option("logit_bias", TOKEN_MAP, (), -100, 100, apis=("openai",), most=300,
           presets=False, tasks=False, flag="--logit-bias",
           help="Add N (-100 to 100) to token ID's logit, as ID=N; -100 bans the token. "
           "Repeatable."),
)  # fmt: skip
BY_NAME: Mapping[str, Option] = MappingProxyType({o.name: o for o in OPTIONS})
SAMPLING_FIELDS = tuple(BY_NAME)
PRESET_FIELDS = tuple(o.name for o in OPTIONS if o.presets)
TASK_FIELDS = tuple(o.name for o in OPTIONS if o.tasks)
REDRAW_TEMPERATURE = 0.7  # a greedy reply that failed a check is drawn again at this
GREEDY: Mapping[str, Any] = MappingProxyType({"temperature": 0.0})  # always the likeliest token


def check(name: str, v: Any, where: str | None = None) -> Any:
    """Option ``name``'s value ``v``, checked (:meth:`Option.check`)."""
    return BY_NAME[name].check(v, where)


def wire_fields(api: str) -> dict[str, str]:
    """The sampling fields that ``api``'s request body accepts: wire name -> option name.

    ``api`` is one of :data:`APIS`: ``"openai"`` (chat and completions bodies),
    ``"responses"``, ``"ollama"`` (the ``options`` object) or ``"anthropic"``.
    """
    return {w: o.name for o in OPTIONS if (w := o.wire_name(api)) is not None}


def from_wire(api: str, body: Mapping[str, Any], *, prefix: str = "") -> dict[str, Any]:
    """The sampling options in ``body`` (``api``'s request body, or ollama's ``options``),
    checked: option name -> value, ready for :meth:`ggrun.request.Request.build`.

    Fields absent or null are left out; keys that are not sampling fields are ignored
    (the adapter refuses the ones it does not know). A wrong type or value is an
    :class:`InvalidArgument` naming the field as the body spells it: ``prefix`` + its
    wire name (``prefix="options."`` gives ``options.top_k must be ...``).
    """
    out = {}
    for wire, name in wire_fields(api).items():
        v = body.get(wire)
        if v is not None:
            out[name] = check(name, v, prefix + wire)
    return out


def from_yaml(data: Mapping[str, Any], *, where: str, allowed: tuple[str, ...]) -> dict[str, Any]:
    """The options named in ``allowed`` (:data:`PRESET_FIELDS` or :data:`TASK_FIELDS`)
    that a YAML mapping sets, checked; a :class:`PresetError` naming ``where``, the line
    and the key when one is wrong. Other keys are the caller's."""
    out = {}
    for name in allowed:
        v = data.get(name)
        if v is None:
            continue
        line = line_of(data, name)
        at = f"{where}, line {line}" if line else where
        if not BY_NAME[name].has_kind(v):
            raise PresetError(f"{at}: {name!r} has the wrong type ({type(v).__name__})")
        try:
            out[name] = check(name, v)
        except InvalidArgument as e:
            raise PresetError(f"{at}: {e}") from None
    return out


def _config(values: dict[str, Any]) -> SamplingConfig:
    return SamplingConfig(**values)


class SamplingConfig:
    """How the next token is chosen: one value per option of :data:`OPTIONS`, read as
    attributes (``cfg.top_k``); frozen. ``temperature=0`` means greedy. A value left out
    (or None) is the option's default; a wrong one is an :class:`InvalidArgument`."""

    __slots__ = ("_values",)
    _values: Mapping[str, Any]

    def __init__(self, **values: Any) -> None:
        unknown = set(values) - set(BY_NAME)
        if unknown:
            raise InvalidArgument(f"unknown sampling setting(s): {', '.join(sorted(unknown))}")
        checked = {}
        for o in OPTIONS:
            v = values.get(o.name)
            try:
                checked[o.name] = o.default if v is None else o.check(v)
            except InvalidArgument as e:
                raise InvalidArgument(f"invalid sampling setting: {e}") from None
        object.__setattr__(self, "_values", MappingProxyType(checked))

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(f"SamplingConfig has no option {name!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("SamplingConfig is frozen: use replace()")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SamplingConfig) and self._values == other._values

    def __hash__(self) -> int:
        return hash(tuple(self._values.items()))

    def __repr__(self) -> str:
        return f"SamplingConfig({', '.join(f'{k}={v!r}' for k, v in self._values.items())})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_config, (dict(self._values),))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def as_dict(self) -> dict[str, Any]:
        """Every option's value, by name, in the table's order."""
        return dict(self._values)

    def replace(self, **changes: Any) -> SamplingConfig:
        return SamplingConfig(**{**self._values, **changes})

    def check_vocab(self, n_vocab: int) -> None:
        """:class:`InvalidArgument` when a token map names a token past a vocabulary of
        ``n_vocab`` (checked before llama.cpp sees the ids)."""
        for o in OPTIONS:
            if o.kind is TOKEN_MAP:
                past = [t for t, _ in self._values[o.name] if t >= n_vocab]
                if past:
                    raise InvalidArgument(
                        f"{o.name} names token {past[0]}, but the model's vocabulary has "
                        f"{n_vocab} tokens (ids 0 to {n_vocab - 1})"
                    )

    def seeded(self, below: int) -> SamplingConfig:
        """This config with the seed its draws will use: when none was given, a random
        one below ``below`` (so that a run manifest can name it). Greedy decoding draws
        nothing and keeps None."""
        if self.seed is not None or self.greedy:
            return self
        return self.replace(seed=secrets.randbelow(below))

    def nth(self, i: int) -> SamplingConfig:
        """The settings of draw ``i`` of several from one request (0: these): its seed
        plus ``i``, so that ``n`` choices differ and a seeded request repeats them.
        Greedy decoding has one answer and keeps it."""
        if i == 0 or self.greedy or self.seed is None:
            return self
        return self.replace(seed=(self.seed + i) % (2**32 - 1))

    def redrawn(self, attempt: int) -> SamplingConfig:
        """The settings for drawing a failed reply again (``attempt`` 1, 2, ...): the
        next seeds; a greedy request samples at :data:`REDRAW_TEMPERATURE`, since its one
        answer has just failed."""
        cfg = self.replace(temperature=REDRAW_TEMPERATURE, seed=0) if self.greedy else self
        return cfg.nth(attempt)


@dataclass(frozen=True)
class SamplingPreset:
    """One entry of ``presets/sampling.yaml``: partial sampling settings plus matching.

    Its keys are ``description``, ``families``, ``thinking`` and the options of
    :data:`PRESET_FIELDS`; the options it sets are held in ``settings``.
    """

    description: str = ""
    families: tuple[str, ...] = ()
    thinking: bool | None = None
    settings: tuple[tuple[str, Any], ...] = field(default=(), metadata={"key": False})

    def values(self) -> dict[str, Any]:
        return dict(self.settings)


@lru_cache(maxsize=4)
def load_presets(path: str | None = None) -> dict[str, SamplingPreset]:
    p = presets_dir() / "sampling.yaml" if path is None else Path(path)
    data = load_yaml(p)
    if not isinstance(data, dict):
        raise PresetError(f"{p}: expected a mapping of preset names")
    presets = {}
    for name, entry in data.items():
        where = f"{p}: preset {name!r}"
        preset = build(SamplingPreset, entry, where=where, extra=PRESET_FIELDS)
        values = from_yaml(entry, where=where, allowed=PRESET_FIELDS)
        presets[str(name)] = SamplingPreset(
            preset.description, preset.families, preset.thinking, tuple(values.items())
        )
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
