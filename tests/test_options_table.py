"""The sampling option table (ggrun.sampling.OPTIONS) is the one place an option exists:
its name appears in at most two modules of ggrun/ (the table's, and llama.py where the
sampler applies it), and the CLI, presets, tasks, requests and API fields are read off it.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import pytest

from ggrun import sampling
from ggrun.cli import options as cli_options
from ggrun.errors import InvalidArgument, PresetError
from ggrun.request import Request
from ggrun.tasks import TASK_KEYS, load_task

PKG = Path(__file__).resolve().parent.parent / "ggrun"
HOMES = {"ggrun/sampling.py", "ggrun/llama.py"}  # the table, and where samplers are applied

# --- EXCLUDED FOR NOW: the API adapters, until they read their fields off the table
# (sampling.wire_fields / sampling.from_wire). Remove these once they do.
NOT_YET_CHECKED: tuple[str, ...] = ()


def _docstrings(tree: ast.AST) -> set[int]:
    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    return {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, kinds)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }


def _words(node: ast.AST, docstrings: set[int]) -> list[str]:
    """The names a node of code spells: identifiers, and the pieces of a string that is
    one token (a key such as "top_k", "options.top_k" or a flag "--top-k"). Prose (a
    string with spaces: messages, help), docstrings and comments are not code."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        if id(node) in docstrings or re.search(r"\s", node.value):
            return []
        pieces = re.split(r"[^A-Za-z0-9_-]+", node.value)
        return [p.lstrip("-").replace("-", "_") for p in pieces]
    if isinstance(node, ast.Name):
        return [node.id]
    if isinstance(node, ast.Attribute):
        return [node.attr]
    if isinstance(node, (ast.keyword, ast.arg)):
        return [node.arg] if node.arg else []
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return [node.name]
    if isinstance(node, ast.alias):
        return [node.name, node.asname or ""]
    return []


def modules_naming() -> dict[str, set[str]]:
    """Option name -> the modules of ggrun/ whose code names it."""
    names = set(sampling.SAMPLING_FIELDS)
    found: dict[str, set[str]] = {n: set() for n in names}
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG.parent).as_posix()
        if rel.startswith(NOT_YET_CHECKED):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docstrings = _docstrings(tree)
        for node in ast.walk(tree):
            for word in _words(node, docstrings):
                if word in names:
                    found[word].add(rel)
    return found


def test_an_option_is_named_in_two_modules_at_most() -> None:
    found = modules_naming()
    over = {n: sorted(m) for n, m in found.items() if len(m) > 2}
    assert not over, f"sampling options named outside {sorted(HOMES)}: {over}"
    assert found["top_k"] == HOMES  # the scan sees code (the test can fail)


def test_the_scan_reads_code_not_prose() -> None:
    code = 'def f(top_k):\n    """top_k in a docstring"""\n    g(x.min_p, seed=1, k="--top-p")\n'
    code += 'msg = "the temperature is prose"\n'
    tree = ast.parse(code)
    ds = _docstrings(tree)
    words = {w for node in ast.walk(tree) for w in _words(node, ds)}
    assert {"top_k", "min_p", "seed", "top_p"} <= words
    assert "temperature" not in words


SCALARS = [o for o in sampling.OPTIONS if o.kind is not sampling.TOKEN_MAP]


def test_each_row_is_well_formed() -> None:
    for o in sampling.OPTIONS:
        assert o.kind in (int, float, sampling.TOKEN_MAP), o.name
        assert (o.kind is sampling.TOKEN_MAP) == (o.most > 0), o.name
        assert o.lo < o.hi and o.help and o.flag.startswith("--"), o.name
        assert o.default is None or o.check(o.default) == o.default, o.name
        assert set(o.apis) <= set(sampling.APIS), o.name
    assert len(sampling.SAMPLING_FIELDS) == len(set(sampling.SAMPLING_FIELDS))


def test_the_config_and_presets_follow_the_table() -> None:
    cfg = sampling.SamplingConfig()
    assert cfg.as_dict() == {o.name: o.default for o in sampling.OPTIONS}
    assert cfg.replace(top_k=3).top_k == 3 and cfg.top_k == sampling.BY_NAME["top_k"].default
    assert cfg.replace(top_k=3) == sampling.SamplingConfig(top_k=3)
    with pytest.raises(AttributeError):
        cfg.top_k = 1  # type: ignore[misc]
    with pytest.raises(AttributeError):
        _ = cfg.no_such_option
    import pickle

    assert pickle.loads(pickle.dumps(cfg.replace(seed=5))) == cfg.replace(seed=5)
    assert "seed" not in sampling.PRESET_FIELDS and "top_k" in sampling.PRESET_FIELDS


def test_cli_flags_come_from_the_table() -> None:
    for o in sampling.OPTIONS:
        hint, option = cli_options.SAMPLING[o.name]
        assert o.flag in (option.default, *option.param_decls) and option.help == o.help


def test_task_keys_come_from_the_table() -> None:
    assert set(sampling.TASK_FIELDS) <= TASK_KEYS
    assert "settings" not in TASK_KEYS  # the field that holds them is not a key


@pytest.mark.parametrize("o", SCALARS, ids=lambda o: o.name)
def test_every_option_is_range_checked_once(o: sampling.Option) -> None:
    bad = o.hi + 1 if o.kind is int else o.hi * 2 + 1
    with pytest.raises(InvalidArgument, match=rf"^{o.name} must be .*, got ") as err:
        Request.build(prompt="x", **{o.name: o.kind(bad)})
    assert str(err.value).count(o.name) == 1
    with pytest.raises(InvalidArgument, match=rf"^{o.name} must be (an integer|a number)"):
        Request.build(prompt="x", **{o.name: "1"})
    good = o.default if o.default is not None else o.kind(o.lo)
    assert Request.build(prompt="x", **{o.name: good}).overrides == {o.name: good}


def test_a_token_map_is_checked_once() -> None:
    assert Request.build(prompt="x", logit_bias={"9": -100, 2: 1}).overrides == {
        "logit_bias": ((2, 1.0), (9, -100.0))
    }
    for bad, says in [
        ({"1": 101}, r"^logit_bias\[1\] must be between -100 and 100, got 101"),
        ({"1": "2"}, r"^logit_bias\[1\] must be a number, got str"),
        ({"1": float("nan")}, r"^logit_bias\[1\] must be a finite number"),
        ({"x": 1}, r"^logit_bias keys must be token ids"),
        ({True: 1}, r"^logit_bias keys must be token ids"),
        ({"4294967296": 1}, r"^logit_bias keys must be token ids"),
        ({"\u0661": 1}, r"^logit_bias keys must be token ids"),  # a digit, not ASCII
        ({str(i): 1 for i in range(301)}, r"^logit_bias may hold at most 300 tokens"),
        ("1=2", r"^logit_bias must map token ids to numbers, got str"),
    ]:
        with pytest.raises(InvalidArgument, match=says):
            Request.build(prompt="x", logit_bias=bad)


def test_wire_fields() -> None:
    assert sampling.wire_fields("anthropic") == {n: n for n in ("temperature", "top_k", "top_p")}
    assert set(sampling.wire_fields("openai").values()) == set(sampling.SAMPLING_FIELDS)
    for api in ("responses", "ollama"):  # neither has OpenAI's logit_bias
        assert set(sampling.wire_fields(api).values()) == set(sampling.SAMPLING_FIELDS) - {
            "logit_bias"
        }
    with pytest.raises(ValueError):
        sampling.wire_fields("grpc")
    body: dict[str, Any] = {"top_k": 5, "temperature": 1, "seed": None, "model": "m"}
    assert sampling.from_wire("ollama", body) == {"top_k": 5, "temperature": 1.0}
    with pytest.raises(InvalidArgument, match=r"^options\.top_k must be an integer, got float"):
        sampling.from_wire("ollama", {"top_k": 1.5}, prefix="options.")
    with pytest.raises(InvalidArgument, match=r"^top_p must be above 0 and at most 1, got 0"):
        sampling.from_wire("openai", {"top_p": 0})
    with pytest.raises(InvalidArgument, match="finite"):
        sampling.from_wire("openai", {"temperature": 10**400})


def test_task_file_settings_are_checked(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text("system: Be brief.\ntop_p: 0.5\nrepeat_penalty: 1.1\n")
    task = load_task(str(path))
    assert task.options()["top_p"] == 0.5 and task.options()["repeat_penalty"] == 1.1
    path.write_text("system: Be brief.\n\ntop_p: 3\n")
    with pytest.raises(PresetError, match=r"t\.yaml, line 3: top_p must be above 0"):
        load_task(str(path))
    path.write_text("system: Be brief.\ntop_k: many\n")
    with pytest.raises(PresetError, match=r"line 2: 'top_k' has the wrong type \(str\)"):
        load_task(str(path))
    for key in ("seed: 1", "settings: [[top_k, 1]]"):
        path.write_text(f"system: Be brief.\n{key}\n")
        with pytest.raises(PresetError, match="unknown key"):
            load_task(str(path))


# typical-p and mirostat, added as one row each: the CLI, presets and tasks take them


def test_the_cli_takes_typical_p_and_mirostat(smol_path: Path) -> None:
    from typer.testing import CliRunner

    from ggrun.cli.app import app

    args = ["generate", str(smol_path), "Tell me a story.", "-n", "12", "--ctx", "256"]
    args += ["--seed", "3", "--temp", "0.9"]
    new = ["--typical-p", "0.9", "--mirostat", "2", "--mirostat-tau", "4"]
    runner = CliRunner()
    first = runner.invoke(app, args + new)
    assert first.exit_code == 0, first.output
    assert first.stdout and runner.invoke(app, args + new).stdout == first.stdout
    assert runner.invoke(app, args).stdout != first.stdout
    bad = runner.invoke(app, [*args, "--typical-p", "0"])
    assert bad.exit_code == 1 and "typical_p must be above 0 and at most 1" in bad.stderr
    bad = runner.invoke(app, [*args, "--mirostat", "3"])
    assert bad.exit_code != 0 and "--mirostat" in bad.output


def test_a_preset_sets_typical_p_and_mirostat(custom_presets: Path) -> None:
    path = custom_presets / "sampling.yaml"
    path.write_text("steady:\n  typical_p: 0.9\n  mirostat: 2\n  mirostat_eta: 0.2\n")
    cfg = sampling.resolve(preset="steady")
    assert (cfg.typical_p, cfg.mirostat, cfg.mirostat_tau, cfg.mirostat_eta) == (0.9, 2, 5.0, 0.2)
    sampling.load_presets.cache_clear()
    path.write_text("steady:\n  mirostat: 1\n  typical_p: 1.5\n")
    with pytest.raises(PresetError, match=r"preset 'steady', line 3: typical_p must be above 0"):
        sampling.load_presets()


def test_a_task_sets_typical_p(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text("system: Be brief.\ntypical_p: 0.5\nmirostat: 2\n")
    opts = load_task(str(path)).options()
    assert (opts["typical_p"], opts["mirostat"]) == (0.5, 2)
    path.write_text("system: Be brief.\ntypical_p: 0\n")
    with pytest.raises(PresetError, match=r"line 2: typical_p must be above 0 and at most 1"):
        load_task(str(path))
