"""Speculative decoding: guess the next tokens cheaply, let the model verify them at once.

Every token costs one read of all the weights; verifying ``k`` guessed tokens in one
batch costs much less than ``k`` reads. :class:`ggrun.decoder.Decoder` puts a sequence's
guesses (its *drafts*) after its last token, samples the target model at every row, and
keeps the guesses while they equal what it sampled. So the output is exactly what plain
decoding gives: with greedy decoding the same tokens, with sampling the same
distribution (and, with the same seed, the same tokens: one draw per position either way).

Guesses come from:

- a :class:`Lookup` in the prompt and the text so far: a copy pointer that keeps
  following its source after each accepted draft and re-aligns after a change; where
  nothing is being copied, the continuations that most often followed the last n-gram;
- the model's :class:`Memory` of its recent replies, a suffix index: how earlier replies
  went on where they matched the text's end the longest (SuffixDecoding's global tree);
- the request's grammar: the text it forces next (keys, ``": "``, braces, an enum's
  tail, a tool call's envelope), probed by :meth:`ggrun.llama.Sampler.forced` and
  guessed as the tokens the model writes it in; after a forced key, the prompt's text
  after that key's label (``Email: …``), closed where the document's value seems to end
  and chained to the next key (:meth:`Lookup.labelled`);
- a small :class:`DraftModel` of the same tokenizer.

A :class:`Controller` per source (copy, n-grams, memory, grammar, draft) decides how many
tokens to guess: it measures, per sequence, how often that source's guesses are accepted,
and, per context, what verifying ``n`` tokens costs against one; the source and length
with the most tokens per unit of cost win, nothing is guessed when none pays, and a
source left idle is probed again later.
"""

from __future__ import annotations

import bisect
import logging
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
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
AUTO_MIN_PROMPT = 64  # auto: look up only in prompts at least this long; and with a draft
# model, let it guess only when it has at most this many tokens to read first (it would read
# a long prompt again for a short reply: 0.73x on a summary of a pasted text)
# n-gram statistics: a continuation is guessed after an n-gram when it followed it at least
# this many times, and at least this share of the times (llama.cpp's "lax" thresholds for
# the context's own n-grams, common/ngram-cache.cpp)
NGRAM_MIN_COUNT = {1: 2, 2: 2, 3: 1, 4: 1}
NGRAM_MIN_SHARE = {1: 0.66, 2: 0.5, 3: 0.5, 4: 0.5}
RUN_MIN = 4  # tokens a copy must have held for to be judged as a run
# A value copied into a JSON object usually follows its key's name in the document, as a
# label ("Email: ada@example.org", "opened 2010-01-10"): after a grammar forces a key and
# the value's start, the text after that label is guessed (the controller cuts it)
LABEL_BYTES = 160
LABEL_KEYS = 64  # keys a request looks labels up for (each one a scan of the prompt)
# where a value copied from a document seems to end: a full stop, a comma or a semicolon
# before a space, or a line's end; there the value is guessed closed, with what the grammar
# forces after it and the next key's labelled value, for up to CHAIN_FIELDS values at once
_VALUE_END = re.compile(rb"[.,;](?=\s|\Z)|\n")
CHAIN_FIELDS = 4
_KEY_AT_END = re.compile(rb'"([A-Za-z][A-Za-z0-9_ -]{0,47})"[ \t]*:[ \t]*"?\Z')


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
    """What decoding ``n`` rows costs against one row, as measured on this context.

    Each measure of ``n`` rows is taken against the one-row time of the moment (a moving
    average of single rows decoded in the last :attr:`PAIRED` seconds: steps without
    guesses keep it current), and the ratios are averaged, starting from the prior. A
    laptop's or a shared host's speed drifts by a third within minutes: averages of raw
    times from different moments (a 4-row batch in a slow minute, single rows in a fast one)
    priced guesses too high, and since only guessing measures their price again, whole
    replies went without a guess.
    """

    PAIRED = 1.0  # seconds: a single row measured longer ago does not price a batch

    def __init__(self) -> None:
        self._t: dict[int, float] = {}  # moving average of seconds per decode, by rows
        self._r: dict[int, float] = {}  # moving average of the cost against one, by rows
        self._costs: list[float] = []  # cost by rows (index 0 unused), until the next measure
        self._one_at = float("-inf")  # when a single row was last measured

    def observe(self, rows: int, seconds: float) -> None:
        now = time.monotonic()
        recent = now - self._one_at <= self.PAIRED
        if rows == 1:
            self._one_at = now
            if not recent:  # a new moment: its own average
                self._t.pop(1, None)
        self._t[rows] = _ema(self._t.get(rows), seconds)
        if rows > 1 and recent:
            start = self._r.get(rows, _interpolate(PRIOR_COST, rows))
            self._r[rows] = _ema(start, seconds / self._t[1])
        self._costs = []

    def cost(self, rows: int) -> float:
        if not self._costs:
            self._costs = [self._cost(r) for r in range(MAX_DRAFT + 5)]
        if rows < len(self._costs):
            return self._costs[rows]
        return self._cost(rows)

    def _cost(self, rows: int) -> float:
        if rows in self._r:
            return max(1.0, self._r[rows])
        return _interpolate(PRIOR_COST, max(rows, 1))

    def padded(self, rows: int) -> int:
        """The row count to verify ``rows`` at: the cheapest of the next four (llama.cpp's
        repacked kernels compute 4 rows for less than 3; the extra rows are guesses too)."""
        return min(range(rows, rows + 4), key=lambda r: (self.cost(r), r))

    @property
    def one(self) -> float | None:
        """Seconds to decode one row: measured, or else inferred from a measured batch."""
        if 1 in self._t:
            return self._t[1]
        if not self._t:
            return None
        rows = min(self._t)  # while guessing all along, a single row is never decoded
        return self._t[rows] / _interpolate(PRIOR_COST, rows)


def _ema(old: float | None, new: float) -> float:
    """A timing's moving average: the new measure weighs a fifth (the first, all), and
    counts as at most a quarter over the average: a shared machine's timings have a long
    tail (on 2 cores here, one row: median 111 ms, 1 in 20 over 177, the worst 369) that
    would otherwise move the average for steps after."""
    return new if not old else 0.8 * old + 0.2 * min(new, 1.25 * old)


def _interpolate(table: dict[int, float], n: int) -> float:
    keys = sorted(table)
    if n <= keys[0]:
        return table[keys[0]]
    for a, b in zip(keys, keys[1:], strict=False):
        if n <= b:
            return table[a] + (table[b] - table[a]) * (n - a) / (b - a)
    return table[keys[-1]] * n / keys[-1]


PRIOR = (3.0, 2.0)  # accepted guesses and rejections before any evidence: 0.6, enough to try
# a draft model the user asked for mostly agrees with its target (96% in the issue's
# measure): it starts at 0.9 (under auto, at 0.6 like the lookup), and what it measured
# does not fade while it waits (probes keep it current): it is judged on its record
DRAFT_PRIOR = (9.0, 1.0)


class Controller:
    """How many tokens one sequence should guess next.

    The chance that a guessed token is accepted is estimated from decayed counts of
    accepted guesses and of guesses that ended in a rejection (the maximum-likelihood
    estimate for a geometric run), so a long run of good guesses is not undone by one
    miss, and old evidence fades: with each guess, and towards the prior with each step
    without one. Where even the prior does not pay (a costly draft model), a short guess
    is still tried now and then, as often as its waste, if it fails, stays within
    ``PROBE_LOSS`` of plain decoding's time: the estimate then learns from what happens now.
    """

    DECAY = 0.9
    PROBE_LOSS = 0.02  # the most that probing may cost, as a share of plain decoding
    PROBE_K = 3

    def __init__(
        self,
        costs: CostModel,
        draft_cost: float = 0.0,
        prior: tuple[float, float] = PRIOR,
        fade: float = 0.9,
    ) -> None:
        self.costs = costs
        self.prior, self.fade = prior, fade
        self.hits, self.misses = prior
        self.draft_cost = draft_cost  # a draft model's cost per guessed token, against one
        self.catch_up = 0.0  # its cost per token it must read after a step without guesses
        self.drafted = 0
        self.accepted = 0
        self.idle = 0  # steps since the last guess

    @property
    def rate(self) -> float:
        return self.hits / (self.hits + self.misses)

    def choose(self, available: int) -> int:
        """The draft length with the most tokens per unit of cost (0 when none pays)."""
        return self.plan(available)[0]

    def plan(self, available: int, lag: int = 0, floor: float = 0.0) -> tuple[int, float]:
        """The best draft length and its tokens per unit of cost (plain decoding: 1);
        ``lag``: tokens a draft model must read before it guesses; ``floor``: the least
        chance of acceptance to plan with, whatever the record says."""
        read = self.catch_up * max(0, lag - 2)  # a token or two read is part of a guess
        r = min(max(self.rate, floor), 0.995)
        best_k, best = 0, 1.0
        for k in KS[1:]:
            if k > available:
                break
            tokens = (1 - r ** (k + 1)) / (1 - r)  # the accepted guesses and one more
            rows = self.costs.padded(k + 1)
            gain = tokens / (self.costs.cost(rows) + k * self.draft_cost + read)
            if gain > best * 1.02:  # a clear gain only
                best_k, best = k, gain
        if best_k or not available:
            self.idle = 0
            return best_k, best
        # evidence fades towards the prior while idle: text that could not be guessed a
        # while ago may be copied now (a value after a JSON key, a quote)
        f = self.fade  # a step without guesses brings the estimate this much back
        self.hits = f * self.hits + (1 - f) * self.prior[0]
        self.misses = f * self.misses + (1 - f) * self.prior[1]
        self.idle += 1
        k = min(self.PROBE_K, available)
        # a probe that fails; a draft model reads first what it missed while idle (on 2
        # cores a 0.5B draft reads a token in 0.12 of the target's step: it is never probed)
        waste = self.costs.cost(self.costs.padded(k + 1)) + k * self.draft_cost - 1 + read
        if self.idle * self.PROBE_LOSS < waste:
            return 0, 1.0
        self.idle = 0
        return k, 1.0 + 1e-6  # a probe: any source that pays goes first

    def record(self, drafted: int, accepted: int) -> None:
        if not drafted:
            return
        self.drafted += drafted
        self.accepted += accepted
        self.hits = self.DECAY * self.hits + accepted
        self.misses = self.DECAY * self.misses + (1 if accepted < drafted else 0)


# ---------------------------------------------------------------- drafters


def _grams(tokens: Sequence[int], start: int, n_max: int) -> Iterator[tuple[int, tuple[int, ...]]]:
    """For each position ``p`` from ``start``: the n-grams (1 to ``n_max`` tokens) that end
    just before it, whose continuation is ``tokens[p]``."""
    for p in range(max(start, 1), len(tokens)):
        for n in range(1, min(n_max, p) + 1):
            yield p, tuple(tokens[p - n : p])


def _count(
    counts: dict[tuple[int, ...], dict[int, int]], key: tuple[int, ...], t: int, d: int
) -> None:
    seen = counts.setdefault(key, {})
    c = seen.get(t, 0) + d
    if c > 0:
        seen[t] = c
    else:  # forgotten: no empty entries left behind
        seen.pop(t, None)
        if not seen:
            del counts[key]


class Memory:
    """What a model wrote in its recent replies, as a suffix index: a later request whose
    text ends as some of those replies went on guesses how they went on (as the global
    suffix tree of SuffixDecoding, Oliaro et al., NeurIPS 2025, and llama.cpp's
    ``llama-lookup`` dynamic cache).

    A batch extracting the same fields from many documents writes the same keys, in the
    same order, after the same kinds of value; no document holds ``"city": "`` or the key
    after an e-mail address, but the earlier replies do. Every pair of tokens of a reply
    points at where it went on; :meth:`propose` takes the places whose text before matches
    the request's longest (up to :attr:`MAX_MATCH` tokens: the deepest node of the tree),
    and follows them token by token while most of them agree (the most frequent
    continuation), for at most :attr:`SPEC_FACTOR` tokens per token matched (the longer the
    match, the longer the guess, SuffixDecoding's adaptive length; how many of them are
    verified is the :class:`Controller`'s choice, with this machine's measured costs).

    At most :attr:`LIMIT` tokens of replies are kept, the oldest forgotten first. Replies
    are learned by the model's decoders (one model's requests share its memory) from any
    thread; a request with ``memory=False`` neither guesses from it nor teaches it.
    """

    LIMIT = 4096  # tokens of replies remembered (a few MB with the index)
    KEY = 2  # tokens a match starts from
    MAX_MATCH = 32  # a longer match counts as this long
    CANDIDATES = 256  # places looked at for a key (the latest)
    MIN_SHARE = 0.5  # a continuation is followed while more than this share of places agree
    SPEC_FACTOR = 2  # guesses per token matched, at most

    def __init__(self) -> None:
        self.replies: deque[list[int]] = deque()
        self.first = 0  # the number of replies[0] (replies are numbered as learned)
        self.index: dict[tuple[int, ...], deque[tuple[int, int]]] = {}  # key -> (reply, at)
        self.size = 0  # tokens remembered
        self._lock = threading.Lock()

    def learn(self, tokens: Sequence[int]) -> None:
        """Remember a reply (its generated tokens)."""
        reply = list(tokens[-self.LIMIT :])
        if len(reply) <= self.KEY:
            return
        with self._lock:
            n = self.first + len(self.replies)
            self.replies.append(reply)
            self.size += len(reply)
            for at in range(self.KEY, len(reply)):
                self.index.setdefault(tuple(reply[at - self.KEY : at]), deque()).append((n, at))
            while self.size > self.LIMIT:
                self._forget()

    def _forget(self) -> None:
        old = self.replies.popleft()
        self.first += 1
        self.size -= len(old)
        for at in range(self.KEY, len(old)):  # its places are the first of their keys
            key = tuple(old[at - self.KEY : at])
            places = self.index[key]
            places.popleft()
            if not places:
                del self.index[key]

    def clear(self) -> None:
        with self._lock:
            self.index.clear()
            self.first += len(self.replies)
            self.replies.clear()
            self.size = 0

    def propose(self, context: Sequence[int], k: int = MAX_DRAFT) -> list[int]:
        """Up to ``k`` tokens: how the replies went on where their text matched the end
        of ``context`` the longest, while most of those places agree."""
        if k <= 0 or len(context) < self.KEY:
            return []
        with self._lock:
            places = self.index.get(tuple(context[-self.KEY :]))
            if not places:
                return []
            best, alive = 0, []
            for i in range(len(places) - 1, max(-1, len(places) - 1 - self.CANDIDATES), -1):
                n, at = places[i]
                reply = self.replies[n - self.first]
                m = _matched(reply, at, context, self.KEY, self.MAX_MATCH)
                if m > best:
                    best, alive = m, [(reply, at)]
                elif m == best:
                    alive.append((reply, at))
        out: list[int] = []
        for _ in range(min(k, self.SPEC_FACTOR * best)):
            j = len(out)
            seen: dict[int, int] = {}
            for reply, at in alive:
                if at + j < len(reply):
                    seen[reply[at + j]] = seen.get(reply[at + j], 0) + 1
            if not seen:
                break
            t = max(seen, key=seen.__getitem__)
            if seen[t] <= self.MIN_SHARE * len(alive):
                break
            out.append(t)
            alive = [(r, at) for r, at in alive if at + j < len(r) and r[at + j] == t]
        return out


def _matched(reply: list[int], at: int, context: Sequence[int], m: int, most: int) -> int:
    """How many tokens before ``reply[at]`` equal the end of ``context`` (``m`` do)."""
    while m < most and m < at and m < len(context) and reply[at - m - 1] == context[-m - 1]:
        m += 1
    return m


class Lookup:
    """Guesses from the sequence's own tokens: followed like a copy, or by n-gram statistics.

    The copy's source is the latest earlier occurrence of the sequence's last n-gram. While
    the text keeps to it, the copy pointer advances with each token taken. When the text
    departs after a good run (a renamed variable in an edit), the pointer is found again
    near where the copy stopped: where the last token is, or one token on (one token put
    for one); otherwise, and after a short run, anywhere, by n-gram. Where the text has
    gone on differently after the same n-gram before (a JSON key after ``",\n  "``), the
    copy is not trusted for that step.

    Where nothing is being copied, :meth:`ngrams` chains the continuations that most often
    followed the last 1 to 4 tokens (the longest n-gram seen decides), as llama.cpp's
    ``llama-lookup`` does: the ``": "`` after every key of a JSON object, a name met before.
    """

    WINDOW = 32  # how far past the divergence the source is searched again
    GOOD_RUN = 8  # tokens a copy must have matched for its divergence to be an edit
    TEXT_MIN = 3  # bytes a token must have to align a copy by its text alone

    def __init__(
        self,
        tokens: Sequence[int],
        n_min: int = 2,
        n_max: int = 4,
        text_of: Callable[[int], bytes] | None = None,
    ) -> None:
        self.n_min, self.n_max = n_min, n_max
        self.text_of = text_of  # a token's bytes: a copy can then be found by text
        self.text = bytearray()  # the bytes of hist, while text_of is given
        self.ends: list[int] = []  # where each token of hist ends in text
        self.n_prompt = len(tokens)
        self.hist: list[int] = []
        self.index: dict[tuple[int, ...], int] = {}  # n-gram -> where its continuation is
        self.counts: dict[tuple[int, ...], dict[int, int]] = {}  # n-gram -> what followed it
        self.ptr = -1  # where the copy source continues, while the text keeps to it
        self.anchor = -1  # where the copy stopped, the last time the text departed
        self.run = 0  # tokens the text has kept to the copy since it was aligned
        self.labels: dict[bytes, bytes] = {}  # a key -> the text after its label
        self._add(tokens)

    def _add(self, tokens: Sequence[int]) -> None:
        start = len(self.hist)
        self.hist.extend(tokens)
        if self.text_of is not None:
            for t in tokens:
                self.text += self.text_of(t)
                self.ends.append(len(self.text))
        for p, key in _grams(self.hist, start, self.n_max):
            _count(self.counts, key, self.hist[p], 1)
            if len(key) >= self.n_min:
                self.index[key] = p

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
        """How many tokens a copy could guess now (0: nothing to copy, or not trusted)."""
        if self.ptr < 0:
            self.ptr = self._align()
        if self.ptr < 0 or self._ambiguous():
            return 0
        return min(MAX_DRAFT, len(self.hist) - self.ptr)

    def propose(self, k: int) -> list[int]:
        """The copy's next ``k`` tokens."""
        if self.ptr < 0 or k <= 0:
            return []
        return self.hist[self.ptr : self.ptr + k]

    def ngrams(self, k: int = MAX_DRAFT, after: Sequence[int] = ()) -> list[int]:
        """Up to ``k`` tokens, each the clear favourite after the n-grams before it (after
        the text so far, and then ``after``)."""
        ctx = [*self.hist[-self.n_max :], *after][-self.n_max :]
        out: list[int] = []
        while len(out) < k:
            t = self._favourite(ctx)
            if t is None:
                break
            out.append(t)
            ctx = [*ctx[1:], t]
        return out

    def _favourite(self, ctx: list[int]) -> int | None:
        for n in range(min(self.n_max, len(ctx)), 0, -1):
            key = tuple(ctx[-n:])
            seen = self.counts.get(key)
            if seen:
                t = max(seen, key=seen.__getitem__)
                c = seen[t]
                ok = c >= NGRAM_MIN_COUNT[n] and c >= NGRAM_MIN_SHARE[n] * sum(seen.values())
                return t if ok else None
        return None

    def _ambiguous(self) -> bool:
        """The longest n-gram seen was followed by different tokens, none in most cases."""
        h = self.hist
        for n in range(min(self.n_max, len(h)), 0, -1):
            seen = self.counts.get(tuple(h[-n:]))
            if seen:
                total = sum(seen.values())
                return total >= 2 and 2 * max(seen.values()) < total
        return False

    def labelled(self, after: bytes) -> bytes:
        """The prompt's text after the label of the JSON key that the text so far, then
        ``after``, ends on as a value's start (``ada@example.org. Phone: +44…`` after
        ``"email": "`` where the document says ``Email: ada@example.org. Phone: +44…``),
        to its line's end; empty where no key ends it, or the prompt has no such label."""
        m = _KEY_AT_END.search((bytes(self.text[-64:]) + after)[-64:])
        if m is None or not self.n_prompt or len(self.ends) < self.n_prompt:
            return b""
        key = m.group(1)
        if key not in self.labels:
            if len(self.labels) >= LABEL_KEYS:  # free-form JSON with keys by the hundred
                return b""
            self.labels[key] = _label(self.text, self.ends[self.n_prompt - 1], key)
        return self.labels[key]

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
        return self._align_text()

    def _align_text(self) -> int:
        """Where in the prompt the last token's text last ended a longer token (a value
        the model copies from a document, tokenized otherwise there: ``Ada`` after a
        quote, against `` Ada``): the token after. -1 if none, or if the token is too
        short to tell."""
        if len(self.ends) <= self.n_prompt or not self.n_prompt:
            return -1
        piece = bytes(self.text[self.ends[-2] :])
        if len(piece.strip()) < self.TEXT_MIN:
            return -1
        end = self.ends[self.n_prompt - 1]
        for _ in range(8):  # the latest few occurrences
            at = self.text.rfind(piece, 0, end)
            if at < 0:
                return -1
            q = bisect.bisect_left(self.ends, at + len(piece))
            s = bisect.bisect_left(self.ends, at)
            inside = at > 0 and not (s < len(self.ends) and self.ends[s] == at)
            if inside and q < len(self.ends) - 2 and self.ends[q] == at + len(piece):
                return q + 1  # the end of a longer token: the n-grams could not see it
            end = at + len(piece) - 1
        return -1


def _label(text: bytearray, end: int, key: bytes) -> bytes:
    """The text after ``key`` as a label in ``text[:end]`` (the prompt): its words in any
    case, joined by a space, ``_`` or ``-`` or nothing; then ``:`` or ``=`` (the first such
    label), or else a space (the first). Empty if none. Two scans at most, no copy."""
    words = [re.escape(w) for w in re.split(rb"[ _-]+", key) if w]
    if not words:
        return b""
    name = rb"(?<![A-Za-z0-9_])" + rb"[ _-]?".join(words) + rb"(?![A-Za-z0-9_])"
    for sep in (rb"[ \t]*[:=][ \t]*", rb"[ \t]+"):
        m = re.compile(name + sep, re.IGNORECASE).search(text, 0, end)
        if m is not None:
            return _line(text, m.end(), end)
    return b""


def _line(text: bytearray, at: int, end: int) -> bytes:
    """``text`` from ``at`` to its line's end, ``end`` or :data:`LABEL_BYTES` on."""
    stop = min(end, at + LABEL_BYTES)
    nl = text.find(b"\n", at, stop)
    return bytes(text[at : nl if nl >= 0 else stop])


class DraftModel:
    """A small model of the same tokenizer that guesses greedily, with its own KV cache."""

    def __init__(self, weights: llama.Weights, params: llama.ContextParams) -> None:
        self.weights = weights
        self.ctx = llama.Context(weights, params)
        self.batch = llama.Batch(self.ctx.n_batch)  # llama.cpp aborts on a larger batch
        self.cached: list[int] = []  # tokens with cells in the draft's cache (sequence 0)
        self.seconds_per_token = 0.0  # a guess's decode
        self.seconds_per_read = 0.0  # a token read in a batch, to catch up with the target

    def close(self) -> None:
        self.batch.close()
        self.ctx.close()

    def _kept(self, tokens: Sequence[int]) -> int:
        """How many of ``tokens``, from the start, the draft's cache holds."""
        lo, hi = 0, min(len(self.cached), len(tokens))
        if self.cached[:hi] == list(tokens[:hi]):
            return hi
        while lo < hi:  # a binary search on slices: comparisons in C
            mid = (lo + hi + 1) // 2
            if self.cached[:mid] == list(tokens[:mid]):
                lo = mid
            else:
                hi = mid - 1
        return lo

    def behind(self, history: Sequence[int]) -> int:
        """How many of ``history``'s tokens the draft would read before its first guess."""
        return len(history) - self._kept(history)

    def read(self, tokens: Sequence[int]) -> int:
        """Bring the cache to ``tokens`` (the last one decoded again if need be, for its
        logits); return how many tokens were decoded."""
        keep = min(self._kept(tokens), len(tokens) - 1)
        self.cached = self.cached[:keep]  # first: an interrupt leaves no cell it lists gone
        self.ctx.drop(0, keep)
        todo = list(tokens[keep:])
        t0 = time.perf_counter()
        while todo:
            n = min(len(todo), self.batch.capacity)
            self.batch.clear()
            for i, t in enumerate(todo[:n]):
                self.batch.add(t, len(self.cached) + i, 0, i == n - 1)
            self.ctx.decode(self.batch)
            self.cached += todo[:n]
            todo = todo[n:]
        n = len(tokens) - keep
        if n > 2:
            self.seconds_per_read = _ema(self.seconds_per_read, (time.perf_counter() - t0) / n)
        return n

    def propose(self, history: list[int], k: int) -> list[int]:
        """Up to ``k`` greedy guesses after ``history`` (the target's tokens so far)."""
        if k <= 0 or len(history) + k >= self.ctx.n_ctx:
            return []
        t0 = time.perf_counter()
        # the pending token (and one more) is a decode like the guesses'; a draft left
        # behind reads in a batch: time only its guesses then
        small = self.read(history) <= 2
        if not small:
            t0 = time.perf_counter()
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
        decodes = k if small else k - 1
        if decodes:
            dt = (time.perf_counter() - t0) / decodes
            self.seconds_per_token = _ema(self.seconds_per_token, dt)
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
    """One sequence's speculation: where its guesses come from, and how many to make.

    ``lookup`` guesses from the copy and the n-grams, ``draft`` from the draft model, and
    ``auto`` (with a draft model) from all three, the draft only where it has little to
    read first (:data:`AUTO_MIN_PROMPT`). Each guess comes from the source whose controller
    expects the most tokens per unit of cost.
    """

    def __init__(
        self,
        mode: str,
        tokens: Sequence[int],
        costs: CostModel,
        draft: DraftModel | None,
        memory: Memory | None = None,
        text_of: Callable[[int], bytes] | None = None,
        tokenize: Callable[[str], list[int]] | None = None,
        force: Callable[[str], str | None] | None = None,
    ) -> None:
        self.lookup = Lookup(tokens, text_of=text_of) if mode in ("lookup", "auto") else None
        self.tokenize = tokenize  # a value found after its label is guessed in its tokens
        self.force = force  # the grammar's forced text, had some text come next
        self.expect = b""  # the text the reply should go on with (a labelled value, ...)
        self._open = 0  # where in it the part not yet closed by the chain starts
        self.memory = memory if self.lookup is not None else None  # earlier replies
        self.draft = draft if mode in ("draft", "auto") else None
        if mode == "auto" and draft is not None and draft.behind(tokens) >= AUTO_MIN_PROMPT:
            self.draft = None
        self.costs = costs
        self.controllers = {
            "copy": Controller(costs),
            "run": Controller(costs, prior=DRAFT_PRIOR),
            "ngram": Controller(costs),
            "memory": Controller(costs),
            "label": Controller(costs),
            # asked for, a draft starts trusted; under auto it must earn its place
            "draft": Controller(costs, prior=DRAFT_PRIOR if mode == "draft" else PRIOR, fade=1.0),
            # the text a grammar forces is what the model writes, bar its tokenization
            "grammar": Controller(costs, prior=DRAFT_PRIOR, fade=1.0),
        }
        self.source = ""  # where the last guess came from
        self.guessed = 0  # how many tokens it guessed (before padding)
        self.forced = 0  # of those, the first ones its grammar forced

    def begin(self, prompt: Sequence[int]) -> None:
        """The prompt is read: a draft model that will guess reads it now too, with the
        prompt's time (as llama.cpp's speculative examples do), not inside generation."""
        if self.draft is not None and len(prompt) + 1 < self.draft.ctx.n_ctx:
            self.draft.read(prompt)

    def extend(self, tokens: Sequence[int]) -> None:
        """Tokens the sequence took this step (accepted guesses and the new one)."""
        if self.lookup is None:
            return
        n = len(self.lookup.text)
        self.lookup.extend(tokens)
        if self.expect:  # set only where the lookup keeps the text (text_of)
            text = bytes(self.lookup.text[n:])
            self.expect = self.expect[len(text) :] if self.expect.startswith(text) else b""
            self._open = max(0, self._open - len(text)) if self.expect else 0

    def record(self, drafted: int, accepted: int) -> None:
        """How the last guess went: of its :attr:`guessed` tokens (not the padding)."""
        f = min(self.forced, drafted)
        if f:  # the grammar's part, then what came after it, if the model got there
            self.controllers["grammar"].record(f, min(accepted, f))
            if accepted < f or drafted == f:
                return
            drafted, accepted = drafted - f, accepted - f
        if self.source:
            self.controllers[self.source].record(drafted, accepted)

    def guess(
        self,
        history: list[int],
        room: int = MAX_DRAFT,
        forced: Sequence[int] = (),
        admit: Callable[[Sequence[int]], int] | None = None,
    ) -> list[int]:
        """At most ``room`` guesses to verify after ``history`` (which ends with the
        pending token); ``forced``: the tokens of the text the request's grammar lets
        come next (:meth:`ggrun.llama.Sampler.forced`), guessed first unless another
        source's guess already starts with them; ``admit``: how many first tokens of a
        guess could follow at all (:meth:`ggrun.llama.Sampler.admitted`): the rest is
        never guessed (rows may still be padded to the cheaper count)."""
        room = min(room, MAX_DRAFT)
        self.forced = 0
        forced = list(forced[:room])
        # a labelled value (not in the middle of a character the model has begun)
        if (
            self.expect
            and not forced
            and self.tokenize is not None
            and self.expect[0] & 0xC0 != 0x80
        ):
            closed, rest = self._chain(self.expect[: self._open], self.expect[self._open :])
            self.expect, self._open = closed + rest, len(closed)
            tokens = self.tokenize(self.expect.decode("utf-8", "ignore"))[:room]
            if k := self.controllers["label"].plan(len(tokens))[0]:
                self.source, self.guessed = "label", k
                if guesses := self._pad(tokens[:k], room, admit):
                    return guesses
        guesses = self._guess(history, room, admit)
        if not forced or guesses[: len(forced)] == forced:
            return guesses
        ctl = self.controllers["grammar"]
        k = len(forced) if ctl.rate >= 0.75 else ctl.plan(len(forced))[0]  # all, if it holds
        if not k:
            return guesses
        whole = forced[:k]
        source, forced, more = self._after(history, whole, room)
        k_more = self.controllers[source].plan(len(more))[0] if more else 0
        if not k_more:  # the forced text alone, as the grammar has it
            forced = whole
        k = len(forced)
        self.source, self.forced = source, k
        self.guessed = k + k_more
        return self._pad(forced + more[:k_more], room, admit)

    def _after(
        self, history: list[int], forced: list[int], room: int
    ) -> tuple[str, list[int], list[int]]:
        """What comes after a grammar's forced text, within ``room`` with it: a JSON
        value's text after its key's label in the prompt (:meth:`Lookup.labelled`), or
        what earlier replies did there, or else what usually followed its last tokens
        here. With the forced tokens again: fewer where the value's first token takes in
        the forced text's end (`` "+`` for ``"phone": "+44``), as the model writes them."""
        lookup, room = self.lookup, room - len(forced)
        if room <= 0 or lookup is None:
            return "ngram", forced, []
        if self.tokenize is not None and lookup.text_of is not None:
            text = b"".join(map(lookup.text_of, forced))
            if value := lookup.labelled(text):
                closed, rest = self._chain(text, value)
                self.expect, self._open = closed + rest, len(closed)
                tokens = self.tokenize(self.expect.decode("utf-8", "ignore"))
                n = 0
                while n < min(len(tokens), len(forced)) and tokens[n] == forced[n]:
                    n += 1
                if n and len(tokens) > n:
                    return "label", forced[:n], tokens[n : n + room + len(forced) - n]
        history = history + forced
        if self.memory is not None and (tokens := self.memory.propose(history, room)):
            return "memory", forced, tokens
        return "ngram", forced, lookup.ngrams(room, after=history[-lookup.n_max :])

    def _chain(self, text: bytes, value: bytes) -> tuple[bytes, bytes]:
        """``text``, then ``value`` (the document's text after a label) to where the value
        seems to end (:data:`_VALUE_END`), its closing quote and what the grammar forces
        after it (``", "city": "``), then the next key's labelled value, and so on: that
        text, and the document's text after it (to the line's end) where no value ends or
        the grammar stops."""
        lookup = self.lookup
        assert lookup is not None
        for _ in range(CHAIN_FIELDS):
            m = _VALUE_END.search(value)
            if m is None or self.force is None:
                break
            closed = self.force((text + value[: m.start()] + b'"').decode("utf-8", "ignore"))
            if closed is None:  # not in a string, or its end not allowed here
                break
            text += value[: m.start()] + b'"' + closed.encode()
            value = lookup.labelled(text)
        return text, value

    def _guess(
        self, history: list[int], room: int, admit: Callable[[Sequence[int]], int] | None
    ) -> list[int]:
        best: tuple[float, int, str, list[int]] = (1.0, 0, "", [])
        if self.lookup is not None:
            n = min(self.lookup.available(), room)
            # a copy that has held for a while goes on (a long value, a function's body):
            # judged apart from fresh ones, which often stop at once (a value's end)
            run = self.lookup.run
            copy = "run" if run >= RUN_MIN else "copy"
            source, tokens = (copy, self.lookup.propose(n)) if n else ("ngram", [])
            if not n:
                tokens = self.lookup.ngrams(room)
            if tokens:  # a run that held for r tokens goes on with (r + 1) / (r + 2) at least
                floor = (run + 1) / (run + 2) if source == "run" else 0.0
                k, gain = self.controllers[source].plan(len(tokens), floor=floor)
                if k and gain > best[0]:
                    best = (gain, k, source, tokens)
        if self.memory is not None and (tokens := self.memory.propose(history, room)):
            k, gain = self.controllers["memory"].plan(len(tokens))
            if k and gain > best[0]:
                best = (gain, k, "memory", tokens)
        if self.draft is not None:
            ctl, one = self.controllers["draft"], self.costs.one
            if one and self.draft.seconds_per_token:
                ctl.draft_cost = self.draft.seconds_per_token / one
                ctl.catch_up = self.draft.seconds_per_read / one
            k, gain = ctl.plan(room, self.draft.behind(history))
            if k and gain > best[0]:
                best = (gain, k, "draft", [])
        _, k, self.source, tokens = best
        if self.source == "draft":
            assert self.draft is not None
            tokens = self.draft.propose(history, k)
        self.guessed = len(tokens[:k])
        return self._pad(tokens[:k], room, admit)

    def _pad(
        self, guesses: list[int], room: int, admit: Callable[[Sequence[int]], int] | None
    ) -> list[int]:
        """Guesses up to the cheapest row count: what the n-grams say comes next, or else
        the last guess again (verified like the others, so never wrong, rarely right)."""
        if admit is not None and guesses:
            guesses = guesses[: admit(guesses)]
            self.guessed = min(self.guessed, len(guesses))
            self.forced = min(self.forced, len(guesses))
        if not guesses:
            return guesses
        extra = min(self.costs.padded(len(guesses) + 1) - 1, room) - len(guesses)
        if extra <= 0:
            return guesses
        more = self.lookup.ngrams(extra, after=guesses) if self.lookup is not None else []
        return guesses + more + [guesses[-1]] * (extra - len(more))
