"""Accuracy on the user's own labelled examples, and which model variant to pick by it.

An eval file is JSON Lines, one ``{"input": "...", "expected": ...}`` per line. A variant
(one model file with one KV cache type) runs a task on each input, as ``ggrun generate
--task`` does, and each answer is scored as ``match`` says: ``exact`` (the answer, trimmed,
equals ``expected``), ``contains`` (``expected`` appears in the answer, ignoring case) or
``json`` (``expected`` is an object; the answer's field of each of its keys must equal it,
strings compared trimmed: an example counts when every field does, and each field gets a
score of its own). Accuracy comes with a 95% Wilson interval. :func:`recommend` picks the
smallest (or fastest) variant whose accuracy is within ``tolerance`` points of the best,
and calls the evidence inconclusive when a cheaper variant it passed over for being worse
has an interval overlapping the best's, naming about how many examples would tell them
apart.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ggrun.errors import GgrunError, InvalidArgument
from ggrun.files import read_bytes

logger = logging.getLogger(__name__)

MATCHES = ("exact", "contains", "json")
PREFER = ("size", "speed")
MAX_EVAL_BYTES = 64 << 20
MAX_EXAMPLES = 100_000
Z95 = 1.959963984540054  # the normal quantile of a two-sided 95% interval
MAX_NEEDED = 10_000_000  # past this, "more examples" is no answer


@dataclass(frozen=True)
class Example:
    line: int
    input: str
    expected: Any


@dataclass(frozen=True)
class EvalConfig:
    """What ``ggrun bench --task T --eval FILE`` asks for."""

    task: str  # a task preset's name or a task file
    file: Path
    match: str | None = None  # None: json for a JSON task with object answers, else exact
    tolerance: float = 2.0  # accuracy points
    prefer: str = "size"
    shown: int = 3  # wrong examples shown per variant

    def __post_init__(self) -> None:
        if self.match is not None and self.match not in MATCHES:
            raise InvalidArgument(
                f"--match must be one of {', '.join(MATCHES)}, not {self.match!r}"
            )
        if self.prefer not in PREFER:
            raise InvalidArgument(f"--prefer must be size or speed, not {self.prefer!r}")
        if not 0 <= self.tolerance <= 100:
            raise InvalidArgument("--tolerance is in accuracy points, from 0 to 100")


# ---------------------------------------------------------------- the eval file


def read_examples(path: Path) -> list[Example]:
    """The examples of an eval file; any bad line is one error naming it."""
    raw = read_bytes(path, what="eval", limit=MAX_EVAL_BYTES)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidArgument(f"{path}: not UTF-8 text (at byte {e.start})") from None
    out: list[Example] = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        at = f"{path}, line {n}"
        try:
            item = json.loads(line)
        except (ValueError, RecursionError) as e:
            why = "nested too deeply" if isinstance(e, RecursionError) else str(e)[:100]
            raise InvalidArgument(f"{at}: not valid JSON ({why})") from None
        if not isinstance(item, dict):
            raise InvalidArgument(f"{at}: expected an object with 'input' and 'expected'")
        for key in ("input", "expected"):
            if key not in item:
                raise InvalidArgument(f"{at}: no {key!r}")
        if not isinstance(item["input"], str) or not item["input"].strip():
            raise InvalidArgument(f"{at}: 'input' must be a non-empty string")
        out.append(Example(n, item["input"], item["expected"]))
        if len(out) > MAX_EXAMPLES:
            raise InvalidArgument(f"{path}: more than {MAX_EXAMPLES} examples")
    if not out:
        raise InvalidArgument(f"{path}: no examples")
    return out


def choose_match(match: str | None, json_task: bool, examples: Sequence[Example]) -> str:
    """The match mode, checked against every example's ``expected``."""
    if match is None:
        objects = all(isinstance(e.expected, dict) for e in examples)
        match = "json" if json_task and objects else "exact"
    for e in examples:
        if match == "json" and not isinstance(e.expected, dict):
            raise InvalidArgument(f"line {e.line}: with --match json, 'expected' must be an object")
        if match != "json" and not _scalar(e.expected):
            raise InvalidArgument(
                f"line {e.line}: with --match {match}, 'expected' must be a string or a number"
                + (" (an object needs --match json)" if isinstance(e.expected, dict) else "")
            )
    return match


def _scalar(x: Any) -> bool:
    return isinstance(x, (str, int, float)) and not isinstance(x, bool)


# ---------------------------------------------------------------- scoring


@dataclass(frozen=True)
class Score:
    correct: bool
    fields: tuple[tuple[str, bool], ...] = ()  # json: each expected key's verdict


def _same(got: Any, want: Any) -> bool:
    if isinstance(got, str) and isinstance(want, str):
        return got.strip() == want.strip()
    if isinstance(got, bool) or isinstance(want, bool):
        return got is want
    return bool(got == want)


def score(answer: str, expected: Any, match: str, data: Any = None) -> Score:
    """One answer against its label. ``data`` is the parsed answer of a JSON task."""
    if match == "json":
        if not isinstance(data, dict):
            try:
                data = json.loads(answer)
            except (ValueError, RecursionError):
                data = None
        got = data if isinstance(data, dict) else {}
        fields = tuple((k, k in got and _same(got[k], v)) for k, v in expected.items())
        return Score(all(ok for _, ok in fields), fields)
    want = expected if isinstance(expected, str) else json.dumps(expected)
    if match == "contains":
        return Score(want.strip().casefold() in answer.casefold())
    return Score(answer.strip() == want.strip())


def wilson(k: float, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of ``k`` successes in ``n`` trials."""
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    lo = 0.0 if k <= 0 else max(0.0, mid - half)
    return lo, 1.0 if k >= n else min(1.0, mid + half)


def examples_to_tell(p_low: float, p_high: float) -> int | None:
    """Examples at which accuracies ``p_low < p_high`` would have disjoint Wilson
    intervals; None when they are equal or it would take more than MAX_NEEDED."""
    if p_high - p_low <= 1e-12:
        return None

    def apart(n: int) -> bool:
        return wilson(p_low * n, n)[1] < wilson(p_high * n, n)[0]

    hi = 1
    while not apart(hi):
        hi *= 2
        if hi > MAX_NEEDED:
            return None
    lo = hi // 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if apart(mid) else (mid, hi)
    return hi


# ---------------------------------------------------------------- one variant's run


@dataclass
class Answer:
    line: int
    text: str
    correct: bool
    seconds: float
    tokens: int = 0
    fields: tuple[tuple[str, bool], ...] = ()


@dataclass
class Outcome:
    """One variant's answers and their tally; ``lost``: the examples it got wrong that
    the reference variant got right."""

    match: str
    answers: list[Answer] = field(default_factory=list)
    lost: list[dict[str, Any]] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.answers)

    @property
    def correct(self) -> int:
        return sum(a.correct for a in self.answers)

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else 0.0

    @property
    def ci(self) -> tuple[float, float]:
        return wilson(self.correct, self.n)

    def field_accuracy(self) -> dict[str, float]:
        seen: dict[str, list[bool]] = {}
        for a in self.answers:
            for k, ok in a.fields:
                seen.setdefault(k, []).append(ok)
        return {k: sum(v) / len(v) for k, v in seen.items()}

    @property
    def seconds_per_example(self) -> float:
        return sum(a.seconds for a in self.answers) / self.n if self.n else 0.0

    @property
    def tokens_per_second(self) -> float:
        s = sum(a.seconds for a in self.answers)
        return sum(a.tokens for a in self.answers) / s if s > 0 else 0.0


def is_json_task(task: Any) -> bool:
    return task.schema is not None or task.format == "json"


def run(
    path: Path,
    cache_type: str,
    task: Any,
    examples: Sequence[Example],
    match: str,
    *,
    threads: int | None = None,
    device: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> Outcome:
    """Run ``task`` on every example with one variant, loaded as ``ggrun generate`` does."""
    from ggrun.engine import load
    from ggrun.request import Request

    out = Outcome(match)
    with load(path, n_threads=threads, device=device, cache_type=cache_type) as m:
        for i, ex in enumerate(examples):
            if progress:
                progress(f"eval {path.name} [{cache_type}]: example {i + 1}/{len(examples)}")
            t0 = time.perf_counter()
            try:
                res = m.complete(Request.build(task=task, prompt=ex.input))
            except GgrunError as e:  # a cut or invalid answer: wrong, and said why
                out.answers.append(
                    Answer(ex.line, f"(error: {e})", False, time.perf_counter() - t0)
                )
                continue
            dt = time.perf_counter() - t0
            text = res.text.strip()
            s = score(text, ex.expected, match, res.data) if res.error is None else Score(False)
            if res.error is not None:
                text = f"(error: {res.error})"
            out.answers.append(
                Answer(ex.line, text, s.correct, dt, res.completion_tokens, s.fields)
            )
    return out


def regressions(ref: Outcome, other: Outcome, examples: Sequence[Example]) -> list[dict[str, Any]]:
    """The examples ``other`` got wrong that ``ref`` got right, in file order."""
    out = []
    for ex, a, b in zip(examples, ref.answers, other.answers, strict=True):
        if a.correct and not b.correct:
            out.append({"line": ex.line, "input": ex.input, "expected": ex.expected, "got": b.text})
    return out


@dataclass(frozen=True)
class Plan:
    """An eval, checked before anything runs: its task, examples and match mode."""

    config: EvalConfig
    task: Any  # ggrun.tasks.Task
    examples: tuple[Example, ...]
    match: str

    @classmethod
    def of(cls, ev: EvalConfig) -> Plan:
        from ggrun.tasks import load_task

        task = load_task(ev.task)
        examples = read_examples(ev.file)
        return cls(ev, task, tuple(examples), choose_match(ev.match, is_json_task(task), examples))

    def run_all(
        self,
        variants: Sequence[tuple[Path, str]],
        reference: tuple[Path, str],
        *,
        threads: int | None = None,
        device: str | None = None,
        progress: Callable[[str], None] | None = None,
    ) -> list[Outcome]:
        """Each variant (a model file, a KV cache type) on every example, one at a time;
        each outcome knows what it lost against ``reference`` (when it is one of them)."""
        outs = [
            run(
                p,
                c,
                self.task,
                self.examples,
                self.match,
                threads=threads,
                device=device,
                progress=progress,
            )  # fmt: skip
            for p, c in variants
        ]
        if reference in variants:
            ref = outs[list(variants).index(reference)]
            for v, o in zip(variants, outs, strict=True):
                if v != reference:
                    o.lost = regressions(ref, o, self.examples)
        return outs


# ---------------------------------------------------------------- the recommendation


@dataclass(frozen=True)
class Candidate:
    label: str
    correct: int
    n: int
    size_bytes: int
    speed: float = 0.0  # tokens/s, higher is faster (0: not measured)
    eligible: bool = True  # False: its KV cache type failed the sanity check

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else 0.0


@dataclass(frozen=True)
class Recommendation:
    index: int | None  # into the candidates; None: nothing can be recommended
    line: str
    conclusive: bool = True
    more_examples: int | None = None  # how many more examples would tell the close ones apart


def recommend(
    cands: Sequence[Candidate], tolerance: float = 2.0, prefer: str = "size"
) -> Recommendation:
    """The smallest (``prefer="speed"``: fastest) eligible variant within ``tolerance``
    points of the best eligible accuracy, with the evidence for it."""
    elig = [i for i, c in enumerate(cands) if c.eligible]
    if not elig:
        return Recommendation(None, "nothing to recommend: every variant failed the KV check")

    def key(i: int) -> tuple[float, float]:
        c = cands[i]
        return (c.size_bytes, -c.speed) if prefer == "size" else (-c.speed, c.size_bytes)

    best_acc = max(cands[i].accuracy for i in elig)
    best = min((i for i in elig if cands[i].accuracy == best_acc), key=key)
    within = [i for i in elig if cands[i].accuracy >= best_acc - tolerance / 100 - 1e-9]
    pick = min(within, key=key)
    c, b = cands[pick], cands[best]
    what = "smallest" if prefer == "size" else "fastest"
    if pick == best:
        line = f"{c.label}: {_pct(c)}, the best accuracy"
    else:
        line = f"{c.label}: {_pct(c)}, the {what} within {tolerance:g} points of the best"
        line += f" ({b.label}, {_pct(b)})"
    passed = [i for i in elig if i not in within and key(i) < key(pick)]
    unclear = [i for i in passed if wilson(cands[i].correct, cands[i].n)[1] >= _ci(b)[0]]
    if not unclear:
        return Recommendation(pick, line + ": recommended")
    need = [examples_to_tell(cands[i].accuracy, b.accuracy) for i in unclear]
    worst = max(unclear, key=lambda i: need[unclear.index(i)] or MAX_NEEDED + 1)
    n_need = need[unclear.index(worst)]
    n = max(cands[i].n for i in elig)
    line += (
        f": recommended, but too close to tell {cands[worst].label} ({_pct(cands[worst])}) "
        f"from {b.label}: their 95% intervals overlap"
    )
    more = None if n_need is None else max(0, n_need - n)
    if more is not None:
        line += f"; about {more} more examples ({n_need} in all) would tell"
    return Recommendation(pick, line, conclusive=False, more_examples=more)


def _ci(c: Candidate) -> tuple[float, float]:
    return wilson(c.correct, c.n)


def _pct(c: Candidate) -> str:
    lo, hi = _ci(c)
    return f"{100 * c.accuracy:.1f}% [{100 * lo:.0f}-{100 * hi:.0f}]"
