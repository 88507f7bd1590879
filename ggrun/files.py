"""Reading and writing a file on the operator's behalf: a regular file, within a cap.

Every file ggrun reads whole (tasks, presets, aliases, schemas, grammars, tool files,
saved chats) goes through :func:`read_bytes` or :func:`read_text`, and one it reads
line by line (a batch's input) through :func:`open_file`. The path must be a
regular file: a directory, a FIFO, a socket or a device (``/dev/zero``) is refused
before it is opened where ``stat`` can tell, and after it is opened (``fstat``) in any
case. The open never blocks (``O_NONBLOCK``: a FIFO swapped in between has no writer to
wait for), and at most the cap plus one byte is read, so a file that lies about its
size (``/proc`` files say 0) is bounded too. Each problem is one
:class:`~ggrun.errors.GgrunError` line naming the path and what is wrong, never the
file's contents.

:func:`check_target` does the same for a file ggrun is about to write (a saved chat):
a name, not a folder, the root or a FIFO.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

from ggrun.errors import GgrunError, InvalidArgument

MAX_BYTES = 4 << 20  # the default cap: ggrun's own data files are a few KB each
_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_NONBLOCK", 0)
    | getattr(os, "O_NOCTTY", 0)
    | getattr(os, "O_CLOEXEC", 0)
    | getattr(os, "O_BINARY", 0)
)
_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a device"),
    (stat.S_ISBLK, "a device"),
)


def size_text(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 else f"{n >> 10} KiB" if n >= 1 << 10 else f"{n} B"


def _kind(mode: int) -> str | None:
    """What a file that is not a regular file is (None for a regular file)."""
    if stat.S_ISREG(mode):
        return None
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def open_file(
    path: str | os.PathLike[str],
    *,
    what: str = "data",
    error: type[GgrunError] = InvalidArgument,
) -> BinaryIO:
    """``path`` open for reading, a regular file (checked without blocking).

    ``what`` names the kind of file in messages (``is a FIFO, not a task file``);
    ``error`` is the :class:`GgrunError` subclass raised.
    """
    p = Path(path)
    try:
        kind = _kind(os.stat(p).st_mode)  # before open: opening a device can do things
        if kind is not None:
            raise error(f"{p}: is {kind}, not a {what} file")
        fd = os.open(p, _FLAGS)
    except FileNotFoundError:
        raise error(f"{p}: no such file") from None
    except OSError as e:
        raise error(f"{p}: cannot read: {e.strerror or e}") from None
    except ValueError:  # a NUL in the path
        raise error(f"{p}: not a valid path") from None
    try:
        kind = _kind(os.fstat(fd).st_mode)  # it may have been swapped since the stat
    except OSError as e:
        os.close(fd)
        raise error(f"{p}: cannot read: {e.strerror or e}") from None
    if kind is not None:
        os.close(fd)
        raise error(f"{p}: is {kind}, not a {what} file")
    return os.fdopen(fd, "rb")


def read_bytes(
    path: str | os.PathLike[str],
    *,
    what: str = "data",
    limit: int = MAX_BYTES,
    error: type[GgrunError] = InvalidArgument,
) -> bytes:
    """The bytes of ``path``, a regular file (:func:`open_file`) of at most ``limit``
    bytes: its size is checked first, and no more than ``limit + 1`` bytes are read."""
    over = error(f"{path}: over {size_text(limit)}; not a {what} file")
    with open_file(path, what=what, error=error) as f:
        try:
            if os.fstat(f.fileno()).st_size > limit:
                raise over
            data = f.read(limit + 1) or b""
        except OSError as e:  # also the EAGAIN of a file that would block
            raise error(f"{path}: cannot read: {e.strerror or e}") from None
    if len(data) > limit:
        raise over
    return data


def read_text(
    path: str | os.PathLike[str],
    *,
    what: str = "data",
    limit: int = MAX_BYTES,
    error: type[GgrunError] = InvalidArgument,
) -> str:
    """:func:`read_bytes`, decoded as UTF-8 (anything else is one error)."""
    raw = read_bytes(path, what=what, limit=limit, error=error)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{path}: not UTF-8 text (at byte {e.start}); not a {what} file") from None


def check_target(
    path: str | os.PathLike[str], *, what: str = "data", error: type[GgrunError] = InvalidArgument
) -> Path:
    """``path`` as a file ggrun may write (replace) whole: it has a name, and it is
    absent or a regular file (never a directory, the root, a FIFO or a device)."""
    p = Path(path)
    if p.name in ("", ".", ".."):
        raise error(f"{p}: is a directory; give a file name for the {what}")
    try:
        mode = os.stat(p).st_mode
    except FileNotFoundError:
        return p
    except OSError as e:
        raise error(f"{p}: cannot write: {e.strerror or e}") from None
    except ValueError:  # a NUL in the path
        raise error(f"{p}: not a valid path") from None
    kind = _kind(mode)
    if kind is not None:
        raise error(f"{p}: is {kind}; give a file name for the {what}")
    return p
