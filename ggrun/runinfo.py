"""What went into a run: :class:`RunInfo`, the manifest a result carries.

:meth:`ggrun.Model.prepare` builds one for every request and it rides on the prepared
request, the final chunk and the :class:`~ggrun.textstream.Result`, so a batch record, a
``--json`` line or an HTTP reply says how to run it again: the model file's sha256,
ggrun's version and llama.cpp's build, the sampling settings as resolved (with the seed
actually drawn), the grammar's digest, the speculation mode and the KV cache type.

A model file's digest is computed once: it is cached in memory and on disk
(``$GGRUN_HOME/digests``), keyed by the file's path, size and modification time, so a
changed file is read again and an unchanged one never is.
"""

from __future__ import annotations

import ctypes
import dataclasses
import hashlib
import json
import logging
import os
import stat
import tempfile
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from ggrun.sampling import SamplingConfig

logger = logging.getLogger(__name__)

DIGEST_DIR = "digests"  # under GGRUN_HOME: one small JSON file per model file

_lock = threading.Lock()  # one reader of a model file at a time; the memory cache
_known: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256
files_hashed = 0  # model files read whole in this process (the tests count them)


@dataclass(frozen=True)
class RunInfo:
    """The run manifest: everything that decides a reply, besides the prompt."""

    model_sha256: str | None  # the GGUF file's; None for a model without one
    ggrun_version: str
    llama_cpp: str  # llama-cpp-python's version and the native build (ggml commit)
    sampling: tuple[tuple[str, Any], ...]  # the resolved settings, name and value
    grammar_sha256: str | None  # of the GBNF that constrained the output (16 hex)
    speculative: str  # off, lookup, draft or auto
    cache_type: str  # the KV cache's: f16, q8_0 or q4_0

    @classmethod
    def build(
        cls,
        *,
        model: Path | None,
        sampling: SamplingConfig,
        grammar: str | None,
        speculative: str,
        cache_type: str,
    ) -> RunInfo:
        """A manifest for ``sampling`` as resolved, with the seed its draws use
        (:meth:`~ggrun.sampling.SamplingConfig.seeded`; greedy decoding draws none)."""
        return cls(
            model_sha256=None if model is None else file_sha256(model),
            ggrun_version=ggrun_version(),
            llama_cpp=llama_cpp_build(),
            sampling=tuple(sampling.as_dict().items()),
            grammar_sha256=None if grammar is None else text_digest(grammar),
            speculative=speculative,
            cache_type=cache_type,
        )

    def as_dict(self) -> dict[str, Any]:
        """The manifest as JSON-ready data (``sampling`` a dict)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["sampling"] = dict(self.sampling)
        return out

    def record(self) -> dict[str, Any]:
        """:meth:`as_dict` after the fingerprint: what a ``--json`` line or a batch
        record holds."""
        return {"fingerprint": self.fingerprint, **self.as_dict()}

    @property
    def fingerprint(self) -> str:
        """``fp_`` and 12 hex digits of the whole manifest (OpenAI's ``system_fingerprint``)."""
        text = json.dumps(self.as_dict(), sort_keys=True, separators=(",", ":"))
        return "fp_" + hashlib.sha256(text.encode()).hexdigest()[:12]


def text_digest(text: str) -> str:
    """A short sha256 of ``text`` (16 hex digits)."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]


@lru_cache(maxsize=1)
def ggrun_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ggrun")
    except PackageNotFoundError:
        return "unknown"


@lru_cache(maxsize=1)
def llama_cpp_build() -> str:
    """``llama-cpp-python 0.3.36, llama.cpp 0.5.0-dev, ggml 0.25.3 (0c1e570)``: what the
    installed bindings report (the parts they cannot are left out)."""
    import llama_cpp

    parts = [f"llama-cpp-python {getattr(llama_cpp, '__version__', '?')}"]
    try:
        parts.append(f"llama.cpp {llama_cpp.llama_version().decode()}")
        from llama_cpp._ggml import libggml  # the loaded ggml: its version and commit

        found = []
        for name in ("ggml_version", "ggml_commit"):
            fn = getattr(libggml, name)
            fn.argtypes, fn.restype = [], ctypes.c_char_p
            found.append(fn().decode())
        parts.append(f"ggml {found[0]} ({found[1]})")
    except (AttributeError, ImportError, OSError, UnicodeDecodeError):
        pass
    return ", ".join(parts)


def file_sha256(path: Path) -> str | None:
    """The sha256 of the file at ``path`` (None when it is not a regular file), computed
    once per path, size and modification time and cached in memory and on disk."""
    try:
        real = Path(path).resolve()
        st = real.stat()
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    key = (str(real), st.st_size, st.st_mtime_ns)
    with _lock:
        digest = _known.get(key)
        if digest is None:
            digest = _read_cached(key)
        if digest is None:
            digest = _hash(real)
            _write_cached(key, digest)
        _known[key] = digest
    return digest


def _hash(path: Path) -> str:
    global files_hashed
    from ggrun.models import sha256_file

    logger.info("computing the sha256 of %s (once)", path.name)
    files_hashed += 1
    return sha256_file(path)


def _cache_file(path: str) -> Path:
    from ggrun.models import ggrun_home

    name = hashlib.sha256(path.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return ggrun_home() / DIGEST_DIR / f"{name}.json"


def _read_cached(key: tuple[str, int, int]) -> str | None:
    path, size, mtime = key
    try:
        data = json.loads(_cache_file(path).read_text("utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    digest = data.get("sha256")
    if not isinstance(digest, str) or len(digest) != 64 or digest.strip("0123456789abcdef"):
        return None
    same = (data.get("path"), data.get("size"), data.get("mtime_ns")) == (path, size, mtime)
    return digest if same else None


def _write_cached(key: tuple[str, int, int], digest: str) -> None:
    """Write the entry atomically (a temporary file renamed over it); a cache that
    cannot be written is only a cost, never an error."""
    path, size, mtime = key
    target = _cache_file(path)
    record = {"path": path, "size": size, "mtime_ns": mtime, "sha256": digest}
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".digest-", dir=target.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(record, f)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as e:
        logger.debug("the digest cache %s cannot be written: %s", target, e)
