"""The converter on tiny synthetic checkpoints: outputs, fidelity, and bad inputs."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import gguf
import numpy as np
import pytest

from ggrun.converter import load
from ggrun.engine import LoadConfig, Model
from ggrun.errors import ConversionError, UnsupportedArchitecture
from tests.checkpoints import HASHED_KEYS, TINY, VALUE_KEYS, to_bf16, write_qwen3
from tests.helpers import QWEN3_TEMPLATE

convert = load()


def _src_f32(src: Path, name: str) -> np.ndarray:
    with load("safetensors").SafetensorsFile(src / "model.safetensors") as f:
        bits = np.array(f.array(name))
    return (bits.astype(np.uint32) << 16).view(np.float32)


def _tensors(path: Path) -> dict[str, gguf.ReaderTensor]:
    return {t.name: t for t in gguf.GGUFReader(path).tensors}


def test_outputs_and_names(tiny_out: dict[str, Path]) -> None:
    assert sorted(tiny_out) == ["BF16", "F16", "Q4_K_M", "Q8_0"]
    assert all(p.name.startswith("Tiny-Qwen3-") for p in tiny_out.values())
    assert not list(tiny_out["F16"].parent.glob("*.tmp"))
    assert not list(tiny_out["F16"].parent.glob(".ggrun-convert-*"))


@pytest.mark.parametrize("quant", ["F16", "BF16", "Q8_0", "Q4_K_M"])
def test_outputs_load_and_generate(tiny_out: dict[str, Path], quant: str) -> None:
    with Model(tiny_out[quant], LoadConfig(n_ctx=128)) as m:
        assert m.info.arch == "qwen3"
        r = m.generate("Hello", max_tokens=6, temperature=0)
        assert r.completion_tokens == 6 or r.finish_reason == "stop"


def test_float_types_follow_upstream(tiny_out: dict[str, Path]) -> None:
    t = _tensors(tiny_out["F16"])
    assert "output.weight" not in t  # tied embeddings
    F32, F16 = gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16
    for name, ti in t.items():
        one_d = name.endswith("_norm.weight")
        assert ti.tensor_type == (F32 if one_d else F16), name
    assert {"blk.0.attn_q_norm.weight", "blk.0.attn_k_norm.weight"} <= set(t)
    assert list(t["blk.0.attn_q.weight"].shape) == [TINY.hidden, TINY.heads * TINY.head_dim]


def test_bf16_is_lossless_and_f16_is_numpy_rounding(
    tiny_src: Path, tiny_out: dict[str, Path]
) -> None:
    name = "model.layers.1.mlp.down_proj.weight"
    x = _src_f32(tiny_src, name)
    bf = _tensors(tiny_out["BF16"])["blk.1.ffn_down.weight"]
    assert np.array_equal(np.asarray(bf.data).view(np.uint16).reshape(x.shape), to_bf16(x))
    f16 = _tensors(tiny_out["F16"])["blk.1.ffn_down.weight"]
    assert np.array_equal(np.asarray(f16.data).reshape(x.shape), x.astype(np.float16))


def test_quantized_mixes(tiny_out: dict[str, Path]) -> None:
    q8 = _tensors(tiny_out["Q8_0"])
    assert q8["token_embd.weight"].tensor_type == gguf.GGMLQuantizationType.Q8_0
    assert q8["blk.0.attn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    r = gguf.GGUFReader(tiny_out["Q4_K_M"])
    assert r.get_field("general.file_type").contents() == 15  # MOSTLY_Q4_K_M


def test_tokenizer_and_metadata(tiny_out: dict[str, Path]) -> None:
    r = gguf.GGUFReader(tiny_out["BF16"])

    def f(key: str):  # type: ignore[no-untyped-def]
        return r.get_field(key).contents()

    tokens, types = f("tokenizer.ggml.tokens"), f("tokenizer.ggml.token_type")
    assert len(tokens) == 151936 and len(types) == 151936
    assert tokens[151667] == "<think>" and types[151667] == gguf.TokenType.USER_DEFINED
    assert tokens[151645] == "<|im_end|>" and types[151645] == gguf.TokenType.CONTROL
    assert tokens[151700] == "[PAD151700]" and types[151700] == gguf.TokenType.UNUSED
    assert f("tokenizer.ggml.pre") == "qwen2"
    assert f("tokenizer.ggml.eos_token_id") == 151645
    assert len(f("tokenizer.ggml.merges")) > 150_000
    assert f("tokenizer.chat_template") == QWEN3_TEMPLATE
    assert f("qwen3.attention.key_length") == TINY.head_dim
    assert f("qwen3.context_length") == 40960
    assert f("general.file_type") == 32  # MOSTLY_BF16
    assert f("general.sampling.top_k") == 20
    assert abs(f("general.sampling.temp") - 0.6) < 1e-6


def test_thinking_template_survives_conversion(tiny_out: dict[str, Path]) -> None:
    with Model(tiny_out["Q8_0"], LoadConfig(n_ctx=128)) as m:
        prompt = m.format_chat([{"role": "user", "content": "hi"}], think=False)
        assert prompt.endswith("<think>\n\n</think>\n\n")
        # <think> is one token, as in Qwen3
        assert m.tokenize("<think>") == [151667]


def test_dry_run_writes_nothing(tiny_src: Path, tmp_path: Path) -> None:
    p = convert.plan(tiny_src, "q8_0,f16", tmp_path)
    assert p.hf_arch == "Qwen3ForCausalLM" and p.gguf_arch == "qwen3"
    assert p.intermediate == "bf16" and p.source_dtype == "BF16"
    assert [o.quant for o in p.outputs] == ["q8_0", "f16"]
    assert p.types == {"F32": 2 * 4 + 1, "F16": 1 + 2 * 7}
    assert list(tmp_path.iterdir()) == []


def test_sharded_equals_single(qwen_path: Path, tiny_out: dict[str, Path], tmp_path: Path) -> None:
    src = write_qwen3(tmp_path / "Tiny-Qwen3", qwen_path, QWEN3_TEMPLATE, shards=2)
    (out,) = convert.convert(src, "bf16", tmp_path / "o")
    a, b = _tensors(out), _tensors(tiny_out["BF16"])
    assert set(a) == set(b)
    for name in a:
        assert np.array_equal(np.asarray(a[name].data), np.asarray(b[name].data)), name


@pytest.mark.parametrize("family", ["qwen2", "llama"])
def test_other_families(family: str, qwen_path: Path, tmp_path: Path) -> None:
    src = write_qwen3(tmp_path / f"Tiny-{family}", qwen_path, QWEN3_TEMPLATE, family=family)
    (out,) = convert.convert(src, "f32", tmp_path)
    t = _tensors(out)
    if family == "qwen2":
        assert "blk.0.attn_q.bias" in t
    else:  # q and k rows are permuted for llama.cpp's rope, as upstream does
        x = _src_f32(src, "model.layers.0.self_attn.k_proj.weight")
        n = TINY.kv_heads
        want = x.reshape(n, 2, x.shape[0] // n // 2, x.shape[1]).swapaxes(1, 2).reshape(x.shape)
        assert np.array_equal(np.asarray(t["blk.0.attn_k.weight"].data).reshape(x.shape), want)
    with Model(out, LoadConfig(n_ctx=128)) as m:
        assert m.generate("Hi", max_tokens=3, temperature=0).text is not None


# -- bad inputs: one clear error, nothing left behind -------------------------------------


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _assert_clean(folder: Path) -> None:
    left = [p.name for p in folder.iterdir()] if folder.exists() else []
    assert left == [], left


def test_truncated_shard(tiny_src: Path, tmp_path: Path) -> None:
    src = _copy(tiny_src, tmp_path / "src")
    f = src / "model.safetensors"
    with open(f, "r+b") as fh:
        fh.truncate(f.stat().st_size // 2)
    with pytest.raises(ConversionError, match="past the end|truncated"):
        convert.convert(src, "q8_0", tmp_path / "out")
    _assert_clean(tmp_path / "out")


def test_offset_past_end(tiny_src: Path, tmp_path: Path) -> None:
    src = _copy(tiny_src, tmp_path / "src")
    f = src / "model.safetensors"
    raw = f.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    name = "model.norm.weight"
    begin, end = header[name]["data_offsets"]
    header[name]["data_offsets"] = [begin + 10**9, end + 10**9]
    blob = json.dumps(header).encode()
    f.write_bytes(len(blob).to_bytes(8, "little") + blob + raw[8 + n :])
    with pytest.raises(ConversionError, match="model.norm.weight"):
        convert.convert(src, "f16", tmp_path / "out")
    _assert_clean(tmp_path / "out")


@pytest.mark.parametrize(
    ("mutate", "message", "error"),
    [
        (lambda d: (d / "config.json").unlink(), "no config.json", ConversionError),
        (lambda d: (d / "tokenizer.json").unlink(), "missing tokenizer", ConversionError),
        (
            lambda d: _edit_config(d, architectures=["MysteryForCausalLM"]),
            "MysteryForCausalLM",
            UnsupportedArchitecture,
        ),
        (lambda d: _edit_config(d, intermediate_size=256), "config.json implies", ConversionError),
    ],
)
def test_bad_folders(
    tiny_src: Path,
    tmp_path: Path,
    mutate,
    message: str,  # type: ignore[no-untyped-def]
    error: type[Exception],
) -> None:
    src = _copy(tiny_src, tmp_path / "src")
    mutate(src)
    with pytest.raises(error, match=message):
        convert.convert(src, "q4_k_m", tmp_path / "out")
    _assert_clean(tmp_path / "out")


def _edit_config(folder: Path, **changes: object) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(changes)
    (folder / "config.json").write_text(json.dumps(cfg))


def test_unwritable_output(tiny_src: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(ConversionError, match="cannot create"):
        convert.convert(tiny_src, "f16", blocker / "out")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if not os.access(ro, os.W_OK):  # root may write anywhere
            with pytest.raises(ConversionError, match="not writable"):
                convert.convert(tiny_src, "f16", ro)
    finally:
        ro.chmod(0o700)
    _assert_clean(ro)


def test_existing_output_needs_force(tiny_src: Path, tmp_path: Path) -> None:
    target = tmp_path / "Tiny-Qwen3-F16.gguf"
    target.write_text("keep me")
    with pytest.raises(ConversionError, match="--force"):
        convert.convert(tiny_src, "f16", tmp_path)
    assert target.read_text() == "keep me"
    convert.convert(tiny_src, "f16", tmp_path, force=True)
    assert target.stat().st_size > 1000


def test_unknown_quant(tiny_src: Path) -> None:
    with pytest.raises(ConversionError, match="unknown quant 'q3_k'"):
        convert.plan(tiny_src, "q3_k")


# -- fidelity: byte-identical to llama.cpp's own tools ------------------------------------
# The references come from benchmarks/fidelity_reference.py (upstream convert_hf_to_gguf.py
# and llama-quantize, run on the same deterministic checkpoints).

DATA = Path(__file__).parent / "data"
COMPARED = HASHED_KEYS + VALUE_KEYS


def _assert_same(ours: dict, ref: dict) -> None:  # type: ignore[type-arg]
    assert set(ours["tensors"]) == set(ref["tensors"])
    for name, want in ref["tensors"].items():
        assert ours["tensors"][name] == want, name
    for key in COMPARED:
        assert ours[key] == ref[key], key


@pytest.mark.parametrize("quant", ["f16", "bf16", "q8_0", "q4_k_m"])
def test_identical_to_llama_cpp_tools(tiny_out: dict[str, Path], quant: str) -> None:
    from tests.checkpoints import digest

    ref = json.loads((DATA / "tiny_qwen3_reference.json").read_text())[quant]
    _assert_same(digest(tiny_out[quant.upper()]), ref)


@pytest.fixture(scope="module")
def tiny_more(tiny_src: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The quants the session's tiny_out leaves out, from the same checkpoint."""
    paths = convert.convert(tiny_src, "q6_k,q5_k_m,q4_0", tmp_path_factory.mktemp("more"))
    return {p.name.rsplit("-", 1)[1].removesuffix(".gguf"): p for p in paths}


@pytest.mark.parametrize("quant", ["q6_k", "q5_k_m", "q4_0"])
def test_new_quants_identical_to_llama_quantize(tiny_more: dict[str, Path], quant: str) -> None:
    from tests.checkpoints import digest

    ref = json.loads((DATA / "tiny_qwen3_reference.json").read_text())[quant]
    ours = digest(tiny_more[quant.upper()])
    _assert_same(ours, ref)
    # rows of 64 are too short for K-quant blocks (256): llama.cpp falls back, as upstream
    main = {"q6_k": "Q8_0", "q5_k_m": "Q5_1", "q4_0": "Q4_0"}[quant]
    assert main in {t["type"] for t in ours["tensors"].values()}
    with Model(tiny_more[quant.upper()], LoadConfig(n_ctx=64)) as m:
        assert m.info.file_type == quant.upper()
        r = m.generate("Hello", max_tokens=4, temperature=0)
        assert r.completion_tokens == 4 or r.finish_reason == "stop"


def test_real_weights_round_trip(qwen_path: Path, tmp_path: Path) -> None:
    """Qwen2.5-Coder-0.5B dequantized to a BF16 folder, converted back: it still answers,
    and its tensors equal llama.cpp's conversion of the same folder."""
    from tests.checkpoints import dequantize_to_hf, digest

    folder = dequantize_to_hf(qwen_path, tmp_path / "Qwen2.5-Coder-0.5B-Instruct")
    (out,) = convert.convert(folder, "bf16", tmp_path)
    ref = json.loads((DATA / "qwen25_roundtrip_reference.json").read_text())["bf16"]
    _assert_same(digest(out), ref)
    with Model(out, LoadConfig(n_ctx=512)) as m:
        r = m.chat(
            [{"role": "user", "content": "What is the capital of France? One word."}],
            temperature=0,
            max_tokens=10,
        )
    assert "Paris" in r.text


def test_hub_repo_id_offline_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConversionError, match="Qwen/Qwen3-1.7B"):
        convert.convert("Qwen/Qwen3-1.7B", "q4_k_m", tmp_path)
    _assert_clean(tmp_path)
