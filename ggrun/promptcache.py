"""Prompt states on disk: a prompt read once is not read again, in this process or the next.

A *state* is what a sequence's KV cells hold after a run of tokens, as llama.cpp
serializes it (``llama_state_seq_get_data``). :class:`PromptCache` keeps states under
``$GGRUN_HOME/cache/<key>/``, one file each, where ``key`` names everything besides the
tokens that shapes the cells: the model file's sha256, the KV cache type, flash
attention, and the llama.cpp build. :class:`ggrun.decoder.Decoder` loads, for a new
prompt, the state that shares the longest prefix with it and reads only the rest; it
saves a state at a prompt's fixed part (a system prompt and its examples) and after a
chat turn.

The files are a boundary: llama.cpp trusts a state it is given. Each file has a header
(magic, format, key, token count, data length) and a blake2b digest of its tokens and
data; a file that is short, flipped, foreign, empty, or not a regular file at all is
skipped with one warning and deleted, before llama.cpp sees a byte of it. A file is
written under a temporary name and renamed into place under a lock file, so two
processes saving the same prefix leave one good file. The folder is its owner's alone
(0700, files 0600). The cache keeps to ``max_bytes`` (:data:`DEFAULT_BYTES`,
``--cache-size``), the least recently used state out first; a state whose tokens begin
a newer one's goes at once (the newer serves every prompt the older did).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ggrun.errors import GgrunError, InvalidArgument

logger = logging.getLogger(__name__)

FORMAT = 1
MAGIC = b"GGRUNKV\x00"
SUFFIX = ".kv"
DEFAULT_BYTES = 4 << 30
SAVE_MIN = 256  # a fixed part this many tokens longer than the stored one is saved
LOAD_MIN = 32  # a stored prefix this many tokens longer than the cells kept is loaded
REMEMBER_MIN = 16  # a chat turn is saved when its cells hold this many tokens more
MAX_HEADER = 4096
MAX_TOKENS = 1 << 22
STALE_TEMP_S = 3600.0  # a temporary file this old is a crashed writer's
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    """``"4G"``, ``"500M"``, ``"0"`` (no cache) or a byte count, as bytes."""
    s = text.strip().lower().removesuffix("ib").removesuffix("b")
    unit = s[-1:] if s[-1:] in _UNITS and s[-1:] else ""
    try:
        value = float(s[: len(s) - len(unit)])
    except ValueError:
        raise InvalidArgument(
            f"cache size {text!r}: give bytes or a size like 4G or 500M"
        ) from None
    if not value >= 0 or value > 1 << 50:
        raise InvalidArgument(f"cache size {text!r}: out of range")
    return int(value * _UNITS[unit])


def cache_root() -> Path:
    from ggrun.models import ggrun_home

    return ggrun_home() / "cache"


@dataclass(frozen=True)
class Entry:
    """A state file's header: what it holds, read without its data."""

    path: Path
    tokens: Any  # numpy int32 array
    data_bytes: int
    digest: str
    model: str
    size: int  # of the file
    used: float  # its modification time: when it was last saved or loaded

    def common(self, tokens: Any) -> int:
        """How many first tokens it shares with ``tokens`` (a numpy array)."""
        import numpy as np

        n = min(len(self.tokens), len(tokens))
        diff = np.flatnonzero(self.tokens[:n] != tokens[:n])
        return int(diff[0]) if len(diff) else n


class PromptCache:
    """The states of one model, in one KV shape (see the module docstring)."""

    def __init__(
        self, model: Path, shape: str, *, max_bytes: int | None = None, root: Path | None = None
    ) -> None:
        self.model = model
        self.shape = shape  # the KV cache type, flash attention: what shapes the cells
        self.max_bytes = DEFAULT_BYTES if max_bytes is None else max_bytes
        self._root = root  # None: $GGRUN_HOME/cache, read at each use
        self._key: str | None = None
        self._told: set[str] = set()

    @property
    def root(self) -> Path:
        return self._root if self._root is not None else cache_root()

    @property
    def key(self) -> str | None:
        """The folder name: a digest of the model file's sha256, the shape and the build."""
        if self._key is None:
            from ggrun.runinfo import file_sha256, llama_cpp_build

            sha = file_sha256(self.model)
            if sha is None:
                return None
            ident = f"{FORMAT}|{sha}|{self.shape}|{llama_cpp_build()}"
            self._key = hashlib.sha256(ident.encode()).hexdigest()[:24]
        return self._key

    @property
    def folder(self) -> Path | None:
        key = self.key
        return None if key is None else self.root / key

    # -- reading ----------------------------------------------------------------
    def entries(self) -> list[Entry]:
        """Every good state of this model and shape (defective files go)."""
        folder = self.folder
        if folder is None or not folder.is_dir():
            return []
        return [e for e in (self._head(p) for p in _listing(folder)) if e is not None]

    def find(self, tokens: Sequence[int]) -> tuple[Entry, int] | None:
        """The state sharing the longest prefix with ``tokens``, and that length."""
        import numpy as np

        want = np.asarray(tokens, dtype=np.int32)
        best: tuple[Entry, int] | None = None
        for e in self.entries():
            n = e.common(want)
            if n and (best is None or n > best[1] or (n == best[1] and e.size < best[0].size)):
                best = (e, n)
        return best

    def read(self, entry: Entry) -> bytearray | None:
        """The state's data, checked against its digest (None, and the file gone, if bad)."""
        try:
            with _open(entry.path) as f:
                f.seek(len(MAGIC) + 4)
                head = int.from_bytes(f.read(4), "little")
                f.seek(len(MAGIC) + 8 + head)
                tokens = f.read(4 * len(entry.tokens))
                data = bytearray(entry.data_bytes)
                got = f.readinto(data)
        except FileNotFoundError:
            return None  # another process cleaned it up
        except OSError as e:
            self.discard(entry.path, f"cannot read it ({e.strerror or e})")
            return None
        if got != entry.data_bytes or tokens != entry.tokens.tobytes():
            self.discard(entry.path, "truncated")
            return None
        if _digest(tokens, data) != entry.digest:
            self.discard(entry.path, "its checksum does not match (a damaged file)")
            return None
        with contextlib.suppress(OSError):
            os.utime(entry.path)  # recently used: the last to be evicted
        return data

    def _head(self, path: Path) -> Entry | None:
        import numpy as np

        try:
            st = os.lstat(path)
            if not stat.S_ISREG(st.st_mode):
                self.discard(path, "not a regular file")
                return None
            with _open(path) as f:
                magic = f.read(len(MAGIC) + 8)
                if len(magic) < len(MAGIC) + 8 or magic[: len(MAGIC)] != MAGIC:
                    self.discard(path, "not a ggrun prompt state (empty or foreign)")
                    return None
                fmt = int.from_bytes(magic[len(MAGIC) : len(MAGIC) + 4], "little")
                n_head = int.from_bytes(magic[len(MAGIC) + 4 :], "little")
                if fmt != FORMAT or not 0 < n_head <= MAX_HEADER:
                    self.discard(path, f"format {fmt}, not {FORMAT}")
                    return None
                head = json.loads(f.read(n_head).decode("utf-8"))
                n, d = head["n_tokens"], head["data_bytes"]
                if not (isinstance(n, int) and isinstance(d, int) and 0 < n <= MAX_TOKENS):
                    raise ValueError("sizes")
                if head["key"] != self.key:
                    self.discard(path, "made for another model or KV cache type")
                    return None
                if len(MAGIC) + 8 + n_head + 4 * n + d != st.st_size:
                    self.discard(path, "truncated or padded")
                    return None
                tokens = np.frombuffer(f.read(4 * n), dtype="<i4").astype(np.int32)
                if len(tokens) != n:
                    self.discard(path, "truncated")
                    return None
                return Entry(
                    path, tokens, d, str(head["digest"]), str(head.get("model", "")),
                    st.st_size, st.st_mtime,
                )  # fmt: skip
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError, AttributeError):
            self.discard(path, "its header is damaged")
            return None

    def discard(self, path: Path, why: str) -> None:
        """Delete a defective file (or folder, FIFO...) with one warning."""
        if path.name not in self._told:
            self._told.add(path.name)
            logger.warning("prompt cache: %s: %s; deleted", path.name, why)
        with contextlib.suppress(OSError):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()

    # -- writing ----------------------------------------------------------------
    def save(self, tokens: Sequence[int], data: memoryview | bytes) -> Path | None:
        """Store the state of ``tokens`` (unless one for exactly these tokens exists).
        States whose tokens begin these go; then the oldest, down to the size bound."""
        import numpy as np

        folder = self.folder
        if folder is None or not tokens or not data:
            return None
        arr = np.asarray(tokens, dtype="<i4")
        raw = arr.tobytes()
        name = hashlib.blake2b(raw, digest_size=16).hexdigest() + SUFFIX
        head = json.dumps({
            "key": self.key, "n_tokens": len(arr), "data_bytes": len(data),
            "digest": _digest(raw, data), "model": self.model.name, "saved": time.time(),
        }).encode()  # fmt: skip
        size = len(MAGIC) + 8 + len(head) + len(raw) + len(data)
        if size > self.max_bytes:
            return None
        try:
            with self._locked(folder):
                target = folder / name
                if target.exists() and self._head(target) is not None:
                    os.utime(target)
                    return target
                fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)  # 0600
                try:
                    with os.fdopen(fd, "wb") as f:
                        f.write(MAGIC + FORMAT.to_bytes(4, "little"))
                        f.write(len(head).to_bytes(4, "little") + head)
                        f.write(raw)
                        f.write(data)
                    os.replace(tmp, target)
                except BaseException:
                    with contextlib.suppress(OSError):
                        os.unlink(tmp)
                    raise
                for e in self.entries():  # the states this one supersedes
                    if e.path != target and e.common(arr) == len(e.tokens):
                        with contextlib.suppress(OSError):
                            e.path.unlink()
                self._evict(keep=target)
        except OSError as e:
            if "save" not in self._told:
                self._told.add("save")
                logger.warning("prompt cache: cannot save a state: %s", e.strerror or e)
            return None
        logger.info("prompt cache: saved %d tokens (%d bytes)", len(arr), size)
        return target

    @contextlib.contextmanager
    def _locked(self, folder: Path) -> Iterator[None]:
        root = folder.parent
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        folder.mkdir(exist_ok=True, mode=0o700)
        for d in (root, folder):
            if stat.S_IMODE(d.stat().st_mode) & 0o077:
                os.chmod(d, 0o700)
        with _file_lock(root / ".lock"):
            yield

    def _evict(self, keep: Path) -> None:
        """The oldest states out until the whole cache fits its bound."""
        files = []
        now = time.time()
        for p in self.root.glob("*/*"):
            try:
                st = p.lstat()
            except OSError:
                continue
            if p.name.startswith(".tmp-"):
                if now - st.st_mtime > STALE_TEMP_S:
                    with contextlib.suppress(OSError):
                        p.unlink()
                continue
            files.append((st.st_mtime, st.st_size, p))
        total = sum(size for _, size, _ in files)
        for _, size, p in sorted(files, key=lambda f: f[0]):
            if total <= self.max_bytes:
                break
            if p == keep:
                continue
            with contextlib.suppress(OSError):
                p.unlink()
                total -= size


# -- the whole cache (``ggrun cache``) ---------------------------------------------
def listing(root: Path | None = None) -> list[dict[str, Any]]:
    """Every state file under the cache: model, tokens, bytes, last use (no checks)."""
    out = []
    for p in sorted((root or cache_root()).glob(f"*/*{SUFFIX}")):
        row: dict[str, Any] = {"path": str(p), "bytes": 0, "model": "?", "tokens": 0}
        try:
            st = p.lstat()
            row.update(bytes=st.st_size, used=st.st_mtime)
            with _open(p) as f:
                pre = f.read(len(MAGIC) + 8)
                n_head = int.from_bytes(pre[len(MAGIC) + 4 :], "little")
                if pre[: len(MAGIC)] == MAGIC and 0 < n_head <= MAX_HEADER:
                    head = json.loads(f.read(n_head))
                    row.update(model=str(head.get("model", "?")), tokens=int(head["n_tokens"]))
        except (OSError, ValueError, KeyError, TypeError):
            pass
        out.append(row)
    return out


def clear(root: Path | None = None) -> tuple[int, int]:
    """Delete every state; return how many files and bytes went."""
    base = root or cache_root()
    n = size = 0
    if not base.is_dir():
        return 0, 0
    try:
        with _file_lock(base / ".lock"):
            for p in base.iterdir():
                if p.name == ".lock":
                    continue
                for f in [p] if not p.is_dir() else list(p.iterdir()):
                    with contextlib.suppress(OSError):
                        size += f.lstat().st_size
                        n += 1
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                else:
                    p.unlink()
    except OSError as e:
        raise GgrunError(f"cannot clear the prompt cache in {base}: {e.strerror or e}") from None
    return n, size


def _listing(folder: Path) -> list[Path]:
    try:
        return [p for p in folder.iterdir() if p.name.endswith(SUFFIX)]
    except OSError:
        return []


def _digest(tokens: bytes, data: memoryview | bytes | bytearray) -> str:
    h = hashlib.blake2b(digest_size=32)
    h.update(tokens)
    h.update(data)
    return h.hexdigest()


def _open(path: Path) -> Any:
    """Open without blocking or following a link (a FIFO swapped in has no writer)."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0))
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(f"{path.name}: not a regular file")
    return os.fdopen(fd, "rb")


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock between processes (flock; none where there is no fcntl)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        try:
            import fcntl
        except ImportError:  # Windows: renames are still atomic
            yield
            return
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
