"""Drawing a reply again, where another draw does better than an error or a loop.

- **A check no grammar can hold failed** (``multipleOf``, number bounds, ``uniqueItems``,
  ...: :class:`~ggrun.errors.SchemaMismatch`, for an output schema or a tool call's
  arguments). The reply is drawn again with the next seed (a greedy request then samples:
  :meth:`~ggrun.sampling.SamplingConfig.redrawn`), up to :data:`MAX_REDRAWS` times; then
  the error stands. :meth:`ggrun.Model.complete` and the batcher (so ``ggrun batch`` and
  the server's whole answers) do this; a streamed answer cannot take back what it sent,
  so it ends with the error instead.
- **A tool call repeats one already answered** in the conversation: small models call
  the same tool again right after they have its result, forever. The server draws the
  reply again with tool calls closed, so that the model answers from the result
  (:func:`repeated`, :func:`closed`); a request opts out with ``allow_repeated_calls``
  (polling tools), the whole server with ``--allow-repeated-calls``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from ggrun.decoder import Prepared
from ggrun.request import Request
from ggrun.tools import ToolCall

MAX_REDRAWS = 3  # draws after the first, for a reply that failed a schema check
CLOSED = {"tool_choice": "none"}  # the options of a reply drawn with tool calls closed


def again(job: Prepared, attempt: int) -> Prepared | None:
    """The job's next draw (``attempt`` 1, 2, ...), or None once they are used up."""
    if attempt > MAX_REDRAWS:
        return None
    return job.with_sampling(job.sampling.redrawn(attempt))


def call_key(name: str, arguments: Any) -> tuple[str, str]:
    """What makes two calls the same call: the tool and its arguments (in any order)."""
    return name, json.dumps(arguments, sort_keys=True, ensure_ascii=False, default=str)


def answered(messages: Sequence[Any]) -> set[tuple[str, str]]:
    """The calls (name, arguments) of the assistant's messages that a later ``tool``
    message answers: by ``tool_call_id``, or by coming after it where either has no id
    (ollama's messages have none)."""
    out: set[tuple[str, str]] = set()
    ids: set[str | None] = set()  # of the tool messages after the one at hand
    for m in reversed(messages):
        if m.role == "tool":
            ids.add(m.tool_call_id)
        elif m.role == "assistant" and ids:
            for c in m.tool_calls:
                if c.get("id") is None or c.get("id") in ids or None in ids:
                    fn = c["function"]
                    out.add(call_key(fn["name"], fn.get("arguments", {})))
    return out


def repeated(request: Request, calls: Iterable[ToolCall]) -> bool:
    """Whether one of ``calls`` repeats a call already answered in ``request``."""
    calls = list(calls)
    if not calls or request.messages is None:
        return False
    done = answered(request.messages)
    return any(call_key(c.name, c.arguments) in done for c in calls)


def closed(request: Request) -> Request:
    """``request`` with tool calls closed: the model answers in text."""
    return request.with_options(**CLOSED)
