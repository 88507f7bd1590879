"""The CLI through typer's CliRunner: clean stdout, one-line errors, exit codes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ggrun.cli.app import app

runner = CliRunner()


def run(*args: str, input: str | None = None):  # type: ignore[no-untyped-def]
    return runner.invoke(app, list(args), input=input)


COMMANDS = ("generate", "chat", "pull", "list", "rm", "convert", "batch", "embed", "bench",
            "serve", "doctor", "fit", "cache")  # fmt: skip


def test_help_lists_commands() -> None:
    r = run("--help")
    assert r.exit_code == 0
    box = r.stdout.split("Commands", 1)[1]
    listed = {m.group(1) for line in box.splitlines() if (m := re.match(r"│ (\w+)\s{2,}", line))}
    assert listed == set(COMMANDS), listed  # every command, and no other


@pytest.mark.parametrize("cmd", COMMANDS)
def test_every_command_explains_itself(cmd: str) -> None:
    r = run(cmd, "--help")
    assert r.exit_code == 0, r.output
    lines = [line.strip() for line in r.stdout.splitlines() if line.strip()]
    assert lines[0].startswith(f"Usage: ggrun {cmd}") and "--help" in r.stdout
    assert len(lines[1]) > 20 and not lines[1].startswith("╭"), r.stdout  # a summary line


def test_generate_prints_only_the_answer(qwen_path: Path) -> None:
    r = run(
        "generate",
        str(qwen_path),
        "What is the capital of France? One word.",
        "--temp",
        "0",
        "--max-tokens",
        "20",
        "--ctx",
        "512",
        "--stats",
    )
    assert r.exit_code == 0, r.stderr
    assert r.stdout.strip().rstrip(".") == "Paris"
    assert "prompt tokens" in r.stderr and "prompt tokens" not in r.stdout
    assert "llama" not in r.stdout.lower()


def test_generate_reads_stdin(smol_path: Path) -> None:
    r = run(
        "generate",
        str(smol_path),
        "--raw",
        "--temp",
        "0",
        "-n",
        "5",
        "--ctx",
        "256",
        input="The capital of France is",
    )
    assert r.exit_code == 0, r.stderr
    assert r.stdout.strip()
    dash = run(
        "generate",
        str(smol_path),
        "-",
        "--raw",
        "--temp",
        "0",
        "-n",
        "5",
        "--ctx",
        "256",
        input="The capital of France is",
    )
    assert dash.stdout == r.stdout


def test_same_seed_same_output(smol_path: Path) -> None:
    args = (
        "generate",
        str(smol_path),
        "Tell me a story.",
        "--seed",
        "3",
        "-n",
        "16",
        "--ctx",
        "256",
        "--temp",
        "1.0",
    )
    assert run(*args).stdout == run(*args).stdout


def _one_line_error(r, pattern: str) -> None:  # type: ignore[no-untyped-def]
    assert r.exit_code == 1, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("ggrun: error: ")
    assert pattern in lines[0]
    assert "Traceback" not in r.stderr and r.stdout == ""


def test_missing_file(tmp_path: Path) -> None:
    _one_line_error(run("generate", str(tmp_path / "no.gguf"), "hi"), "no such file")


def test_not_a_gguf(tmp_path: Path) -> None:
    p = tmp_path / "x.gguf"
    p.write_text("hello")
    _one_line_error(run("generate", str(p), "hi"), "not a GGUF file")


def test_truncated_gguf(tmp_path: Path, smol_path: Path) -> None:
    p = tmp_path / "cut.gguf"
    with open(smol_path, "rb") as f:
        p.write_bytes(f.read(50_000_000))
    _one_line_error(run("generate", str(p), "hi"), "truncated")


def test_unknown_alias() -> None:
    _one_line_error(run("generate", "llama-99b", "hi"), "unknown model 'llama-99b'")


def test_alias_not_downloaded() -> None:
    _one_line_error(run("generate", "smollm2-135m", "hi"), "ggrun pull smollm2-135m")


def test_offline_pull() -> None:
    _one_line_error(run("pull", "qwen3-1.7b"), "could not get qwen3-1.7b")


@pytest.mark.parametrize(
    ("flags", "pattern"),
    [
        (["--temp", "abc"], "--temp"),
        (["--temp", "-1"], "temperature must be between 0 and 100"),
        (["--top-p", "0"], "top_p"),
        (["--seed", "-5"], "--seed"),
        (["--ctx", "2"], "--ctx"),
        (["--preset", "nope"], "unknown sampling preset 'nope'"),
        (["--bogus"], "No such option"),
    ],
)
def test_bad_flags(smol_path: Path, flags: list[str], pattern: str) -> None:
    _one_line_error(run("generate", str(smol_path), "hi", *flags), pattern)


def test_bad_preset_file(smol_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    from ggrun import sampling
    from ggrun.presets import presets_dir

    d = tmp_path / "p"
    shutil.copytree(presets_dir(), d)
    (d / "sampling.yaml").write_text("default:\n  temprature: 1\n")
    monkeypatch.setenv("GGRUN_PRESETS", str(d))
    sampling.load_presets.cache_clear()
    try:
        _one_line_error(run("generate", str(smol_path), "hi"), "unknown key 'temprature'")
    finally:
        sampling.load_presets.cache_clear()


def test_prompt_too_long(smol_path: Path) -> None:
    _one_line_error(
        run("generate", str(smol_path), "word " * 600, "--ctx", "256"), "the context holds 256"
    )


def test_list_json(isolated_home: Path, smol_path: Path) -> None:
    import json

    (isolated_home / "models").mkdir()
    (isolated_home / "models" / smol_path.name).symlink_to(smol_path)
    r = run("list", "--json")
    assert r.exit_code == 0
    rows = json.loads(r.stdout)
    assert rows[0]["model"] == "smollm2-135m:q4_1" and rows[0]["arch"] == "llama"
    assert rows[0]["quant"] == "Q4_1"
    everything = json.loads(run("list", "--all", "--json").stdout)
    assert {"qwen3-1.7b:q4_k_m", "qwen3-1.7b:q8_0", "qwen3-1.7b:f16"} <= {
        r["model"] for r in everything
    }
