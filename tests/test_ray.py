"""``ggrun batch --ray`` on a real local Ray instance: 2 workers of 1 thread, SmolLM2.

One Ray instance (2 CPUs, no dashboard) serves the module; the CLI and ``ggrun.batch``
join it. Checked: every id exactly once and the same greedy texts as a local run, per-line
errors, a worker killed part-way, the driver SIGKILLed and run again, workers that loaded
different files, each failure as one line, and workers under their memory cap: a line that
outgrows it, or that kills its worker again and again, fails alone.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ggrun.batching import batch, run_batch
from ggrun.cli.app import app
from ggrun.distributed import MAX_ATTEMPTS, ClusterError, Job, ModelSpec, Worker, size
from ggrun.errors import InsufficientMemory, ModelNotFound
from tests.helpers import wait_for_lines

ray = pytest.importorskip("ray")

N = 40
GREEDY = ["-n", "8", "--temp", "0"]


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """A local Ray instance for the module; its address, for other processes."""
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def _write_input(path: Path, n: int = N) -> None:
    with path.open("w") as f:
        for i in range(n):
            f.write(json.dumps({"id": f"q{i}", "prompt": f"List {i} colours:"}) + "\n")


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _ids(path: Path) -> list[str]:
    return [str(r["id"]) for r in _records(path)]


def _ray_args(src: Path, out: Path, model: Path | str, address: str = "auto") -> list[str]:
    return ["batch", str(model), str(src), "-o", str(out), "--ray", address, "--workers", "2",
            "--threads", "1", "-p", "1", *GREEDY]  # fmt: skip


@pytest.fixture(scope="module")
def lines(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """N good lines, one that fails on a worker, one that fails on the driver."""
    src = tmp_path_factory.mktemp("ray") / "in.jsonl"
    _write_input(src)
    with src.open("a") as f:
        f.write('{"id": "typo", "prompt": "hi", "temprature": 0.5}\n')
        f.write("{not json\n")
    return src


@pytest.fixture(scope="module")
def local(lines: Path, smol_path: Path) -> dict[str, dict[str, Any]]:
    """A local ``ggrun batch --parallel 1`` run of the lines: records by id."""
    out = lines.with_name("local.jsonl")
    args = ["batch", str(smol_path), str(lines), "-o", str(out), "-p", "1", *GREEDY]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    return {str(x["id"]): x for x in _records(out)}


def test_every_id_once_and_the_texts_of_a_local_run(
    cluster: str, smol_path: Path, lines: Path, local: dict[str, Any], tmp_path: Path
) -> None:
    out = tmp_path / "out.jsonl"
    r = CliRunner().invoke(app, _ray_args(lines, out, smol_path))
    assert r.exit_code == 0, r.output
    assert "2 workers × 1 thread, 1 slot each (memory capped at " in r.output
    assert "on 2 Ray workers" in r.output
    recs = {str(x["id"]): x for x in _records(out)}
    assert len(recs) == len(_ids(out)) == N + 2  # every id exactly once
    assert "unknown option(s): temprature" in recs["typo"]["error"]
    assert "not valid JSON" in recs[str(N + 2)]["error"]
    for key, x in local.items():  # the same greedy text, token counts and errors
        y = recs[key]
        assert (y["text"], y["completion_tokens"], y["error"]) == (
            x["text"],
            x["completion_tokens"],
            x["error"],
        )
    assert sum(bool(x["text"]) for x in recs.values()) == N


def test_a_worker_killed_part_way_loses_nothing(
    cluster: str, smol: Any, local: dict[str, Any]
) -> None:
    items = [{"id": f"q{i}", "prompt": f"List {i} colours:"} for i in range(N)]
    job = Job(smol, items, runner=run_batch, workers=2, threads=1,  # a loaded Model
              parallel=1, max_tokens=8, temperature=0)  # fmt: skip
    got: dict[int, Any] = {}
    for index, result in job:
        assert index not in got
        got[index] = result
        if len(got) == 1:  # one shard is done; the other worker has shards in flight
            busiest = max(job.alive, key=lambda h: len(h.sent))
            assert busiest.sent
            ray.kill(busiest.actor, no_restart=True)
    assert job.lost >= 1
    assert sorted(got) == list(range(N))
    assert [got[i].text for i in range(N)] == [local[f"q{i}"]["text"] for i in range(N)]
    assert all(r.error is None and r.id == f"q{i}" for i, r in got.items())


def test_sigkill_of_the_driver_then_a_rerun(cluster: str, smol_path: Path, tmp_path: Path) -> None:
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    _write_input(src)
    cmd = [sys.executable, "-m", "ggrun", *_ray_args(src, out, smol_path, cluster)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_lines(proc, out, 1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = len(_ids(out))
    assert 1 <= first < N
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{first} ids already" in rerun.stderr
    assert sorted(_ids(out)) == sorted(f"q{i}" for i in range(N))  # each id exactly once


def test_workers_that_loaded_different_files_are_refused(
    cluster: str, smol_path: Path, tmp_path: Path
) -> None:
    """Each worker resolves the alias in its own GGRUN_HOME: the same file, then another."""
    name = smol_path.name
    same, other = tmp_path / "a", tmp_path / "b"
    for home in (same, other):
        (home / "models").mkdir(parents=True)
    os.symlink(smol_path, same / "models" / name)
    copy = other / "models" / name
    shutil.copyfile(smol_path, copy)
    with copy.open("r+b") as f:  # one byte of the last tensor differs: it still loads
        f.seek(-1, os.SEEK_END)
        last = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([last[0] ^ 1]))
    env = [{"GGRUN_HOME": str(h), "HF_HUB_OFFLINE": "1"} for h in (same, same)]
    ok = batch("smollm2-135m", ["Hi"] * 4, ray="auto", workers=2, threads=1, parallel=1,
               max_tokens=2, worker_env=env)  # fmt: skip
    assert [r.id for r in ok] == [0, 1, 2, 3] and all(r.error is None for r in ok)
    env = [{"GGRUN_HOME": str(h), "HF_HUB_OFFLINE": "1"} for h in (same, other)]
    bad = Job("smollm2-135m", ["Hi"] * 4, runner=run_batch, workers=2, threads=1,
              parallel=1, max_tokens=2, worker_env=env)  # fmt: skip
    with pytest.raises(ClusterError, match="loaded different model files") as e:
        list(bad)
    assert str(e.value).count("on node") == 2
    assert bad.alive == [] and bad.tokens == 0  # refused before any line ran


def test_a_model_missing_on_a_node_is_one_line(cluster: str, tmp_path: Path) -> None:
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    _write_input(src, 3)
    r = CliRunner().invoke(app, _ray_args(src, out, tmp_path / "nowhere.gguf"))
    assert r.exit_code == 1
    line = r.output.strip().splitlines()[-1]
    assert line.startswith("ggrun: error: on node ") and "nowhere.gguf: no such file" in line
    assert not out.exists()
    with pytest.raises(ModelNotFound, match="on node"):
        list(Job(tmp_path / "nowhere.gguf", ["x"], runner=run_batch, workers=1, threads=1))


def test_workers_that_do_not_fit_are_one_line(
    cluster: str, smol_path: Path, tmp_path: Path
) -> None:
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    _write_input(src, 2)
    r = CliRunner().invoke(app, [*_ray_args(src, out, smol_path), "--workers", "3"])
    assert r.exit_code == 1
    assert "3 workers of 1 thread do not fit: the cluster holds 2 (CPUs per node: 2)" in r.output


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_clear_failures_without_a_cluster(
    smol_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    _write_input(src, 2)
    address = f"127.0.0.1:{_closed_port()}"  # a process of its own: it has joined no Ray
    cmd = [sys.executable, "-m", "ggrun", *_ray_args(src, out, smol_path, address)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert r.stderr.strip().startswith(f"ggrun: error: no Ray cluster at {address} (")
    assert len(r.stderr.strip().splitlines()) == 1
    args = ["batch", str(smol_path), str(src), "-o", str(out), "--workers", "2"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 1 and "--workers needs --ray" in r.output
    r = CliRunner().invoke(app, [*args[:-2], "--worker-memory", "1GiB"])
    assert r.exit_code == 1 and "--worker-memory needs --ray" in r.output
    for bad in ("lots", "12", "9" * 400, "-1GiB"):
        r = CliRunner().invoke(app, [*_ray_args(src, out, smol_path), "--worker-memory", bad])
        assert r.exit_code == 1 and "--worker-memory: " in r.output, (bad, r.output)
        assert "is not a size of 1 MiB or more" in r.output and "Traceback" not in r.output
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    r = CliRunner().invoke(app, _ray_args(src, out, smol_path))
    assert r.exit_code == 1
    assert r.output.strip() == "ggrun: error: Ray is not installed; pip install 'ggrun[ray]'"
    assert not out.exists()


def test_sizes_that_fit_the_nodes() -> None:
    assert size([2], 2, 1) == (2, 1)
    assert size([8, 8], None, None) == (2, 8)  # one worker per node, all its CPUs
    assert size([8, 8], 8, None) == (8, 2)
    assert size([8, 8], 3, None) == (3, 4)  # the most threads that still place 3
    assert size([8, 4], None, 4) == (3, 4)
    with pytest.raises(ClusterError, match="do not fit"):
        size([8, 8], 1, 12)  # a worker never spans nodes
    with pytest.raises(ClusterError, match="no CPUs"):
        size([0], None, None)


def test_out_of_memory_retries_with_fewer_slots_then_reports(smol: Any) -> None:
    """The worker's own loop, in this process: a batcher that fails as a whole runs the
    lines left with half the slots, down to one, then reports them as errors."""
    calls: list[int] = []

    def tight(model: Any, items: Any, *, parallel: int, **kw: Any) -> Iterator[Any]:
        calls.append(parallel)
        it = run_batch(model, items, parallel=parallel, **kw)
        yield next(it)  # one line ends, then the memory runs out
        if parallel > 1:
            raise InsufficientMemory(f"{parallel} slots need more memory than is free")
        yield from it

    worker = Worker(ModelSpec(str(smol.path)), tight)
    worker.model = smol
    lines = [(i, f"Count to {i}:") for i in range(6)]
    out = worker.run(lines, 4, None, {"max_tokens": 4, "temperature": 0})
    assert calls == [4, 2, 1]
    assert sorted(i for i, _ in out) == list(range(6))
    assert all(r.error is None for _, r in out)

    def never(model: Any, items: Any, **kw: Any) -> Iterator[Any]:
        raise InsufficientMemory("no memory at all")
        yield

    worker.runner = never
    out = worker.run(lines[:2], 2, None, {"max_tokens": 4})
    assert [(i, r.error) for i, r in out] == [(0, "no memory at all"), (1, "no memory at all")]


def test_one_slot_then_one_line_at_a_time(smol: Any) -> None:
    """In the worker's own loop: a line that needs more memory than there is fails the
    batch at every slot count; then each line runs alone and only that line fails."""
    calls: list[tuple[int, list[str]]] = []

    def big_fails(model: Any, items: Any, *, parallel: int, **kw: Any) -> Iterator[Any]:
        calls.append((parallel, [r.id for r in items]))
        if any(r.id == "big" for r in items):
            raise InsufficientMemory("a context for 'big' does not fit")
        yield from run_batch(model, items, parallel=parallel, **kw)

    worker = Worker(ModelSpec(str(smol.path)), big_fails)
    worker.model = smol
    lines = [(i, {"id": f"q{i}", "prompt": f"Count to {i}:"}) for i in range(4)]
    lines.insert(2, (4, {"id": "big", "prompt": "Hi"}))
    out = dict(worker.run(lines, 4, None, {"max_tokens": 4, "temperature": 0}))
    assert [p for p, _ in calls[:3]] == [4, 2, 1]
    assert sorted(ids for _, [ids] in calls[3:]) == ["big", "q0", "q1", "q2", "q3"]
    assert out[4].error == "a context for 'big' does not fit"
    assert all(out[i].error is None and out[i].text for i in range(4))


def _colours(n: int) -> list[dict[str, Any]]:
    return [{"id": f"q{i}", "prompt": f"List {i} colours:"} for i in range(n)]


def test_worker_memory_from_the_command_line(cluster: str, smol_path: Path, tmp_path: Path) -> None:
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    _write_input(src, 2)
    r = CliRunner().invoke(app, [*_ray_args(src, out, smol_path), "--worker-memory", "300MiB"])
    assert r.exit_code == 0, r.output
    assert "(memory capped at 0.29 GiB over the model)" in r.output
    assert all(not x["error"] for x in _records(out))


def test_a_line_that_outgrows_the_memory_cap_fails_alone(cluster: str, smol_path: Path) -> None:
    """A real allocation, no hook: one line asks for 8,000 new tokens, so its batch needs
    a KV cache of 8,192 tokens per slot (180 MiB for SmolLM2) where the others need 256.
    Under a cap of 160 MiB beyond the model, llama.cpp cannot allocate it in the worker;
    the worker lives, that line gets an error record and every other line completes."""
    items = _colours(6)
    items.insert(3, {"id": "big", "prompt": "Hi", "max_tokens": 8000})
    job = Job(smol_path, items, runner=run_batch, workers=1, threads=1, parallel=2,
              max_tokens=8, temperature=0, worker_memory=160 << 20)  # fmt: skip
    got = {r.id: r for _, r in job}
    assert got["big"].error and "could not create a context of 8192 tokens" in got["big"].error
    assert "a worker may allocate 0.16 GiB beyond its model" in got["big"].error
    assert all(r.error is None and r.completion_tokens for k, r in got.items() if k != "big")
    assert len(got) == 7 and job.lost == 0  # it failed in the worker, which lived on
    cap = job.alive[0].info
    assert cap["memory"] == 160 << 20 and cap["memory_cap"] > cap["memory"]


def test_a_line_that_kills_its_worker_fails_alone(cluster: str, smol_path: Path) -> None:
    """A line that makes its worker grow until the memory cap stops it, and then die as
    native code does when an allocation fails (ggml aborts; here the runner kills its own
    process: the one test hook, as real allocations do not crash on cue). With one
    worker, each death is replaced; after its retries that line is an error record and
    every other line, including those of its shard, completes."""

    def grows(model: Any, items: Any, **kw: Any) -> Iterator[Any]:
        if any(r.id == "grow" for r in items):
            held = []
            try:
                while len(held) < 64:  # 4 GiB at most: without a cap, give up and run
                    held.append(bytearray(64 << 20))
            except MemoryError:
                held.clear()
                os.kill(os.getpid(), signal.SIGKILL)
            held.clear()
        yield from run_batch(model, items, **kw)

    items = _colours(8)
    items.insert(4, {"id": "grow", "prompt": "Hi"})
    job = Job(smol_path, items, runner=grows, workers=1, threads=1, parallel=2, shard=3,
              max_tokens=4, temperature=0, worker_memory=256 << 20)  # fmt: skip
    got = {r.id: r for _, r in job}
    assert len(got) == 9
    error = got["grow"].error
    assert error and error.startswith(f"failed {MAX_ATTEMPTS} times on Ray workers")
    assert all(r.error is None and r.completion_tokens for k, r in got.items() if k != "grow")
    assert job.lost == MAX_ATTEMPTS
