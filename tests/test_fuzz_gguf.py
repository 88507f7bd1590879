"""Fuzz: damaged copies of the real SmolLM2 GGUF never crash or hang ggrun.

Each mutant (bit flips in the header region, truncations, extreme values written over
counts, lengths, types and offsets; and bytes changed *inside* strings: NUL bytes and
invalid UTF-8 in token texts, damaged chat templates) goes through ggrun's validator;
what passes it is loaded and run by ``ggrun.engine.Model`` in a child process (a
completion and a chat through the template), so a crash is observed rather than fatal.
Every mutant must end as a GgrunError or a model that works: no signal, no hang, no
other exception.
"""

from __future__ import annotations

import os
import random
import select
import shutil
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import gguf

from ggrun.errors import GgrunError
from ggrun.gguffile import read_gguf
from tests.helpers import string_spans

N_MUTANTS = 240
N_STRING_MUTANTS = 32
TIMEOUT_S = 30


def _header_end(path: Path) -> int:
    info = read_gguf(path)
    return info.data_offset


def _mutants(src: bytes, header_end: int, rng: random.Random) -> Iterator[tuple[str, bytes]]:
    """Mutants one at a time (each is a ~100 MB copy: never hold them all)."""
    extremes = [0, 1, 0x7F, 0xFF, 0x7FFF_FFFF, 0xFFFF_FFFF, 2**63 - 1, 2**64 - 1, 2**40]
    for i in range(N_MUTANTS):
        kind = i % 4
        raw = bytearray(src[:header_end] if kind != 3 else src)
        if kind == 0:  # bit flips in the header region
            for _ in range(rng.randint(1, 8)):
                pos = rng.randrange(4, header_end)
                raw[pos] ^= 1 << rng.randrange(8)
            name = "flip"
        elif kind == 1:  # an extreme u64 over a random 8-byte-aligned-ish spot
            pos = rng.randrange(8, header_end - 8)
            raw[pos : pos + 8] = struct.pack("<Q", rng.choice(extremes))
            name = f"u64@{pos}"
        elif kind == 2:  # an extreme u32 (types, dims, lengths)
            pos = rng.randrange(4, header_end - 4)
            raw[pos : pos + 4] = struct.pack("<I", rng.choice(extremes) & 0xFFFF_FFFF)
            name = f"u32@{pos}"
        else:  # truncation anywhere in the file
            cut = rng.randrange(0, len(src))
            yield f"cut@{cut}", bytes(src[:cut])
            continue
        yield name, bytes(raw) + src[header_end:]


WORKER = """
import sys
from ggrun.engine import LoadConfig, Model
from ggrun.errors import GgrunError
for line in sys.stdin:
    try:
        with Model(line.strip(), LoadConfig(n_ctx=64)) as m:
            m.generate("Hi \u00fc\u2603", max_tokens=2, temperature=0)
            m.chat([{"role": "user", "content": "Hi"}], max_tokens=1, temperature=0)
        print("ok", flush=True)
    except GgrunError:
        print("refused", flush=True)
    except BaseException as e:
        print("exception", type(e).__name__, flush=True)
"""


class Worker:
    """A child process that loads one file per line; a crash kills only the child."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", WORKER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )

    def load(self, path: Path) -> str:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(f"{path}\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], TIMEOUT_S)
        if not ready:
            self.proc.kill()
            return "hang"
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait()
            return f"crash (signal {-code})" if code < 0 else f"died ({code})"
        return line.strip()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def _string_mutants(path: Path, rng: random.Random) -> Iterator[tuple[str, int, bytes]]:
    """(name, offset, new bytes) written over the inside of a string, its length kept."""
    tokens = string_spans(path, gguf.Keys.Tokenizer.LIST)
    ((t_off, t_len),) = string_spans(path, gguf.Keys.Tokenizer.CHAT_TEMPLATE)
    jinja = [b"{", b"}", b"%", b"{{", b"{%", b"\x00", b"\xff", b"'", b"("]
    for i in range(N_STRING_MUTANTS):
        kind = i % 4
        off, n = tokens[rng.randrange(len(tokens))]
        if kind == 0:  # a NUL inside a token: llama.cpp cuts it there
            yield "token-nul", off + rng.randrange(n), b"\x00"
        elif kind == 1:  # invalid UTF-8 inside a token
            yield "token-utf8", off + rng.randrange(n), rng.choice([b"\xff", b"\xc3", b"\x80"])
        elif kind == 2:  # a short token made to equal another up to a NUL
            yield "token-cut", off + min(n - 1, rng.randrange(1, 3)), b"\x00"
        else:  # the chat template damaged: Jinja syntax, NUL, bad UTF-8
            pos = t_off + rng.randrange(t_len)
            yield "template", pos, rng.choice(jinja)[: t_off + t_len - pos]


def _outcome(worker: Worker, target: Path) -> str:
    try:
        read_gguf(target)
    except GgrunError:
        return "refused"
    return worker.load(target)


def test_string_mutants_never_crash(smol_path: Path, tmp_path: Path) -> None:
    """Mutants patched in place over one copy (each is restored after its run)."""
    target = tmp_path / "s.gguf"
    shutil.copyfile(smol_path, target)
    rng = random.Random(4321)
    counts = {"refused": 0, "ok": 0}
    failures = []
    worker = Worker()
    fd = os.open(target, os.O_RDWR)
    try:
        for name, pos, data in _string_mutants(smol_path, rng):
            old = os.pread(fd, len(data), pos)
            os.pwrite(fd, data, pos)
            outcome = _outcome(worker, target)
            os.pwrite(fd, old, pos)
            if outcome in counts:
                counts[outcome] += 1
            else:
                failures.append(f"{name}@{pos} {data!r}: {outcome}")
                worker.close()
                worker = Worker()
    finally:
        os.close(fd)
        worker.close()
    assert not failures, failures[:10]
    assert counts["refused"] and counts["ok"], counts  # both outcomes are exercised


def test_mutants_never_crash(smol_path: Path, tmp_path: Path) -> None:
    """Pure-Python validation runs here; what passes it is loaded in a child process."""
    src = smol_path.read_bytes()
    rng = random.Random(1234)
    counts = {"refused": 0, "ok": 0}
    failures = []
    worker = Worker()
    try:
        for i, (name, data) in enumerate(_mutants(src, _header_end(smol_path), rng)):
            target = tmp_path / f"m{i % 4}.gguf"
            target.write_bytes(data)
            try:
                read_gguf(target)
            except GgrunError:
                counts["refused"] += 1
                continue
            outcome = worker.load(target)
            if outcome in counts:
                counts[outcome] += 1
            else:
                failures.append(f"{name}: {outcome}")
                worker.close()
                worker = Worker()
    finally:
        worker.close()
    assert not failures, failures[:10]
    assert counts["refused"] > N_MUTANTS // 2, counts  # most are refused with a clear error
