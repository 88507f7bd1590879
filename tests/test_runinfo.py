"""The run manifest: built once in prepare, on every result, cached model digests, and
equal manifests (greedy, no speculation) give equal text; a frozen Prepared."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ggrun import runinfo
from ggrun.cli.app import app
from ggrun.engine import Model
from ggrun.errors import ContextOverflow
from ggrun.models import ggrun_home
from ggrun.request import Request
from ggrun.textstream import Result

PROMPT = "The three primary colors are"


def test_the_digest_is_the_files_sha256_computed_once(tmp_path: Path) -> None:
    f = tmp_path / "weights.gguf"
    f.write_bytes(os.urandom(3 << 20) + b"end")
    want = hashlib.sha256(f.read_bytes()).hexdigest()
    before = runinfo.files_hashed
    assert runinfo.file_sha256(f) == want
    assert runinfo.files_hashed == before + 1
    assert runinfo.file_sha256(f) == want  # from memory
    runinfo._known.clear()  # a new process: from the disk cache, not the file
    assert runinfo.file_sha256(f) == want
    assert runinfo.files_hashed == before + 1
    cached = list((ggrun_home() / runinfo.DIGEST_DIR).glob("*.json"))
    assert len(cached) == 1 and json.loads(cached[0].read_text())["sha256"] == want
    assert not list(cached[0].parent.glob(".digest-*"))  # written whole, then renamed
    # a changed file (its size and mtime) is read again
    f.write_bytes(b"other weights")
    assert runinfo.file_sha256(f) == hashlib.sha256(b"other weights").hexdigest()
    assert runinfo.files_hashed == before + 2
    # a cache entry that lies about its key, or is not JSON, is not believed
    cached[0].write_text("{not json")
    runinfo._known.clear()
    assert runinfo.file_sha256(f) == hashlib.sha256(b"other weights").hexdigest()
    assert runinfo.file_sha256(tmp_path) is None  # not a file
    assert runinfo.file_sha256(tmp_path / "absent") is None


def test_equal_manifests_give_equal_text(smol: Model) -> None:
    a = smol.generate(PROMPT, max_tokens=24, temperature=0)
    b = smol.generate(PROMPT, max_tokens=24, temperature=0)
    assert a.run is not None and a.run == b.run and a.run.fingerprint == b.run.fingerprint
    assert a.text == b.text
    m = a.run.as_dict()
    assert m["model_sha256"] == runinfo.file_sha256(smol.path)
    assert m["ggrun_version"] == __import__("ggrun").__version__
    assert m["llama_cpp"].startswith("llama-cpp-python ")
    assert m["sampling"]["temperature"] == 0 and m["sampling"]["seed"] is None  # greedy: no draw
    assert m["speculative"] == "off" and m["cache_type"] == "f16"
    assert m["grammar_sha256"] is None
    assert a.run.fingerprint.startswith("fp_") and len(a.run.fingerprint) == 15
    json.dumps(a.run.record())  # JSON-ready


def test_the_seed_drawn_is_recorded_and_reproduces(smol: Model) -> None:
    a = smol.generate(PROMPT, max_tokens=16, temperature=1.0)
    assert a.run is not None
    drawn = dict(a.run.sampling)["seed"]
    assert isinstance(drawn, int)
    b = smol.generate(PROMPT, max_tokens=16, temperature=1.0, seed=drawn)
    assert b.run == a.run and b.text == a.text


def test_the_manifest_is_on_the_final_chunk_only(smol: Model) -> None:
    chunks = list(smol.stream(PROMPT, max_tokens=8, temperature=0, json=True))
    assert chunks[-1].run is not None and all(c.run is None for c in chunks[:-1])
    run = chunks[-1].run
    job = smol.prepare(Request.build(prompt=PROMPT, max_tokens=8, temperature=0, json=True))
    assert job.grammar is not None and run.grammar_sha256 == runinfo.text_digest(job.grammar)
    assert Result.collect(iter(chunks)).run == run
    assert Result.failed("no").run is None


def test_prepared_is_frozen_and_decides_its_room(smol: Model) -> None:
    job = smol.prepare(Request.build(prompt=PROMPT, max_tokens=8))
    with pytest.raises(dataclasses.FrozenInstanceError):
        job.max_tokens = 9  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        job.request.max_tokens = 9  # type: ignore[misc]
    long = "word " * 300
    with pytest.raises(ContextOverflow, match="the prompt has .* the context holds 64"):
        smol.prepare(Request.build(prompt=long), slot_ctx=64)
    n = len(smol.prepare(Request.build(prompt=long)).tokens)
    with pytest.raises(ContextOverflow, match=f"max_tokens 300 is more than the {512 - n} "):
        smol.prepare(Request.build(prompt=long, max_tokens=300), slot_ctx=512)
    # the default max_tokens (not asked for) is cut to the room; None is the room left
    assert smol.prepare(Request.build(prompt=long), slot_ctx=512).max_tokens == 256
    room = smol.prepare(Request.build(prompt=long, max_tokens=None), slot_ctx=512)
    assert room.max_tokens in (None, 512 - n)


def test_generate_stats_and_batch_records_carry_it(smol_path: Path, tmp_path: Path) -> None:
    r = CliRunner().invoke(
        app, ["generate", str(smol_path), PROMPT, "--raw", "--json", "-n", "48", "--temp", "0",
              "--ctx", "512", "--stats"],
    )  # fmt: skip
    assert r.exit_code == 0, r.stderr
    json.loads(r.stdout)  # stdout is still the value alone
    line = next(x for x in r.stderr.splitlines() if x.startswith("ggrun: run "))
    run = json.loads(line.removeprefix("ggrun: run "))
    assert run["model_sha256"] == hashlib.sha256(smol_path.read_bytes()).hexdigest()
    assert run["grammar_sha256"] and run["fingerprint"].startswith("fp_")
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text('{"id": "a", "prompt": "Hi"}\n{"id": "b", "messages": "bad"}\n')
    r = CliRunner().invoke(app, ["batch", str(smol_path), str(src), "-o", str(out), "-n", "4"])
    assert r.exit_code == 0, r.output
    recs = {x["id"]: x for x in map(json.loads, out.read_text().splitlines())}
    assert recs["a"]["run"]["model_sha256"] == run["model_sha256"]
    assert recs["a"]["run"]["fingerprint"].startswith("fp_")
    assert recs["a"]["finish_reason"] and "run" not in recs["b"]  # it never ran
