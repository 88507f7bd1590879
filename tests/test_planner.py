"""The planner: memory arithmetic, offload, context and threads, for real and profiled hardware."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import ggrun
from ggrun import hardware, planner
from ggrun.cli.app import app
from ggrun.errors import InsufficientMemory, InvalidArgument
from ggrun.gguffile import read_gguf
from ggrun.planner import ModelShape, plan

MIB, GIB = 1 << 20, 1 << 30
PROFILES = hardware.profile_names()


def write_shaped_gguf(path: Path, n_layer: int = 28, layer_elems: int = 4096) -> Path:
    """A tiny GGUF whose metadata declares Qwen3-1.7B's shapes (its tensors are small)."""
    import gguf

    w = gguf.GGUFWriter(str(path), "qwen3")
    w.add_block_count(n_layer)
    w.add_context_length(40960)
    w.add_embedding_length(2048)
    w.add_feed_forward_length(6144)
    w.add_head_count(16)
    w.add_head_count_kv(8)
    w.add_key_length(128)
    w.add_value_length(128)
    w.add_vocab_size(151936)
    w.add_tensor("token_embd.weight", np.zeros((64, 32), dtype=np.float16))
    w.add_tensor("output_norm.weight", np.ones(32, dtype=np.float32))
    for i in range(n_layer):
        w.add_tensor(f"blk.{i}.attn_q.weight", np.zeros(layer_elems, dtype=np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def shaped(tmp_path_factory: pytest.TempPathFactory) -> ModelShape:
    path = write_shaped_gguf(tmp_path_factory.mktemp("shaped") / "qwen3-1.7b-shaped.gguf")
    return ModelShape.from_gguf(read_gguf(path))


def test_kv_cache_of_qwen3_1_7b_shapes(shaped: ModelShape) -> None:
    # 28 layers x 8 KV heads x 128 x 2 (K and V) x 2 bytes x 4096 tokens
    assert shaped.kv_bytes(4096) == 28 * 8 * 128 * 2 * 2 * 4096 == 448 * MIB
    assert shaped.n_layer == 28 and shaped.n_vocab == 151936 and shaped.n_ctx_train == 40960
    assert shaped.layer_bytes == (4096 * 2,) * 28
    assert shaped.output_bytes == 64 * 32 * 2 + 32 * 4  # tied: a copy of token_embd + norm
    assert shaped.compute_bytes(512) == int(304.75 * MIB)  # llama.cpp's log for Qwen3-1.7B


def test_alias_estimate_matches_the_real_shape(shaped: ModelShape) -> None:
    (label, est), *_ = planner.shapes_for("qwen3-1.7b:q4_k_m")
    assert est.estimated and label == "qwen3-1.7b:q4_k_m"
    assert est.kv_bytes(4096) == shaped.kv_bytes(4096)
    assert est.compute_bytes(512) == shaped.compute_bytes(512)


def _llama_buffers(path: Path, n_ctx: int) -> dict[str, float]:
    from ggrun.engine import LoadConfig, Model
    from ggrun.llama import captured_llama_log

    with captured_llama_log() as lines, Model(path, LoadConfig(n_ctx=n_ctx)):
        pass
    text = "".join(lines)
    kv = re.search(r"CPU KV buffer size =\s+([\d.]+) MiB", text)
    compute = re.search(r"sched_reserve:\s+CPU compute buffer size =\s+([\d.]+) MiB", text)
    assert kv and compute, text[-2000:]
    return {"kv": float(kv.group(1)), "compute": float(compute.group(1))}


@pytest.mark.parametrize(("which", "n_ctx"), [("smol_path", 512), ("qwen_path", 1024)])
def test_predictions_match_what_llama_cpp_allocates(
    which: str, n_ctx: int, request: pytest.FixtureRequest
) -> None:
    path = request.getfixturevalue(which)
    shape = ModelShape.from_gguf(read_gguf(path))
    actual = _llama_buffers(path, n_ctx)
    assert shape.kv_bytes(n_ctx) / MIB == actual["kv"]
    assert shape.compute_bytes(min(512, n_ctx)) / MIB == pytest.approx(actual["compute"], abs=0.01)


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("which", ["smol_path", "qwen_path", "shaped"])
def test_every_profile_plans_every_model(
    profile: str, which: str, request: pytest.FixtureRequest
) -> None:
    value = request.getfixturevalue(which)
    shape = value if isinstance(value, ModelShape) else ModelShape.from_gguf(read_gguf(value))
    hw = hardware.load_profile(profile)
    p = plan(shape, hw)
    assert p.n_ctx == min(shape.n_ctx_train, 4096)
    assert p.n_threads == hw.generation_threads and p.n_threads_batch == hw.batch_threads
    assert p.total_bytes <= p.budget_bytes + (hw.ram_available if p.n_gpu_layers else 0)
    if hw.usable_gpus:
        gpu = hw.usable_gpus[0]
        assert p.device == gpu.backend and p.n_gpu_layers == shape.n_layer + 1
        assert p.gpu_bytes <= planner.gpu_budget(gpu, hw)
        assert p.use_mmap == gpu.unified  # off only when all of it sits on a discrete GPU
    else:
        assert (p.device, p.n_gpu_layers, p.gpu_bytes, p.use_mmap) == ("cpu", 0, 0, True)
        assert p.ram_bytes == shape.weights_bytes + p.kv_bytes + p.compute_bytes
    assert p.max_ctx >= p.n_ctx


def _gpu_box(free: int) -> hardware.Hardware:
    base = hardware.load_profile("cuda-8gb")
    gpu = dataclasses.replace(base.gpus[0], free_bytes=free, total_bytes=free)
    return dataclasses.replace(base, gpus=(gpu,))


def _big_layers(shaped: ModelShape) -> ModelShape:
    """The shaped model with Qwen3-1.7B Q4_K_M's real per-layer size (about 30 MiB)."""
    return dataclasses.replace(
        shaped,
        layer_bytes=(30 * MIB,) * 28,
        input_bytes=243 * MIB,
        output_bytes=243 * MIB,
        weights_bytes=28 * 30 * MIB + 243 * MIB,
    )


def test_partial_offload_fills_the_gpu_and_no_more(shaped: ModelShape) -> None:
    model = _big_layers(shaped)
    hw = _gpu_box(GIB + 900 * MIB)  # 900 MiB after the 1 GiB reserve
    p = plan(model, hw)
    assert 0 < p.n_gpu_layers < 28
    # each layer: 30 MiB of weights + 16 MiB of KV at 4096; plus the 304.75 MiB compute buffer
    assert p.n_gpu_layers == int((900 - 304.75) // (30 + 16))
    assert p.gpu_bytes <= 900 * MIB
    assert p.use_mmap  # partly on the CPU
    with pytest.raises(InsufficientMemory, match=rf"at most {p.n_gpu_layers} layers fit"):
        plan(model, hw, gpu_layers=p.n_gpu_layers + 1)
    assert plan(model, hw, gpu_layers=3).n_gpu_layers == 3  # explicit values win
    everything = plan(model, _gpu_box(8 * GIB), gpu_layers="all")
    assert everything.n_gpu_layers == 29 and not everything.use_mmap
    assert everything.gpu_bytes == 28 * 46 * MIB + 243 * MIB + model.compute_bytes(512)


def test_unified_memory_budget_is_the_working_set() -> None:
    hw = hardware.load_profile("mac-m1-8gb")
    assert planner.gpu_budget(hw.gpus[0], hw) == 5 * GIB - GIB  # min(5461 MiB, RAM free)


def test_explicit_values_that_cannot_work(shaped: ModelShape) -> None:
    cpu = hardware.load_profile("cpu-2core-4gb")
    with pytest.raises(InvalidArgument, match="no cuda support.*GGML_CUDA"):
        plan(shaped, cpu, device="cuda")
    with pytest.raises(InvalidArgument, match="needs a GPU"):
        plan(shaped, cpu, gpu_layers=5)
    with pytest.raises(InvalidArgument, match="unknown device"):
        plan(shaped, cpu, device="tpu")
    with pytest.raises(InsufficientMemory, match=r"largest context that fits is \d+"):
        plan(shaped, cpu, n_ctx=40960)
    assert plan(shaped, cpu, n_threads=7).n_threads == 7


def test_default_context_shrinks_to_fit_and_says_so(shaped: ModelShape) -> None:
    model = dataclasses.replace(_big_layers(shaped), weights_bytes=int(2.5 * GIB))
    tight = dataclasses.replace(hardware.load_profile("cpu-2core-4gb"), ram_available=3 * GIB)
    p = plan(model, tight)
    assert p.n_ctx < 4096 and p.n_ctx == p.max_ctx and p.n_ctx % 256 == 0
    assert any("context reduced" in n for n in p.notes)
    tiny = dataclasses.replace(tight, ram_available=2 * GIB)
    with pytest.raises(InsufficientMemory, match="smaller quant"):
        plan(model, tiny)


def test_fit_picks_the_best_quant_of_an_alias() -> None:
    r = CliRunner().invoke(app, ["fit", "qwen3-1.7b", "--hardware", "cpu-2core-4gb", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    by = {q["model"]: q for q in out["quants"]}
    assert "plan" in by["qwen3-1.7b:q4_k_m"] and "plan" in by["qwen3-1.7b:q8_0"]
    assert "smaller quant" in by["qwen3-1.7b:f16"]["error"]
    assert out["best"] == "qwen3-1.7b:q8_0"
    plan = by["qwen3-1.7b:q4_k_m"]["plan"]
    # a thinking model gets room to think: 8192 tokens in a q8_0 cache (a quarter of RAM)
    assert (plan["n_ctx"], plan["cache_type"]) == (8192, "q8_0")
    assert plan["kv_bytes"] == 476 * MIB  # 896 MiB in f16, times 34/64


def test_fit_readable_on_a_real_file(smol_path: Path) -> None:
    r = CliRunner().invoke(app, ["fit", str(smol_path), "--hardware", "pi5-4gb", "--ctx", "2048"])
    assert r.exit_code == 0, r.output
    assert "kv cache     0.04 GiB for 2048 tokens" in r.output
    assert "threads      4 generation, 4 prompt" in r.output
    r = CliRunner().invoke(app, ["fit", str(smol_path), "--device", "metal"])
    assert r.exit_code == 1 and "no metal support" in r.output


def test_load_uses_the_plan(smol_path: Path) -> None:
    hw = hardware.detect_hardware()
    with ggrun.load(str(smol_path), n_ctx=512) as m:
        assert m.plan is not None and m.plan.n_ctx == m.n_ctx == 512
        assert m.n_threads == hw.generation_threads == m.plan.n_threads
        assert m.plan.device == ("cpu" if not hw.usable_gpus else hw.usable_gpus[0].backend)
        assert m.generate("Hi", max_tokens=2).completion_tokens >= 1
    if not hw.backends:
        with pytest.raises(InvalidArgument, match="no cuda support"):
            ggrun.load(str(smol_path), device="cuda")


def test_verbose_prints_the_plan(smol_path: Path) -> None:
    r = CliRunner().invoke(app, ["generate", str(smol_path), "Hi", "-n", "2", "--ctx", "512", "-v"])
    assert r.exit_code == 0, r.output
    assert "plan: cpu, ctx 512, threads" in r.output
