"""The APIs clients speak, one module each, behind one small protocol.

An :class:`Adapter` knows one wire format and nothing of HTTP or models:

- :meth:`Adapter.parse` turns a request body into a :class:`Call`: the keywords of the
  one :class:`~ggrun.request.Request` (checked there), the model it names, and whether it
  streams. Every field is checked: a wrong type, a value out of range or a field ggrun
  does not implement is an :class:`~ggrun.errors.ApiError` that names it.
- :meth:`Adapter.reply` starts the rendering of one answer: a :class:`Reply` turns the
  stream's chunks and its final result into :class:`Event` objects (streaming) or into
  one body; a call of several choices (``Call.n``) gets a reply that is also a
  :class:`Choices`.
- :meth:`Adapter.error` renders an :class:`~ggrun.errors.ApiError` in the API's shape.
- :attr:`Adapter.framing` names how events travel: ``"sse"`` (server-sent events, with
  an ``event:`` name where the API has one) or ``"ndjson"`` (one JSON object a line).

:mod:`ggrun.server` picks the adapter by route and runs every one through the same path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from ggrun.errors import ApiError
from ggrun.textstream import Chunk, Result

if TYPE_CHECKING:
    from ggrun.runinfo import RunInfo

Framing = Literal["sse", "ndjson"]
# ggrun's own field in every chat API: true lets the model repeat a tool call that the
# conversation has already answered (polling tools); see ggrun.redraw
REPEATS = "allow_repeated_calls"


@dataclass(frozen=True)
class Event:
    """One streamed message: a JSON object (or a bare string such as ``[DONE]``)."""

    data: Mapping[str, Any] | str
    name: str | None = None  # the SSE ``event:`` field


@dataclass(frozen=True)
class Call:
    """What a body asks for, read by an adapter."""

    options: Mapping[str, Any]  # Request.build keywords; max_tokens None: the room left
    model: str | None = None  # None or "": the server's default model
    stream: bool = False
    keep_alive: float | None = None  # seconds to keep the model loaded (ollama)
    load_only: bool = False  # nothing to generate: load (or, keep_alive 0, unload) the model
    context: int | None = None  # the most tokens of context it may use (ollama's num_ctx)
    wire: Mapping[str, Any] = field(default_factory=dict)  # the adapter's own settings
    headers: Mapping[str, str] = field(default_factory=dict)  # HTTP headers for the answer
    allow_repeated_calls: bool = False  # a tool call already answered may come again
    n: int = 1  # choices to draw, each with its own seed (OpenAI's n; a Choices reply)


@dataclass(frozen=True)
class Meta:
    """What the server knows of a run when its answer starts."""

    model: str  # the model's name
    created: int  # Unix time
    t0: float  # perf_counter at the start of the request
    load_s: float = 0.0  # seconds spent loading the model for it
    run: RunInfo | None = None  # the run's manifest (None: nothing runs)


class Reply(Protocol):
    """The rendering of one answer (it may keep state: indices, ids, what was sent)."""

    def head(self) -> list[Event]:
        """Events before the first chunk."""
        ...

    def chunk(self, c: Chunk) -> list[Event]:
        """Events for one chunk of the stream (often none, or one)."""
        ...

    def end(self, r: Result) -> list[Event]:
        """The last events: the finish, usage, or the error when ``r.error`` is set."""
        ...

    def whole(self, r: Result) -> dict[str, Any]:
        """The answer as one body (not streaming; ``r`` has no error)."""
        ...


@runtime_checkable
class Choices(Protocol):
    """A reply of several choices of one call (``Call.n``, OpenAI's ``n``): each choice's
    chunks and finish carry its index ``i``; the usage (over every choice) and the end of
    the stream come once, after the last choice ends. An adapter that reads ``n`` from a
    body answers with a reply that is one."""

    def chunk_of(self, i: int, c: Chunk) -> list[Event]:
        """Events for one chunk of choice ``i``."""
        ...

    def end_of(self, i: int, r: Result) -> list[Event]:
        """Choice ``i``'s finish (the error when ``r.error`` is set; the stream ends)."""
        ...

    def whole_of(self, results: Sequence[Result]) -> dict[str, Any]:
        """The answer as one body: choice ``i`` is ``results[i]`` (none has an error)."""
        ...


class Adapter(Protocol):
    """One API's wire format (see the module docstring)."""

    framing: Framing

    def parse(self, body: Mapping[str, Any]) -> Call: ...

    def reply(self, call: Call, meta: Meta) -> Reply: ...

    def error(self, e: ApiError) -> dict[str, Any]: ...


@dataclass(frozen=True)
class EmbedCall:
    """What an embeddings body asks for: texts to embed with a model."""

    texts: tuple[str, ...]
    model: str | None = None
    keep_alive: float | None = None
    wire: Mapping[str, Any] = field(default_factory=dict)  # the adapter's own settings


class EmbedAdapter(Protocol):
    """One API's embeddings: a body to an :class:`EmbedCall`, vectors to a body."""

    def parse(self, body: Mapping[str, Any]) -> EmbedCall: ...

    def render(
        self, call: EmbedCall, vectors: list[list[float]], n_tokens: int, meta: Meta
    ) -> dict[str, Any]: ...

    def error(self, e: ApiError) -> dict[str, Any]: ...


MAX_EMBED_TEXTS = 2048  # texts in one embeddings request (OpenAI's limit)


def texts(value: Any, name: str) -> tuple[str, ...]:
    """An embeddings input: a string or a non-empty list of strings."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or len(items) > MAX_EMBED_TEXTS:
        raise bad(f"'{name}' must be a string or a list of 1 to {MAX_EMBED_TEXTS} strings", name)
    for i, t in enumerate(items):
        if not isinstance(t, str):
            kind = "token ids (not supported: send text)" if isinstance(t, (int, list)) else (
                type(t).__name__)  # fmt: skip
            raise bad(f"'{name}'[{i}] must be a string, got {kind}", name)
        try:
            t.encode("utf-8")
        except UnicodeEncodeError:
            raise bad(f"'{name}'[{i}] is not valid text (a lone surrogate)", name) from None
    return tuple(items)


def bad(message: str, param: str | None = None) -> ApiError:
    """A 400 for a body that is wrong (``param``: the field at fault)."""
    return ApiError(400, message, param=param)


def check_fields(body: Mapping[str, Any], allowed: set[str] | frozenset[str]) -> None:
    """A field ggrun does not know is a 400 that names it, never silently ignored."""
    unknown = sorted(k for k in body if k not in allowed)
    if unknown:
        raise bad(f"unknown field(s): {', '.join(unknown)[:200]}", unknown[0][:100])


def flag(body: Mapping[str, Any], name: str, default: bool) -> bool:
    """A boolean field (absent or null: ``default``)."""
    v = body.get(name)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise bad(f"'{name}' must be true or false", name)
    return v
