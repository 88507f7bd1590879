"""The prompt cache (ggrun.promptcache): states on disk, checked before llama.cpp sees them.

The file tests need no model; the rest run SmolLM2 (and the 0.5B once) for real: a state
saved by one model object is loaded by another on the same file, as a second process
would, and greedy text is the same as a fresh read's."""

from __future__ import annotations

import logging
import multiprocessing
import os
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ggrun import promptcache
from ggrun.batching import run_batch
from ggrun.chat import Chat
from ggrun.cli.app import app
from ggrun.engine import LoadConfig, Model
from ggrun.errors import InvalidArgument
from ggrun.promptcache import PromptCache

SYSTEM = "You are the help desk of a hardware store. House rules follow.\n" + "\n".join(
    f"Rule {i}: aisle {i % 9} holds item {i * 37 % 101}; say code {i * 13 % 97} when asked."
    for i in range(40)
)


def _store(tmp_path: Path, model: Path, shape: str = "f16", **kw: object) -> PromptCache:
    return PromptCache(model, shape, root=tmp_path / "cache", **kw)  # type: ignore[arg-type]


def _states(store: PromptCache) -> list[Path]:
    assert store.folder is not None
    return sorted(store.folder.glob("*.kv")) if store.folder.is_dir() else []


# -- files, no model -----------------------------------------------------------------
def test_save_find_read_round_trip(tmp_path: Path, smol_path: Path) -> None:
    store = _store(tmp_path, smol_path)
    data = os.urandom(5000)
    path = store.save([1, 2, 3, 4, 5], data)
    assert path is not None and path.parent == store.folder
    found = store.find([1, 2, 3, 9, 9, 9])
    assert found is not None and found[1] == 3
    assert store.read(found[0]) == data
    assert store.find([7, 8]) is None
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.parent.parent.stat().st_mode) == 0o700


def test_the_longest_prefix_wins_and_a_longer_state_supersedes(
    tmp_path: Path, smol_path: Path
) -> None:
    store = _store(tmp_path, smol_path)
    store.save([1, 2, 3], b"a" * 100)
    store.save([1, 5, 6, 7], b"b" * 100)
    found = store.find([1, 5, 6, 8])
    assert found is not None and found[1] == 3 and store.read(found[0]) == b"b" * 100
    store.save([1, 2, 3, 4], b"c" * 100)  # [1, 2, 3] begins it: gone
    assert len(_states(store)) == 2
    found = store.find([1, 2, 3, 4, 5])
    assert found is not None and found[1] == 4
    again = store.save([1, 2, 3, 4], b"c" * 100)  # the same tokens: one file still
    assert again is not None and len(_states(store)) == 2


def _defects(store: PromptCache, good: Path) -> dict[str, Path]:
    """Each defect the issue names, as a file (or thing) in the store's folder."""
    raw = good.read_bytes()
    folder = good.parent
    made: dict[str, Path] = {}

    def put(name: str, data: bytes) -> None:
        made[name] = folder / f"{name}.kv"
        made[name].write_bytes(data)

    put("truncated", raw[: len(raw) - 100])
    flipped = bytearray(raw)
    flipped[-50] ^= 0x01
    put("bit-flipped", bytes(flipped))
    head = bytearray(raw)
    head[len(promptcache.MAGIC) + 10] ^= 0x20  # inside the JSON header
    put("header-flipped", bytes(head))
    put("empty", b"")
    put("foreign", b"GGUF" + os.urandom(200))
    put("padded", raw + b"\0")
    os.mkdir(folder / "a-directory.kv")
    made["a-directory"] = folder / "a-directory.kv"
    os.mkfifo(folder / "a-fifo.kv")
    made["a-fifo"] = folder / "a-fifo.kv"
    return made


def test_every_defect_is_skipped_and_deleted_with_one_warning(
    tmp_path: Path, smol_path: Path, qwen_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = _store(tmp_path, smol_path)
    good = store.save(list(range(1, 41)), os.urandom(4000))
    assert good is not None
    made = _defects(store, good)
    good.unlink()  # only defects are left: none may be taken
    other_model = _store(tmp_path, qwen_path).save(list(range(1, 41)), os.urandom(4000))
    other_type = _store(tmp_path, smol_path, shape="q8_0").save(list(range(1, 41)), b"x" * 99)
    assert other_model is not None and other_type is not None
    for name, src in (("other-model", other_model), ("other-type", other_type)):
        made[name] = good.parent / f"{name}.kv"
        os.replace(src, made[name])
    with caplog.at_level(logging.WARNING, logger="ggrun.promptcache"):
        while (found := store.find(list(range(1, 60)))) is not None:  # a header that reads:
            assert store.read(found[0]) is None  # its data does not
        assert store.find(list(range(1, 60))) is None  # once: they are gone
    for name, path in made.items():
        assert not os.path.lexists(path), name
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == len(made), warnings
    assert all(w.startswith("prompt cache: ") and w.endswith("; deleted") for w in warnings)


def test_a_flipped_data_byte_is_caught_by_the_checksum(tmp_path: Path, smol_path: Path) -> None:
    store = _store(tmp_path, smol_path)
    path = store.save([5, 6, 7], os.urandom(3000))
    assert path is not None
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0x80  # the header and size still say it is good
    path.write_bytes(bytes(raw))
    found = store.find([5, 6, 7, 8])
    assert found is not None  # the header reads...
    assert store.read(found[0]) is None  # ...the data does not
    assert not path.exists()


def _save_many(root: str, model: str, n: int) -> None:
    store = PromptCache(Path(model), "f16", root=Path(root))
    data = bytes(range(256)) * 40000  # 10 MB: slow enough to overlap
    for _ in range(n):
        store.save(list(range(1, 300)), data)


def test_two_processes_saving_the_same_state_leave_one_good_file(
    tmp_path: Path, smol_path: Path
) -> None:
    root = tmp_path / "cache"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_save_many, args=(str(root), str(smol_path), 3)) for _ in "ab"]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    store = PromptCache(smol_path, "f16", root=root)
    files = [p.name for p in (store.folder or root).iterdir()]
    assert len(files) == 1 and files[0].endswith(".kv"), files  # no temporary files left
    found = store.find(list(range(1, 400)))
    assert found is not None and store.read(found[0]) == bytes(range(256)) * 40000


def test_the_size_bound_holds_oldest_out_first(tmp_path: Path, smol_path: Path) -> None:
    store = _store(tmp_path, smol_path, max_bytes=25_000)
    paths = []
    for i in range(6):
        p = store.save([100 + i, 1, 2], os.urandom(6000))
        assert p is not None
        os.utime(p, (1000 + i, 1000 + i))  # an order the clock cannot blur
        paths.append(p)
    total = sum(p.stat().st_size for p in _states(store))
    assert total <= 25_000
    assert paths[-1].exists() and not paths[0].exists()
    assert store.save([9, 9], os.urandom(30_000)) is None  # larger than the bound: not kept


def test_ggrun_cache_lists_and_clear_empties(
    tmp_path: Path, smol_path: Path, isolated_home: Path
) -> None:
    store = PromptCache(smol_path, "f16")  # $GGRUN_HOME/cache
    store.save([1, 2, 3], os.urandom(2000))
    store.save([4, 5, 6, 7], os.urandom(3000))
    runner = CliRunner()
    out = runner.invoke(app, ["cache"])
    assert out.exit_code == 0, out.output
    assert smol_path.name[:30] in out.output and "2 states" in out.output
    out = runner.invoke(app, ["cache", "--json"])
    import json

    doc = json.loads(out.output)
    assert sorted(s["tokens"] for s in doc["states"]) == [3, 4]
    out = runner.invoke(app, ["cache", "clear"])
    assert out.exit_code == 0 and "deleted 2 states" in out.output
    assert not list((isolated_home / "cache").glob("*/*.kv"))
    assert "empty" in runner.invoke(app, ["cache"]).output


@pytest.mark.parametrize(
    ("text", "size"), [("4G", 4 << 30), ("500M", 500 << 20), ("1.5GiB", 3 << 29), ("0", 0)]
)
def test_sizes(text: str, size: int) -> None:
    assert promptcache.parse_size(text) == size


@pytest.mark.parametrize("text", ["", "lots", "-1G", "nanG", "1e99"])
def test_bad_sizes_are_one_line_errors(text: str) -> None:
    with pytest.raises(InvalidArgument, match="cache size"):
        promptcache.parse_size(text)


# -- real models ----------------------------------------------------------------------
def _reply(model: Model, question: str) -> tuple[str, int]:
    msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
    r = model.chat(msgs, max_tokens=24, temperature=0)
    return r.text, r.cached_tokens


def test_a_second_process_loads_the_fixed_part_and_says_the_same(smol_path: Path) -> None:
    cfg = LoadConfig(n_ctx=2048)
    with Model(smol_path, cfg) as first:
        first_text, cached = _reply(first, "Where is item 5?")
        store = first.prompt_cache
        assert store is not None and cached == 0
        assert len(_states_of(store)) == 1
    with Model(smol_path, cfg) as second:  # a new process: nothing in memory
        text, cached = _reply(second, "What code goes with rule 7?")
    fixed = len(store.entries()[0].tokens)
    assert fixed >= promptcache.SAVE_MIN and cached == fixed
    with Model(smol_path, LoadConfig(n_ctx=2048, prompt_cache=False)) as fresh:
        fresh_text, fresh_cached = _reply(fresh, "What code goes with rule 7?")
        assert fresh.prompt_cache is None
    assert fresh_cached == 0
    assert text == fresh_text and text  # token for token
    assert first_text


def _states_of(store: PromptCache) -> list[Path]:
    return _states(store)


def test_a_damaged_state_is_read_fresh_and_deleted(
    smol_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = LoadConfig(n_ctx=2048)
    with Model(smol_path, cfg) as m:
        _reply(m, "Where is item 5?")
        store = m.prompt_cache
        assert store is not None
        (path,) = _states_of(store)
        raw = bytearray(path.read_bytes())
        raw[len(raw) // 2] ^= 0x10
        path.write_bytes(bytes(raw))
        m.reset()
        with caplog.at_level(logging.WARNING, logger="ggrun.promptcache"):
            text, cached = _reply(m, "What code goes with rule 7?")
    assert cached == 0 and text
    assert any("checksum" in r.getMessage() for r in caplog.records)
    assert len(_states_of(store)) == 1  # the damaged file went; a good one was saved


def test_a_state_llama_cpp_refuses_is_dropped(
    smol_path: Path, qwen_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A well-formed file whose data is another model's cells: llama.cpp says no, ggrun
    deletes it and reads the prompt."""
    cfg = LoadConfig(n_ctx=2048)
    with Model(qwen_path, cfg) as other:
        _reply(other, "Where is item 5?")
        assert other.prompt_cache is not None
        (theirs,) = other.prompt_cache.entries()
        data = other.prompt_cache.read(theirs)
    assert data is not None
    with Model(smol_path, cfg) as m:
        assert m.prompt_cache is not None
        tokens = m.tokenize_prompt(
            m.render_chat([{"role": "system", "content": SYSTEM}], add_generation_prompt=False)
        )
        m.prompt_cache.save(tokens, data)  # right key and checksum, wrong cells
        with caplog.at_level(logging.WARNING, logger="ggrun.promptcache"):
            text, cached = _reply(m, "Where is item 5?")
    assert cached == 0 and text
    assert any("llama.cpp could not load it" in r.getMessage() for r in caplog.records)


def test_a_reopened_chat_goes_on_as_if_never_closed(smol_path: Path, tmp_path: Path) -> None:
    """Turn 2 after a restart and /load equals turn 2 in the first process. The store
    holds turn 2's own state too; it is loaded only up to turn 2's fixed part, since a
    cell read in a longer step may differ in its last bits from one read fresh."""
    cfg = LoadConfig(n_ctx=2048)
    with Model(smol_path, cfg) as m:
        chat = Chat(m, system=SYSTEM, temperature=0, max_tokens=40)
        chat.send("Where is item 5?")
        chat.save(tmp_path / "chat.json")
        second = chat.send("And what code goes with rule 3?")
    with Model(smol_path, cfg) as m2:
        again = Chat(m2, temperature=0, max_tokens=40)
        again.load(tmp_path / "chat.json")
        reopened = again.send("And what code goes with rule 3?")
    assert reopened.cached_tokens > 0.8 * reopened.prompt_tokens
    assert reopened.text == second.text


def test_a_batch_reads_its_shared_system_prompt_once(smol_path: Path) -> None:
    cfg = LoadConfig(n_ctx=2048)
    lines = [
        [{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"Where is item {i}?"}]
        for i in range(4)
    ]
    with Model(smol_path, cfg) as m:
        results = [r for _, r in run_batch(m, lines, parallel=2, max_tokens=8, temperature=0)]
        assert m.prompt_cache is not None
        (entry,) = m.prompt_cache.entries()
    assert all(r.error is None for r in results)
    assert all(r.cached_tokens == len(entry.tokens) for r in results)
