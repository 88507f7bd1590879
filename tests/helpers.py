"""Test helpers: copies of real GGUF files with changed metadata (gguf-py's own copier),
and a ``ggrun serve`` process for a test module."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

import gguf
import httpx
from gguf.scripts.gguf_new_metadata import MetadataDetails, copy_with_new_metadata

QWEN3_TEMPLATE = (Path(__file__).parent / "data" / "qwen3_template.jinja").read_text()


def rewrite_gguf(
    src: Path,
    dst: Path,
    *,
    arch: str | None = None,
    template: str | None = None,
    strings: dict[str, str] | None = None,
    values: dict[str, Any] | None = None,
    remove: tuple[str, ...] = (),
) -> Path:
    """Copy ``src`` to ``dst`` with a new architecture, chat template or values.

    ``values`` maps keys to Python values, typed as gguf-py's writer types them (int:
    INT32 or UINT32, bool, float, str, lists of one of those); ``{arch}`` in a key is
    filled in.
    """
    reader = _reader(src)
    old_arch = reader.get_field(gguf.Keys.General.ARCHITECTURE).contents()
    new_arch = arch or old_arch
    new: dict[str, Any] = {}
    if template is not None:
        new[gguf.Keys.Tokenizer.CHAT_TEMPLATE] = MetadataDetails(
            gguf.GGUFValueType.STRING, template
        )
    for k, v in (strings or {}).items():
        new[k] = MetadataDetails(gguf.GGUFValueType.STRING, v)
    for k, v in (values or {}).items():
        new[k.format(arch=new_arch)] = _details(v)
    writer = gguf.GGUFWriter(dst, arch=new_arch, endianess=reader.endianess)
    if new_arch != old_arch:  # rename the {arch}.* keys too
        remove = remove + tuple(
            f.name for f in reader.fields.values() if f.name.startswith(old_arch + ".")
        )
    copy_with_new_metadata(reader, writer, new, list(remove))
    return dst


@lru_cache(maxsize=4)
def _reader(path: Path) -> gguf.GGUFReader:
    """gguf-py's reader takes seconds on a real vocabulary: read each source once."""
    return gguf.GGUFReader(path)


def _details(v: Any) -> MetadataDetails:
    def vtype(x: Any) -> gguf.GGUFValueType:
        if isinstance(x, bool):
            return gguf.GGUFValueType.BOOL
        if isinstance(x, int):
            return gguf.GGUFValueType.INT32 if x < 0 else gguf.GGUFValueType.UINT32
        if isinstance(x, float):
            return gguf.GGUFValueType.FLOAT32
        return gguf.GGUFValueType.STRING

    if isinstance(v, list):
        sub = vtype(v[0])
        sub = gguf.GGUFValueType.INT32 if sub == gguf.GGUFValueType.UINT32 else sub
        return MetadataDetails(gguf.GGUFValueType.ARRAY, v, sub_type=sub)
    return MetadataDetails(vtype(v), v)


def string_spans(path: Path, key: str) -> list[tuple[int, int]]:
    """Where each string of metadata ``key`` lies in the file: (byte offset, length)."""
    reader = _reader(path)
    field = reader.fields[key]
    base = reader.data.__array_interface__["data"][0]
    return [
        (field.parts[i].__array_interface__["data"][0] - base, len(field.parts[i]))
        for i in field.data
    ]


def wait_for_lines(proc: subprocess.Popen[Any], path: Path, n: int, timeout: float = 120) -> None:
    """Wait until ``proc`` has written ``n`` lines to ``path`` (or ends, or time is up)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if path.exists() and path.read_text().count("\n") >= n:
            return
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def serving(args: list[str], home: Path, wait: float = 120) -> Iterator[str]:
    """``ggrun serve ARGS`` on a free port with ``GGRUN_HOME=home``: its base URL once
    ``/health`` answers; at the end, SIGTERM and a check that it shut down cleanly."""
    port = free_port()
    cmd = [sys.executable, "-m", "ggrun", "serve", *args, "--port", str(port)]
    env = {**os.environ, "GGRUN_HOME": str(home)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + wait
    try:
        while True:
            try:
                if httpx.get(base + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline, f"{base} did not become healthy in {wait} s"
        yield base
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0 and b"Traceback" not in out, out.decode()
