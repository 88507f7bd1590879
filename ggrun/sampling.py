"""Sampling settings, named sampling presets, and the llama.cpp sampler chain.

:class:`SamplingConfig` is the one description of how to pick the next token.
Presets live in ``presets/sampling.yaml``; :func:`resolve` merges, in order of
precedence: explicit values > the named preset > the preset that matches the model
family (and thinking mode) > the ``default`` preset.

The chain follows llama.cpp's common order: penalties, top-k, top-p, min-p,
temperature, then a seeded distribution sampler (or greedy when temperature is 0).
"""

from __future__ import annotations

import ctypes
import dataclasses
import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from ggrun.errors import GrammarError, InvalidArgument, PresetError
from ggrun.presets import build, load_yaml, presets_dir

logger = logging.getLogger(__name__)

DEFAULT_SEED = 0xFFFFFFFF  # LLAMA_DEFAULT_SEED: a random seed


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
            (self.temperature >= 0, "temperature must be >= 0"),
            (self.top_k >= 0, "top_k must be >= 0"),
            (0.0 < self.top_p <= 1.0, "top_p must be in (0, 1]"),
            (0.0 <= self.min_p <= 1.0, "min_p must be in [0, 1]"),
            (self.repeat_penalty > 0, "repeat_penalty must be > 0"),
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


def _grammar_sampler(ll: Any, vocab: Any, grammar: str, lazy_after: str | None) -> Any:
    """A grammar sampler; lazy ones apply only once ``lazy_after`` (a regex) matches."""
    from ggrun.llama import captured_llama_log

    with captured_llama_log() as log:
        if lazy_after is None:
            g = ll.llama_sampler_init_grammar(vocab, grammar.encode(), b"root")
        else:
            patterns = (ctypes.c_char_p * 1)(lazy_after.encode())
            g = ll.llama_sampler_init_grammar_lazy_patterns(
                vocab, grammar.encode(), b"root", patterns, 1, None, 0
            )
    if not g:
        raise GrammarError(_grammar_problem(grammar, log))
    return g


def _grammar_problem(grammar: str, log: list[str]) -> str:
    """llama.cpp's parse error, with the grammar line it points at when it can be found."""
    detail = next(
        (m.strip() for m in log if "error" in m.lower() or "undefined" in m.lower()),
        "llama.cpp could not parse it",
    )
    where = ""
    if " at " in detail:
        rest = detail.split(" at ", 1)[1].strip()[:20]
        pos = grammar.find(rest) if rest else -1
        if pos >= 0:
            where = f" (line {grammar.count(chr(10), 0, pos) + 1})"
    return f"invalid grammar{where}: {detail}"


def build_chain(cfg: SamplingConfig, vocab: Any) -> Any:
    """Build a native llama.cpp sampler chain; the caller frees it with ``llama_sampler_free``."""
    import llama_cpp as ll

    params = ll.llama_sampler_chain_default_params()
    params.no_perf = True
    chain = ll.llama_sampler_chain_init(params)
    add = ll.llama_sampler_chain_add
    if cfg.repeat_penalty != 1.0 or cfg.presence_penalty or cfg.frequency_penalty:
        n_vocab = ll.llama_vocab_n_tokens(vocab)
        add(
            chain,
            ll.llama_sampler_init_penalties(
                n_vocab,
                cfg.repeat_last_n,
                cfg.repeat_penalty,
                cfg.frequency_penalty,
                cfg.presence_penalty,
            ),
        )
    if cfg.greedy:
        add(chain, ll.llama_sampler_init_greedy())
        return chain
    if cfg.top_k > 0:
        add(chain, ll.llama_sampler_init_top_k(cfg.top_k))
    if cfg.top_p < 1.0:
        add(chain, ll.llama_sampler_init_top_p(cfg.top_p, 1))
    if cfg.min_p > 0.0:
        add(chain, ll.llama_sampler_init_min_p(cfg.min_p, 1))
    add(chain, ll.llama_sampler_init_temp(cfg.temperature))
    add(chain, ll.llama_sampler_init_dist(DEFAULT_SEED if cfg.seed is None else cfg.seed))
    return chain


class Sampler:
    """Picks the next token from a context's last logits; call :meth:`close` when done.

    Plain greedy decoding (no penalties, no grammar) takes the argmax of the logits
    directly: llama.cpp's chain would first copy all ~150k candidates, which costs ~1 ms
    a token on a Qwen vocabulary.

    With a grammar, checking every candidate against it costs far more than the model on a
    small CPU model. As llama.cpp's own common sampler does, the token is first sampled
    without the grammar and then checked alone; only when the grammar rejects it are all
    candidates filtered by the grammar and the token sampled again. The result is the same
    distribution; the cost is one check per token in the common case.
    """

    def __init__(
        self,
        cfg: SamplingConfig,
        vocab: Any,
        ctx: Any,
        grammar: str | None = None,
        lazy_after: str | None = None,
    ) -> None:
        import llama_cpp as ll
        import numpy as np

        self._ll = ll
        self._np = np
        self._ctx = ctx
        self._chain: Any = None
        self._grammar: Any = None
        self._n_vocab = int(ll.llama_vocab_n_tokens(vocab))
        plain = cfg.repeat_penalty == 1.0 and not cfg.presence_penalty and not cfg.frequency_penalty
        if cfg.greedy and plain and grammar is None:
            return
        if grammar is not None:
            self._grammar = _grammar_sampler(ll, vocab, grammar, lazy_after)
            fields = [("id", "<i4"), ("logit", "<f4"), ("p", "<f4")]
            self._buf = np.zeros(self._n_vocab, dtype=np.dtype(fields, align=True))
            self._ids = np.arange(self._n_vocab, dtype=np.int32)
            self._one = (ll.llama_token_data * 1)()
        try:
            self._chain = build_chain(cfg, vocab)
        except BaseException:
            self.close()
            raise

    def sample(self, idx: int = -1) -> int:
        """The next token, from the logits of batch position ``idx`` (default: the last)."""
        if self._grammar is not None:
            return self._sample_with_grammar(idx)
        if self._chain is not None:
            return int(self._ll.llama_sampler_sample(self._chain, self._ctx, idx))
        logits = self._ll.llama_get_logits_ith(self._ctx, idx)
        return int(self._np.ctypeslib.as_array(logits, shape=(self._n_vocab,)).argmax())

    def _candidates(self, idx: int) -> Any:
        ll = self._ll
        logits = self._np.ctypeslib.as_array(
            ll.llama_get_logits_ith(self._ctx, idx), shape=(self._n_vocab,)
        )
        self._buf["id"] = self._ids
        self._buf["logit"] = logits
        self._buf["p"] = 0.0
        data = self._buf.ctypes.data_as(ctypes.POINTER(ll.llama_token_data))
        return ll.llama_token_data_array(data, self._n_vocab, -1, False)

    def _allowed(self, token: int) -> bool:
        ll = self._ll
        self._one[0] = ll.llama_token_data(token, 0.0, 0.0)
        arr = ll.llama_token_data_array(self._one, 1, -1, False)
        ll.llama_sampler_apply(self._grammar, ctypes.byref(arr))
        return bool(self._one[0].logit > -3.0e38)

    def _sample_with_grammar(self, idx: int) -> int:
        ll = self._ll
        arr = self._candidates(idx)
        ll.llama_sampler_apply(self._chain, ctypes.byref(arr))
        token = int(arr.data[arr.selected].id)
        if not self._allowed(token):  # resample with the grammar over every candidate
            arr = self._candidates(idx)
            ll.llama_sampler_apply(self._grammar, ctypes.byref(arr))
            ll.llama_sampler_apply(self._chain, ctypes.byref(arr))
            token = int(arr.data[arr.selected].id)
        ll.llama_sampler_accept(self._grammar, token)
        ll.llama_sampler_accept(self._chain, token)
        return token

    def close(self) -> None:
        for name in ("_chain", "_grammar"):
            handle = getattr(self, name)
            if handle is not None:
                self._ll.llama_sampler_free(handle)
                setattr(self, name, None)
