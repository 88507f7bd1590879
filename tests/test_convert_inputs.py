"""Hostile converter inputs: config.json, the shard index and tokenizer.json with wrong
types, deep nesting and huge numbers end as one ConversionError line, never a traceback."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ggrun.cli.app import app
from ggrun.converter import load
from ggrun.errors import ConversionError, GgrunError

convert = load()
DEEP = "[" * 100_000 + "]" * 100_000
HUGE = "1" + "0" * 5000


def _copy(tiny_src: Path, dst: Path, **files: str) -> Path:
    """A checkpoint folder: links to tiny_src's files, with some files replaced."""
    dst.mkdir()
    replaced = {name.replace("__", "."): text for name, text in files.items()}
    for f in tiny_src.iterdir():
        if f.name not in replaced:
            (dst / f.name).symlink_to(f)
    for name, text in replaced.items():
        (dst / name).write_text(text)
    return dst


def _config(tiny_src: Path, **changes: Any) -> str:
    config = json.loads((tiny_src / "config.json").read_text())
    config.update(changes)
    return json.dumps(config)


BAD_CONFIGS = {
    "string head count": {"num_attention_heads": "4"},
    "float layer count": {"num_hidden_layers": 2.0},
    "null layer count": {"num_hidden_layers": None},
    "bool hidden size": {"hidden_size": True},
    "huge layer count": {"num_hidden_layers": 10**30},
    "negative vocab": {"vocab_size": -151936},
    "list kv heads": {"num_key_value_heads": [2]},
    "object head_dim": {"head_dim": {"value": 16}},
    "string rope_theta": {"rope_theta": "1e6"},
    "list rms eps": {"rms_norm_eps": [1e-6]},
    "huge float": {"rope_theta": 1e300},
    "yarn without its length": {"rope_scaling": {"rope_type": "yarn", "factor": 4.0}},
    "rope scaling a string": {"rope_scaling": "linear"},
    "string factor": {"rope_scaling": {"rope_type": "linear", "factor": "4"}},
    "huge context": {"max_position_embeddings": 2**40},
    "float context": {"max_position_embeddings": 40960.5},
}


@pytest.mark.parametrize("case", BAD_CONFIGS)
def test_bad_config_values(tiny_src: Path, tmp_path: Path, case: str) -> None:
    folder = _copy(tiny_src, tmp_path / "m", config__json=_config(tiny_src, **BAD_CONFIGS[case]))
    with pytest.raises(ConversionError, match="config.json"):
        convert.plan(folder, "q8_0")


@pytest.mark.parametrize(
    "text",
    [
        DEEP,
        '{"a": ' * 50_000 + "1" + "}" * 50_000,
        '{"num_hidden_layers": ' + HUGE + "}",
        '{"num_hidden_layers": 1e999}',
        "[]",
        "null",
        '{"architectures": [3]}',
        '{"architectures": "Qwen3ForCausalLM"}',
        "\udcff".encode("utf-8", "surrogatepass").decode("latin-1"),
    ],
    ids=[
        "deep-list",
        "deep-object",
        "5000-digits",
        "infinity",
        "list",
        "null",
        "arch-int",
        "arch-str",
        "not-utf8",
    ],  # fmt: skip
)
def test_bad_config_files(tiny_src: Path, tmp_path: Path, text: str) -> None:
    folder = _copy(tiny_src, tmp_path / "m", config__json=text)
    with pytest.raises(GgrunError):
        convert.plan(folder, "q8_0")


def _index(weight_map: Any) -> str:
    return json.dumps({"metadata": {}, "weight_map": weight_map})


@pytest.mark.parametrize(
    "text",
    [
        _index({"model.embed_tokens.weight": ["model.safetensors"]}),
        _index({"model.embed_tokens.weight": 3}),
        _index({"model.embed_tokens.weight": None}),
        _index(["model.safetensors"]),
        _index(None),
        _index({"model.embed_tokens.weight": "../model.safetensors"}),
        _index({"model.embed_tokens.weight": "/etc/passwd"}),
        _index({"model.embed_tokens.weight": "model.safetensors"}),  # tensors in no index
        DEEP,
        '{"weight_map": {"x": ' + HUGE + "}}",
    ],
    ids=[
        "list",
        "int",
        "null",
        "map-is-list",
        "map-null",
        "dotdot",
        "absolute",
        "partial",
        "deep",
        "5000-digits",
    ],  # fmt: skip
)
def test_bad_shard_index(tiny_src: Path, tmp_path: Path, text: str) -> None:
    folder = _copy(tiny_src, tmp_path / "m", model__safetensors__index__json=text)
    with pytest.raises(ConversionError, match="index"):
        convert.plan(folder, "q8_0")


@pytest.mark.parametrize(
    "tokenizer",
    [
        DEEP,
        json.dumps({"model": {"type": "BPE", "vocab": {"a": "1"}}}),
        json.dumps({"model": {"type": "BPE", "vocab": {"a": -1}}}),
        json.dumps({"model": {"type": "BPE", "vocab": {"a": 1}}, "added_tokens": [{"id": "x"}]}),
        json.dumps({"model": {"type": "BPE", "vocab": {"a": 1}}, "added_tokens": {"id": 1}}),
        json.dumps({"model": {"type": "BPE", "vocab": [1, 2]}}),
    ],
    ids=["deep", "string-id", "negative-id", "added-string-id", "added-object", "vocab-list"],
)
def test_bad_tokenizer(tiny_src: Path, tmp_path: Path, tokenizer: str) -> None:
    folder = _copy(tiny_src, tmp_path / "m", tokenizer__json=tokenizer)
    with pytest.raises(ConversionError, match="tokenizer"):
        convert.plan(folder, "q8_0")


@pytest.mark.parametrize(
    "config",
    [
        {"num_attention_heads": "4"},
        {"num_hidden_layers": 10**30},
        {"rope_scaling": {"rope_type": "yarn", "factor": 4.0}},
    ],
)
def test_cli_shows_one_line(tiny_src: Path, tmp_path: Path, config: dict[str, Any]) -> None:
    folder = _copy(tiny_src, tmp_path / "m", config__json=_config(tiny_src, **config))
    for extra in (["--dry-run"], ["-o", str(tmp_path / "out")]):
        r = CliRunner().invoke(app, ["convert", str(folder), "--quant", "f16", *extra])
        assert r.exit_code == 1, r.output
        assert "Traceback" not in r.output
        lines = [x for x in r.output.splitlines() if x.strip()]
        assert len(lines) == 1 and lines[0].startswith("ggrun: error"), r.output
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_bad_generation_config_is_left_out(tiny_src: Path, tmp_path: Path) -> None:
    import gguf

    gen = {"top_k": 20.5, "top_p": "0.9", "temperature": 1e300, "repetition_penalty": 1.1}
    folder = _copy(tiny_src, tmp_path / "m", generation_config__json=json.dumps(gen))
    (out,) = convert.convert(folder, "f16", tmp_path / "out")
    fields = gguf.GGUFReader(out).fields
    assert abs(fields[gguf.Keys.General.SAMPLING_PENALTY_REPEAT].contents() - 1.1) < 1e-6
    for key in ("SAMPLING_TOP_K", "SAMPLING_TOP_P", "SAMPLING_TEMP"):
        assert getattr(gguf.Keys.General, key) not in fields
