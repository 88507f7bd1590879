"""Trying hard to break ggrun: generated GGUF headers, hostile safetensors, kills mid-convert."""

from __future__ import annotations

import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from ggrun.cli.app import app
from ggrun.errors import InvalidModelFile
from ggrun.gguffile import ArrayValue, read_gguf

# ---------------------------------------------------------------- GGUF properties

KEY = st.from_regex(r"[a-z][a-z0-9_]{0,12}(\.[a-z0-9_]{1,8}){0,2}", fullmatch=True)
SCALAR = st.one_of(
    st.integers(-(2**31), 2**31 - 1),
    st.booleans(),
    st.text(min_size=1, max_size=40),  # the writer skips empty strings
    st.floats(allow_nan=False, width=32),
)
VALUE = st.one_of(
    SCALAR,
    st.lists(st.integers(0, 2**31 - 1), min_size=1, max_size=80),
    st.lists(st.text(max_size=10), min_size=1, max_size=20),
)
TENSOR = st.tuples(
    st.lists(st.integers(1, 6), min_size=1, max_size=4), st.sampled_from(["f32", "f16"])
)


def _write(path: Path, meta: dict[str, Any], tensors: list[tuple[list[int], str]]) -> None:
    import gguf

    w = gguf.GGUFWriter(str(path), "llama")
    for k, v in meta.items():
        if isinstance(v, bool):
            w.add_bool(k, v)
        elif isinstance(v, int):
            w.add_int32(k, v)
        elif isinstance(v, float):
            w.add_float32(k, v)
        elif isinstance(v, str):
            w.add_string(k, v)
        else:
            w.add_array(k, v)
    for i, (shape, dtype) in enumerate(tensors):
        w.add_tensor(f"t{i}", np.zeros(shape, dtype=np.float32 if dtype == "f32" else np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


GEN = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)


@GEN
@given(
    meta=st.dictionaries(KEY.filter(lambda k: not k.startswith("general")), VALUE, max_size=8),
    tensors=st.lists(TENSOR, max_size=5),
)
def test_generated_files_read_back_exactly(
    meta: dict[str, Any], tensors: list[tuple[list[int], str]]
) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "g.gguf"
        _write(path, meta, tensors)
        info = read_gguf(path)
    for k, v in meta.items():
        got = info.metadata[k]
        if isinstance(v, list):
            assert isinstance(got, ArrayValue) and got.count == len(v)
            if got.values is not None:
                assert list(got.values) == v
        elif isinstance(v, float):
            assert got == pytest.approx(np.float32(v), nan_ok=False)
        else:
            assert got == v
    assert [t.name for t in info.tensors] == [f"t{i}" for i in range(len(tensors))]
    for t, (shape, _dtype) in zip(info.tensors, tensors, strict=True):
        assert tuple(reversed(t.shape)) == tuple(shape) or t.shape == tuple(shape)


@pytest.fixture(scope="module")
def small_gguf(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("g") / "base.gguf"
    _write(
        path,
        {"a.count": 7, "a.name": "hello", "a.list": list(range(30)), "a.words": ["x", "yz"]},
        [([4, 3], "f32"), ([2], "f16")],
    )
    return path.read_bytes()


@GEN
@given(data=st.data())
def test_any_damage_is_refused_or_read_never_crashes(small_gguf: bytes, data: Any) -> None:
    raw = bytearray(small_gguf)
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(raw) - 1))
        chunk = data.draw(st.binary(min_size=1, max_size=8))
        raw[pos : pos + len(chunk)] = chunk
    cut = data.draw(st.integers(0, len(raw)))
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "m.gguf"
        path.write_bytes(bytes(raw[:cut]))
        tracemalloc.start()
        try:
            read_gguf(path)
        except InvalidModelFile as e:
            assert str(e).count("\n") == 0 and str(path) in str(e)
        finally:
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        # nothing is allocated from a crafted length (no time limit: that would depend on
        # how busy the machine is, and a crafted length that looped would allocate too)
        assert peak < 8 * len(small_gguf) + (16 << 20)


@GEN
@given(cut=st.integers(0, 10**6))
def test_every_truncation_is_refused(small_gguf: bytes, cut: int) -> None:
    """Cutting into the header or any tensor is refused; only trailing padding may go."""
    cut %= len(small_gguf)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "t.gguf"
        path.write_bytes(small_gguf)
        needed = max(t.offset + t.nbytes for t in read_gguf(path).tensors)
        path.write_bytes(small_gguf[:cut])
        if cut < needed:
            with pytest.raises(InvalidModelFile):
                read_gguf(path)
        else:
            assert len(read_gguf(path).tensors) == 2


# ---------------------------------------------------------------- safetensors fuzz


def _st_mutants(raw: bytes, rng: random.Random, n: int) -> list[tuple[str, bytes]]:
    header_len = int.from_bytes(raw[:8], "little")
    end = 8 + header_len
    extremes = [0, 1, 7, header_len - 1, header_len + 1, len(raw), 2**32, 2**63 - 1, 2**64 - 1]
    out = []
    for i in range(n):
        kind = i % 4
        b = bytearray(raw)
        if kind == 0:  # bit flips inside the JSON header
            for _ in range(rng.randint(1, 6)):
                pos = rng.randrange(8, end)
                b[pos] ^= 1 << rng.randrange(8)
            out.append(("flip", bytes(b)))
        elif kind == 1:  # an extreme header length
            b[:8] = rng.choice(extremes).to_bytes(8, "little")
            out.append(("length", bytes(b)))
        elif kind == 2:  # digits in the header replaced (offsets, shapes)
            text = b[8:end].decode("latin-1")
            digits = [j for j, c in enumerate(text) if c.isdigit()]
            for j in rng.sample(digits, min(len(digits), rng.randint(1, 4))):
                b[8 + j] = ord(rng.choice("0123456789"))
            out.append(("digits", bytes(b)))
        else:  # truncation anywhere
            out.append(("cut", bytes(b[: rng.randrange(0, len(raw))])))
    return out


def test_hostile_safetensors_headers_through_convert_dry_run(
    tiny_src: Path, tmp_path: Path
) -> None:
    src = tmp_path / "ckpt"
    shutil.copytree(tiny_src, src)
    target = src / "model.safetensors"
    raw = target.read_bytes()
    rng = random.Random(77)
    outcomes = {"ok": 0, "refused": 0}
    for name, data in _st_mutants(raw, rng, 120):
        target.write_bytes(data)
        r = CliRunner().invoke(app, ["convert", str(src), "--quant", "q8_0", "--dry-run"])
        assert r.exception is None or isinstance(r.exception, SystemExit), (name, r.exception)
        assert "Traceback" not in r.output, (name, r.output)
        if r.exit_code == 0:
            outcomes["ok"] += 1
        else:
            assert r.exit_code == 1, (name, r.output)
            lines = [x for x in r.output.splitlines() if x.startswith("ggrun: error")]
            assert len(lines) == 1, (name, r.output)
            outcomes["refused"] += 1
    assert outcomes["refused"] > 60, outcomes


# ---------------------------------------------------------------- SIGKILL during convert


def test_sigkill_during_convert_leaves_complete_files_or_none(
    tiny_src: Path, tmp_path: Path
) -> None:
    from ggrun.engine import LoadConfig, Model

    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "ggrun", "convert", str(tiny_src), "--quant", "f16,q4_k_m"]
    cmd += ["-o", str(out), "--force"]
    t0 = time.monotonic()
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    full = time.monotonic() - t0
    finals = sorted(p.name for p in out.iterdir())
    assert finals == ["Tiny-Qwen3-F16.gguf", "Tiny-Qwen3-Q4_K_M.gguf"]
    shutil.rmtree(out)
    rng = random.Random(20261128)
    seen_partial = 0
    for _ in range(20):
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0, full))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if not out.exists():
            continue
        for name in finals:
            path = out / name
            if path.exists():  # complete under its final name: it validates and loads
                with Model(path, LoadConfig(n_ctx=64)) as m:
                    assert m.generate("Hi", max_tokens=1, temperature=0).finish_reason
        seen_partial += any(p.name not in finals for p in out.iterdir())
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    assert sorted(p.name for p in out.iterdir()) == finals  # the next run leaves no junk
    assert seen_partial >= 1  # some kills really landed mid-write
