"""JSON Lines in and out for ``ggrun batch``: per-line errors, resumable append-only output.

Input: one JSON object per line, ``{"id": ..., "prompt": "..."}`` or ``{"id": ...,
"messages": [...]}``, with optional ``max_tokens``, ``think``, ``stop`` and sampling
fields. A line that is not a JSON object becomes an error result; it never stops the
batch. ``id`` defaults to the line number (1-based).

Output: one JSON object per result, appended and flushed as each finishes. After a
crash or Ctrl-C the file ends with complete lines, plus at most one torn line that
:class:`ResultsFile` cuts off before appending again, and the ids already there are
skipped: re-running the same command finishes the job, with every id exactly once.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from ggrun.errors import InvalidArgument


def id_key(value: Any) -> str:
    """A hashable, type-preserving key for an id (``1`` and ``"1"`` differ)."""
    return json.dumps(value, sort_keys=True)


def read_requests(path: Path) -> Iterator[tuple[dict[str, Any] | None, Any, str]]:
    """``(request dict or None, id, error)`` for each non-blank line of ``path``."""
    try:
        f = path.open(encoding="utf-8", errors="replace")
    except OSError as e:
        raise InvalidArgument(f"{path}: cannot read: {e.strerror or e}") from None
    with f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as e:
                yield None, n, f"line {n}: not valid JSON ({e.msg})"
                continue
            if not isinstance(item, dict):
                yield None, n, f"line {n}: expected a JSON object"
                continue
            item.setdefault("id", n)
            if "prompt" not in item and "messages" not in item and "text" not in item:
                yield None, item["id"], f"line {n}: needs 'prompt' or 'messages'"
                continue
            yield item, item["id"], ""


class ResultsFile:
    """An append-only JSONL results file that survives being killed mid-write."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.done: set[str] = set()
        self._f: IO[str] | None = None
        if path.exists():
            self._recover()

    def _recover(self) -> None:
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1  # keep whole lines only
        for line in data[:end].splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict) and "id" in rec:
                self.done.add(id_key(rec["id"]))
        if end < len(data):
            with self.path.open("r+b") as f:
                f.truncate(end)

    def write(self, record: dict[str, Any]) -> None:
        if self._f is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._f = self.path.open("a", encoding="utf-8")
        self._f.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())
        self.done.add(id_key(record.get("id")))

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None

    def __enter__(self) -> ResultsFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
