"""JSON Lines in and out for ``ggrun batch``: per-line errors, resumable append-only output.

Input: one JSON object per line, ``{"id": ..., "prompt": "..."}`` or ``{"id": ...,
"messages": [...]}``, with optional ``max_tokens``, ``think``, ``stop`` and sampling
fields. A line that cannot be read (not UTF-8, not JSON, nested too deeply, longer than
:data:`MAX_LINE`, not an object) becomes an error result; it never stops the batch.
``id`` defaults to the line number (1-based).

Output: one JSON object per result, appended, flushed and fsynced as each finishes; a
request that ran carries its ``run`` manifest (:meth:`ggrun.runinfo.RunInfo.record`).
After a crash or Ctrl-C the file ends with complete lines, plus at most one torn line
that :class:`ResultsFile` cuts off before appending again, and the ids already there
are skipped: re-running the same command finishes the job, with every id exactly once.
The output must be a ggrun results file (or absent, or empty): ggrun refuses to append
to, or cut, any other file, the input included. One run at a time holds it (a lock).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from ggrun.errors import InvalidArgument
from ggrun.files import check_target, open_file

MAX_LINE = 16 << 20  # bytes in one input line
ID_TYPES = (str, int)


def id_key(value: Any) -> str:
    """A hashable, type-preserving key for an id (``1`` and ``"1"`` differ)."""
    return json.dumps(value, sort_keys=True)


def _id_problem(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, ID_TYPES):
        return f"'id' must be a string or an integer, not {type(value).__name__}"
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return "'id' is not valid text (a lone surrogate)"
        if len(value) > 1000:
            return "'id' is longer than 1000 characters"
    return None


def _lines(f: IO[bytes]) -> Iterator[tuple[int, bytes | None]]:
    """(line number, bytes or None when longer than MAX_LINE) for each line."""
    n = 0
    while True:
        line = f.readline(MAX_LINE + 1)
        if not line:
            return
        n += 1
        if len(line) > MAX_LINE and not line.endswith(b"\n"):
            while line and not line.endswith(b"\n"):  # skip the rest of the long line
                line = f.readline(MAX_LINE)
            yield n, None
            continue
        yield n, line


def read_requests(path: Path) -> Iterator[tuple[dict[str, Any] | None, Any, str]]:
    """``(request dict or None, id, error)`` for each non-blank line of ``path``."""
    with open_file(path, what="JSONL", error=InvalidArgument) as f:  # never a FIFO or device
        for n, raw in _lines(f):
            if raw is None:
                yield None, n, f"line {n}: longer than {MAX_LINE >> 20} MiB"
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield None, n, f"line {n}: not UTF-8 text ({e.reason} at byte {e.start})"
                continue
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except (ValueError, RecursionError) as e:
                why = "nested too deeply" if isinstance(e, RecursionError) else str(e)[:100]
                yield None, n, f"line {n}: not valid JSON ({why})"
                continue
            if not isinstance(item, dict):
                yield None, n, f"line {n}: expected a JSON object"
                continue
            item.setdefault("id", n)
            problem = _id_problem(item["id"])
            if problem is not None:
                yield None, n, f"line {n}: {problem}"
                continue
            if "prompt" not in item and "messages" not in item and "text" not in item:
                yield None, item["id"], f"line {n}: needs 'prompt' or 'messages'"
                continue
            yield item, item["id"], ""


class ResultsFile:
    """An append-only JSONL results file that survives being killed mid-write.

    Opening it checks that the file is ggrun's results (every line a JSON object with an
    ``id`` and a ``finish_reason``), takes an exclusive lock, and cuts a torn last line.
    """

    def __init__(self, path: Path, *, source: Path | None = None) -> None:
        self.path = path
        self.done: set[str] = set()
        try:
            check_target(path, what="results", error=InvalidArgument)  # a file, or none yet
        except InvalidArgument as e:
            raise InvalidArgument(f"-o {e}") from None
        if source is not None and path.exists() and _same(path, source):
            raise InvalidArgument(f"-o {path} is the input file; give another output file")
        self._created = not path.exists()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._f: IO[bytes] = path.open("a+b")
        except OSError as e:
            raise InvalidArgument(f"-o {path}: cannot open: {e.strerror or e}") from None
        try:
            self._lock()
            self._recover()
        except BaseException:
            self.close()
            raise

    def _lock(self) -> None:
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks; nothing to do
            return
        try:
            fcntl.flock(self._f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise InvalidArgument(
                f"-o {self.path}: another ggrun batch is writing to it; wait for it or "
                "choose another output file"
            ) from None

    def _recover(self) -> None:
        self._f.seek(0)
        data = self._f.read()
        end = data.rfind(b"\n") + 1  # whole lines only
        for n, line in enumerate(data[:end].splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except (ValueError, RecursionError):
                rec = None
            if not isinstance(rec, dict) or "id" not in rec or "finish_reason" not in rec:
                raise InvalidArgument(
                    f"-o {self.path}: line {n} is not a ggrun result; this is not a "
                    "results file, so ggrun will not append to it: choose another file"
                )
            self.done.add(id_key(rec["id"]))
        tail = data[end:]
        if tail:
            if not tail.startswith(b'{"id": '):
                raise InvalidArgument(
                    f"-o {self.path}: its last line is not a ggrun result; this is not a "
                    "results file, so ggrun will not change it: choose another file"
                )
            self._f.truncate(end)  # a torn write of an earlier run

    def write(self, record: dict[str, Any]) -> None:
        try:
            line = json.dumps(record, ensure_ascii=False)
            raw = line.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate somewhere: escape it instead
            raw = json.dumps(record, ensure_ascii=True).encode("ascii")
        self._f.write(raw + b"\n")
        self._f.flush()
        os.fsync(self._f.fileno())
        self.done.add(id_key(record.get("id")))

    def close(self) -> None:
        if not self._f.closed:
            empty = self._f.tell() == 0
            self._f.close()
            if empty and self._created:  # nothing written: leave no empty file behind
                self.path.unlink(missing_ok=True)

    def __enter__(self) -> ResultsFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _same(a: Path, b: Path) -> bool:
    try:
        return a.samefile(b)
    except OSError:
        return False
