"""The converter never claims the bare import name ``convert``.

A user's own ``convert.py`` next to their script (the first entry of ``sys.path``)
must not shadow ggrun's converter, and the runtime must not import the converter at all.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HOSTILE = 'raise SystemExit("shadowed: the user\'s convert.py was imported")\n'


@pytest.fixture
def hostile_cwd(tmp_path: Path) -> Path:
    d = tmp_path / "project"
    d.mkdir()
    (d / "convert.py").write_text(HOSTILE)
    (d / "convert").mkdir()  # a package of the same name, too
    (d / "convert" / "__init__.py").write_text(HOSTILE)
    return d


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONSAFEPATH"}  # cwd on sys.path
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=300, env=env
    )


def test_api_ignores_a_users_convert_module(hostile_cwd: Path) -> None:
    code = (
        "import sys, ggrun\n"
        "f = ggrun.convert\n"
        "assert f.__module__ == 'ggrun._convert', f.__module__\n"
        "assert 'convert' not in sys.modules\n"
        "assert ggrun.converter.load('safetensors').__name__ == 'ggrun._convert.safetensors'\n"
        "print('ok')\n"
    )
    r = _run(["-c", code], hostile_cwd)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stdout + r.stderr


def test_runtime_never_imports_the_converter(hostile_cwd: Path) -> None:
    code = (
        "import sys, ggrun, ggrun.engine, ggrun.cli.app\n"
        "bad = [m for m in sys.modules if m.startswith(('convert', 'ggrun._convert'))]\n"
        "assert not bad, bad\n"
        "print('ok')\n"
    )
    r = _run(["-c", code], hostile_cwd)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stdout + r.stderr


def test_cli_dry_run_ignores_a_users_convert_module(tiny_src: Path, hostile_cwd: Path) -> None:
    args = ["-m", "ggrun", "convert", str(tiny_src), "--quant", "q8_0", "--dry-run", "--json"]
    r = _run(args, hostile_cwd)
    assert r.returncode == 0, r.stdout + r.stderr
    info = json.loads(r.stdout)
    assert info["gguf_arch"] == "qwen3" and info["tensors"] > 0
