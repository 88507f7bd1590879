"""Hostile YAML data files and model aliases: bounded alias expansion and nesting, and
``ggrun rm`` never deletes anything outside where a model belongs."""

from __future__ import annotations

import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest

from ggrun import models
from ggrun.errors import PresetError
from ggrun.presets import load_yaml
from ggrun.tasks import load_task

LAUGHS = "\n".join(  # nine levels of nine aliases: 9**9 (387 million) strings
    [
        "system: hi",
        'l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]',
        *(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 9)),
        "examples:",
        "  - input: x",
        "    output: {bomb: *l8}",
    ]
)

HOSTILE_YAML = {
    "billion laughs": (LAUGHS, "expand to more than"),
    "alias of itself": ("a: &a [1, *a]\n", "refers to itself"),
    "deep flow nesting": ("a: " + "[" * 100_000 + "]" * 100_000 + "\n", "deep"),
    "deep block nesting": (
        "".join(f"{'  ' * i}k{i}:\n" for i in range(100)) + "  " * 100 + "leaf: 1\n",
        "nested more than",
    ),
    "5000-digit number": ("a: 1" + "0" * 5000 + "\n", "invalid YAML value"),
    "python object": ("a: !!python/object/apply:os.system ['echo hacked']\n", "invalid YAML"),
}


@pytest.mark.parametrize("name", HOSTILE_YAML)
def test_hostile_yaml_is_refused_with_bounded_memory(tmp_path: Path, name: str) -> None:
    text, message = HOSTILE_YAML[name]
    path = tmp_path / "task.yaml"
    path.write_text(text)
    tracemalloc.start()
    try:
        with pytest.raises(PresetError, match=message) as err:
            load_task(str(path))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    assert peak < 64 << 20, f"{name}: peak {peak / 1e6:.0f} MB"


def test_huge_file_is_not_read(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    with open(path, "wb") as f:
        f.truncate(5 << 20)
    with pytest.raises(PresetError, match="over 4 MiB"):
        load_yaml(path)


def test_small_aliases_still_work(tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text("base: &b {temperature: 0.5, top_k: 20}\ndefault: *b\n")
    data = load_yaml(path)
    assert data["default"] == {"temperature": 0.5, "top_k": 20}


def _with_file(presets: Path, name: str) -> None:
    text = (presets / "models.yaml").read_text()
    text = text.replace("file: SmolLM2-135M-Instruct.Q4_1.gguf", f"file: {name!r}", 1)
    (presets / "models.yaml").write_text(text)


@pytest.mark.parametrize(
    "name", ["../../victim.gguf", "/etc/passwd", "sub/model.gguf", "..", ".hidden", "", "a\\b"]
)
def test_alias_file_stays_inside_the_models_folder(custom_presets: Path, name: str) -> None:
    _with_file(custom_presets, name)
    with pytest.raises(PresetError, match="plain file name"):
        models.aliases()


@pytest.mark.parametrize(
    "change",
    [("n_layer: 28", "n_layer: 1000000000000"), ("context: 40960", "context: big"),
     ("n_embd: 2048", "n_embd: 0")],
)  # fmt: skip
def test_alias_shape_is_bounded(custom_presets: Path, change: tuple[str, str]) -> None:
    text = (custom_presets / "models.yaml").read_text()
    (custom_presets / "models.yaml").write_text(text.replace(*change, 1))
    with pytest.raises(PresetError, match="shape"):
        models.aliases()


def test_rm_removes_a_link_not_its_target(
    isolated_home: Path, smol_path: Path, tmp_path: Path
) -> None:
    victim = tmp_path / "precious.gguf"
    victim.symlink_to(smol_path)  # the user's own file (a link here, to spare the disk)
    store = isolated_home / "models"
    store.mkdir()
    (store / smol_path.name).symlink_to(victim)
    assert models.remove("smollm2-135m") == [store / smol_path.name]
    assert victim.exists() and not (store / smol_path.name).exists()


def test_rm_in_the_hub_cache_deletes_only_its_own_blob(tmp_path: Path) -> None:
    repo = tmp_path / "hub" / "models--org--name"
    (repo / "blobs").mkdir(parents=True)
    (repo / "snapshots" / "rev").mkdir(parents=True)
    blob = repo / "blobs" / "abc123"
    blob.write_bytes(b"GGUF")
    own = repo / "snapshots" / "rev" / "model.gguf"
    own.symlink_to(os.path.relpath(blob, own.parent))
    victim = tmp_path / "precious.txt"
    victim.write_text("keep me")
    hostile = repo / "snapshots" / "rev" / "other.gguf"
    hostile.symlink_to(victim)
    models._remove_file(own)
    assert not own.exists() and not blob.exists()
    models._remove_file(hostile)
    assert not hostile.is_symlink() and victim.read_text() == "keep me"


def test_cli_bomb_in_models_yaml_is_one_line(custom_presets: Path) -> None:
    (custom_presets / "models.yaml").write_text(LAUGHS.replace("examples:", "x:"))
    env = {**os.environ, "GGRUN_PRESETS": str(custom_presets)}
    r = subprocess.run(
        [sys.executable, "-m", "ggrun", "list", "--all"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert r.returncode == 1, r.stdout + r.stderr
    assert r.stderr.count("\n") == 1 and "expand to more than" in r.stderr, r.stderr
