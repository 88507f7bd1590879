"""Speculative decoding: guess the next tokens cheaply, let the model verify them at once.

Every token costs one read of all the weights; verifying ``k`` guessed tokens in one
batch costs much less than ``k`` reads. :class:`ggrun.decoder.Decoder` puts a sequence's
guesses (its *drafts*) after its last token, samples the target model at every row, and
keeps the guesses while they equal what it sampled. So the output is exactly what plain
decoding gives: with greedy decoding the same tokens, with sampling the same
distribution (and, with the same seed, the same tokens: one draw per position either way).

Guesses come from a :class:`Lookup` in the prompt and the text so far (n-grams, with a
copy pointer that keeps following the source after each accepted draft and re-aligns
after a change), or from a small :class:`DraftModel` of the same tokenizer.

:class:`Controller` decides how many tokens to guess: it measures, per sequence, how often
guesses are accepted, and, per context, what verifying ``n`` tokens costs against one;
it guesses the ``k`` that maximises tokens per unit of cost, guesses nothing when no ``k``
pays, and probes again later.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ggrun import llama
from ggrun.errors import InvalidArgument

logger = logging.getLogger(__name__)

MODES = ("off", "lookup", "draft", "auto")
# Draft lengths the controller picks from: a verify decodes the guesses and the pending
# token, and llama.cpp's CPU kernels for repacked quants work on rows in fours, so
# 3, 7, 15 guesses (4, 8, 16 rows) cost less than 4, 8, 16 do.
KS = (0, 1, 2, 3, 5, 7, 11, 15, 23, 31)
MAX_DRAFT = KS[-1]
# What decoding n rows costs against one, before it is measured on this context:
# Qwen2.5-Coder-1.5B Q4_K_M on 2 cores (x86, repacked weights), medians of 5, after 384
# tokens of context (benchmarks/RESULTS.md, "verify cost").
PRIOR_COST = {1: 1.0, 2: 1.56, 3: 2.1, 4: 1.81, 5: 2.46, 8: 3.37, 9: 3.89, 12: 4.56, 16: 4.23,
              17: 5.26, 24: 6.43, 32: 7.9}  # fmt: skip
AUTO_MIN_PROMPT = 64  # auto: look up only in prompts at least this long


@dataclass(frozen=True)
class Draft:
    """A draft model for speculative decoding: an alias or a path (same tokenizer)."""

    model: str


def mode_of(value: Any) -> str:
    """``speculative``: off (None, False), lookup, draft, auto, or a :class:`Draft`."""
    if value in (None, False):
        return "off"
    if isinstance(value, Draft):
        return "draft"
    if isinstance(value, str) and value in MODES:
        return value
    raise InvalidArgument(
        f"speculative must be one of {', '.join(MODES)} or a Draft, not {str(value)[:40]!r}"
    )


# ---------------------------------------------------------------- the cost of a verify


class CostModel:
    """What decoding ``n`` rows costs against one row, as measured on this context."""

    def __init__(self) -> None:
        self._t: dict[int, float] = {}  # EMA of seconds per decode, by rows

    def observe(self, rows: int, seconds: float) -> None:
        old = self._t.get(rows)
        self._t[rows] = seconds if old is None else 0.8 * old + 0.2 * seconds

    def cost(self, rows: int) -> float:
        one = self._t.get(1)
        if one and rows in self._t:
            return max(1.0, self._t[rows] / one)
        return _interpolate(PRIOR_COST, rows)

    @property
    def one(self) -> float | None:
        return self._t.get(1)


def _interpolate(table: dict[int, float], n: int) -> float:
    keys = sorted(table)
    if n <= keys[0]:
        return table[keys[0]]
    for a, b in zip(keys, keys[1:], strict=False):
        if n <= b:
            return table[a] + (table[b] - table[a]) * (n - a) / (b - a)
    return table[keys[-1]] * n / keys[-1]


class Controller:
    """How many tokens one sequence should guess next.

    The chance that a guessed token is accepted is estimated from decayed counts of
    accepted guesses and of guesses that ended in a rejection (the maximum-likelihood
    estimate for a geometric run), so a long run of good guesses is not undone by one
    miss, and old evidence fades.
    """

    DECAY = 0.9

    def __init__(self, costs: CostModel, draft_cost: float = 0.0) -> None:
        self.costs = costs
        self.hits, self.misses = 3.0, 2.0  # a prior: 0.6, optimistic enough to try
        self.draft_cost = draft_cost  # a draft model's cost per guessed token, against one
        self.drafted = 0
        self.accepted = 0

    @property
    def rate(self) -> float:
        return self.hits / (self.hits + self.misses)

    def choose(self, available: int) -> int:
        """The draft length with the most tokens per unit of cost (0 when none pays)."""
        r = min(self.rate, 0.995)
        best_k, best = 0, 1.0
        for k in KS[1:]:
            if k > available:
                break
            tokens = (1 - r ** (k + 1)) / (1 - r)  # the accepted guesses and one more
            gain = tokens / (self.costs.cost(k + 1) + k * self.draft_cost)
            if gain > best * 1.02:  # a clear gain only
                best_k, best = k, gain
        if best_k == 0 and available:
            self.misses *= 0.95  # probe again later: old misses fade while idle
        return best_k

    def record(self, drafted: int, accepted: int) -> None:
        if not drafted:
            return
        self.drafted += drafted
        self.accepted += accepted
        self.hits = self.DECAY * self.hits + accepted
        self.misses = self.DECAY * self.misses + (1 if accepted < drafted else 0)


# ---------------------------------------------------------------- drafters


class Lookup:
    """Guesses from the sequence's own tokens, followed like a copy.

    The source is the latest earlier occurrence of the sequence's last n-gram. While the
    text keeps to it, the copy pointer advances with each token taken. When the text
    departs after a good run (a renamed variable in an edit), the pointer is found again
    near where the copy stopped: where the last token is, or one token on (one token put
    for one); otherwise, and after a short run, anywhere, by n-gram.
    """

    WINDOW = 32  # how far past the divergence the source is searched again
    GOOD_RUN = 8  # tokens a copy must have matched for its divergence to be an edit

    def __init__(self, tokens: Sequence[int], n_min: int = 2, n_max: int = 4) -> None:
        self.n_min, self.n_max = n_min, n_max
        self.hist: list[int] = []
        self.index: dict[tuple[int, ...], int] = {}  # n-gram -> where its continuation is
        self.ptr = -1  # where the copy source continues, while the text keeps to it
        self.anchor = -1  # where the copy stopped, the last time the text departed
        self.run = 0  # tokens the text has kept to the copy since it was aligned
        self._add(tokens)

    def _add(self, tokens: Sequence[int]) -> None:
        h = self.hist
        for t in tokens:
            p = len(h)
            for n in range(self.n_min, self.n_max + 1):  # n-grams that end just before p
                if p >= n:
                    self.index[tuple(h[p - n : p])] = p
            h.append(t)

    def extend(self, tokens: Sequence[int]) -> None:
        """The tokens the sequence took: the pointer follows them, or loses the copy."""
        p = self.ptr
        if p >= 0:
            m = 0
            while m < len(tokens) and p + m < len(self.hist) and self.hist[p + m] == tokens[m]:
                m += 1
            self.run += m
            if m == len(tokens):
                self.ptr = p + m
            else:
                self.ptr = -1
                self.anchor = p + m if self.run >= self.GOOD_RUN else -1
        self._add(tokens)

    def available(self) -> int:
        """How many tokens a guess could hold now (0: nothing to copy from)."""
        if self.ptr < 0:
            self.ptr = self._align()
        return 0 if self.ptr < 0 else min(MAX_DRAFT, len(self.hist) - self.ptr)

    def propose(self, k: int) -> list[int]:
        if self.ptr < 0 or k <= 0:
            return []
        return self.hist[self.ptr : self.ptr + k]

    def _align(self) -> int:
        h = self.hist
        a, self.anchor, self.run = self.anchor, -1, 0  # each divergence is tried once
        if a >= 0:  # near where the copy stopped
            end = min(a + self.WINDOW, len(h) - 1)
            for q in range(a, end):
                if h[q] == h[-1] and q + 1 < len(h) - 1:
                    return q + 1
            if a + 1 < len(h) - 1:
                return a + 1  # one token for one (a renamed variable): the copy goes on
        for n in range(self.n_max, self.n_min - 1, -1):
            if len(h) >= n:
                q = self.index.get(tuple(h[-n:]), -1)
                if 0 <= q < len(h):
                    return q
        return -1


class DraftModel:
    """A small model of the same tokenizer that guesses greedily, with its own KV cache."""

    def __init__(self, weights: llama.Weights, params: llama.ContextParams) -> None:
        self.weights = weights
        self.ctx = llama.Context(weights, params)
        self.batch = llama.Batch(max(params.n_batch, MAX_DRAFT + 1))
        self.cached: list[int] = []  # tokens with cells in the draft's cache (sequence 0)
        self.seconds_per_token = 0.0

    def close(self) -> None:
        self.batch.close()
        self.ctx.close()

    def propose(self, history: list[int], k: int) -> list[int]:
        """Up to ``k`` greedy guesses after ``history`` (the target's tokens so far)."""
        if k <= 0 or len(history) + k >= self.ctx.n_ctx:
            return []
        keep = 0
        for a, b in zip(self.cached, history[:-1], strict=False):
            if a != b:
                break
            keep += 1
        self.ctx.drop(0, keep)
        self.cached = self.cached[:keep]
        t0 = time.perf_counter()
        todo = history[keep:]
        while todo:  # catch up with what the target accepted
            n = min(len(todo), self.batch.capacity)
            self.batch.clear()
            for i, t in enumerate(todo[:n]):
                self.batch.add(t, len(self.cached) + i, 0, i == n - 1)
            self.ctx.decode(self.batch)
            self.cached += todo[:n]
            todo = todo[n:]
        out: list[int] = []
        for _ in range(k):
            token = int(self.ctx.logits(self.batch.n - 1).argmax())
            out.append(token)
            if len(out) == k:
                break
            self.batch.clear()
            self.batch.add(token, len(self.cached), 0, True)
            self.ctx.decode(self.batch)
            self.cached.append(token)
        dt = (time.perf_counter() - t0) / max(k, 1)
        s = self.seconds_per_token
        self.seconds_per_token = dt if not s else 0.8 * s + 0.2 * dt
        return out


def check_vocab(target: llama.Weights, draft: llama.Weights) -> None:
    """Refuse a draft model whose tokens are not the target's (as llama.cpp checks)."""
    where = f"{draft.path.name} cannot draft for {target.path.name}"
    if abs(target.n_vocab - draft.n_vocab) > 128:
        raise InvalidArgument(
            f"{where}: their vocabularies differ ({draft.n_vocab} and {target.n_vocab} tokens)"
        )
    if (target.bos, target.eos, target.add_bos) != (draft.bos, draft.eos, draft.add_bos):
        raise InvalidArgument(f"{where}: their special tokens differ")
    for t in range(5, min(target.n_vocab, draft.n_vocab)):
        if target.token_bytes(t) != draft.token_bytes(t):
            raise InvalidArgument(f"{where}: token {t} differs; the tokenizers are not the same")


class Speculation:
    """One sequence's speculation: where its guesses come from, and how many to make."""

    def __init__(
        self, mode: str, tokens: Sequence[int], costs: CostModel, draft: DraftModel | None
    ) -> None:
        self.lookup = Lookup(tokens) if mode == "lookup" else None
        self.draft = draft if mode == "draft" else None
        self.costs = costs
        self.ctl = Controller(costs)

    def extend(self, tokens: Sequence[int]) -> None:
        """Tokens the sequence took this step (accepted guesses and the new one)."""
        if self.lookup is not None:
            self.lookup.extend(tokens)

    def record(self, drafted: int, accepted: int) -> None:
        """How the last guess went."""
        self.ctl.record(drafted, accepted)

    def guess(self, history: list[int]) -> list[int]:
        """The guesses to verify after ``history`` (which ends with the pending token)."""
        if self.lookup is not None:
            return self.lookup.propose(self.ctl.choose(self.lookup.available()))
        if self.draft is not None:
            one = self.costs.one
            if one and self.draft.seconds_per_token:
                self.ctl.draft_cost = self.draft.seconds_per_token / one
            return self.draft.propose(history, self.ctl.choose(MAX_DRAFT))
        return []
