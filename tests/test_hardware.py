"""Hardware detection on this machine, recorded samples of other machines, profiles, doctor."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from gguf.constants import GGMLQuantizationType
from typer.testing import CliRunner

from ggrun import hardware, sysparse
from ggrun.cli.app import app
from ggrun.errors import PresetError

DATA = Path(__file__).parent / "data" / "hardware"
PROFILES = ["cpu-2core-4gb", "cuda-8gb", "mac-m1-8gb", "mac-m2-16gb", "pi5-4gb", "pi5-8gb"]


def test_cpuinfo_x86_recorded_here() -> None:
    info = sysparse.parse_cpuinfo((DATA / "cpuinfo-x86-xeon-kvm.txt").read_text())
    assert info.model == "Intel(R) Xeon(R) Processor"
    assert {"avx2", "avx512f", "amx_int8"} <= info.flags
    assert info.processors == 2
    assert info.board == ""  # x86's numeric "model : 167" is not a board name


def test_cpuinfo_and_device_tree_of_a_pi5() -> None:
    info = sysparse.parse_cpuinfo((DATA / "cpuinfo-pi5.txt").read_text())
    assert info.processors == 4
    assert "asimddp" in info.flags and "i8mm" not in info.flags
    assert info.board == "Raspberry Pi 5 Model B Rev 1.0"
    model = sysparse.parse_device_tree_model((DATA / "device-tree-model-pi5.bin").read_bytes())
    assert model == "Raspberry Pi 5 Model B Rev 1.0"
    assert sysparse.raspberry_pi(model) == "Raspberry Pi 5 Model B"
    assert sysparse.raspberry_pi("Orange Pi 5") is None


def test_nvidia_smi_samples() -> None:
    two = sysparse.parse_nvidia_smi((DATA / "nvidia-smi-2gpu.csv").read_text())
    assert [g.name for g in two] == ["NVIDIA GeForce RTX 4090", "NVIDIA GeForce RTX 3060"]
    assert two[0].total_bytes == 24564 << 20 and two[0].free_bytes == 23871 << 20
    h100 = sysparse.parse_nvidia_smi((DATA / "nvidia-smi-h100.csv").read_text())
    assert h100[0].name == "NVIDIA H100 80GB HBM3" and h100[0].total_bytes == 81559 << 20
    assert sysparse.parse_nvidia_smi("name, memory.total [MiB]\n[N/A], [N/A], [N/A]\n") == []


def test_sysctl_of_an_m1() -> None:
    values = sysparse.parse_sysctl((DATA / "sysctl-mac-m1.txt").read_text())
    assert sysparse.sysctl_int(values, "hw.perflevel0.physicalcpu") == 4
    assert sysparse.sysctl_int(values, "hw.memsize") == 8 << 30
    assert values["machdep.cpu.brand_string"] == "Apple M1"
    assert sysparse.sysctl_int(values, "hw.missing") is None


def _lscpu_physical_cores() -> int:
    out = subprocess.run(
        ["lscpu", "-p=CORE,SOCKET"], capture_output=True, text=True, check=True
    ).stdout
    return len({line for line in out.splitlines() if not line.startswith("#")})


@pytest.mark.skipif(not shutil.which("lscpu"), reason="lscpu is not installed")
def test_detection_on_this_machine_matches_lscpu() -> None:
    hw = hardware.detect_hardware()
    assert hw.physical_cores == _lscpu_physical_cores()
    assert hw.generation_threads == hw.physical_cores  # no efficiency cores on x86 here
    assert hw.ram_total > hw.ram_available > 0
    assert hw.cpu


def test_detection_reports_the_cpu_build() -> None:
    import llama_cpp as ll

    hw = hardware.detect_hardware()
    assert ll.llama_supports_gpu_offload() == bool(hw.backends)
    if not hw.backends:
        assert hw.usable_gpus == ()
    assert "AVX2" in hw.features or "NEON" in hw.features  # from llama_print_system_info


def test_build_features_parse_the_system_info_string() -> None:
    s = "CPU : NEON = 1 | ARM_FMA = 1 | DOTPROD = 0 | MATMUL_INT8 = 1 | REPACK = 1 |"
    assert hardware.build_features(s) == ("NEON", "ARM_FMA", "MATMUL_INT8", "REPACK")


@pytest.mark.parametrize("name", PROFILES)
def test_shipped_profiles_load(name: str) -> None:
    hw = hardware.load_profile(name)
    assert hw.name == name and hw.ram_total >= hw.ram_available > 0
    assert hw.generation_threads >= 1
    for g in hw.gpus:
        assert g.backend in hw.backends and g.total_bytes >= g.free_bytes > 0


def test_profile_rules() -> None:
    assert hardware.load_profile("mac-m1-8gb").generation_threads == 4  # P-cores only
    assert hardware.load_profile("pi5-4gb").generation_threads == 4  # all 4 cores
    cuda = hardware.load_profile("cuda-8gb")
    assert (cuda.generation_threads, cuda.batch_threads) == (8, 16)


def test_bad_profile_names_the_line(tmp_path: Path) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text("name: x\nphysical_cores: 4\ncoures: 2\n")
    with pytest.raises(PresetError, match=r"line 3.*'coures'"):
        hardware.load_profile(str(p))
    p.write_text("name: x\nram_total: lots\n")
    with pytest.raises(PresetError, match="not a size"):
        hardware.load_profile(str(p))
    with pytest.raises(PresetError, match="pi5-4gb"):
        hardware.load_profile("no-such-profile")


def test_parse_size() -> None:
    assert hardware.parse_size("8 GiB", "x") == 8 << 30
    assert hardware.parse_size("5461 MiB", "x") == 5461 << 20
    assert hardware.parse_size("3.2GB", "x") == int(3.2 * (1 << 30))
    assert hardware.parse_size(1234, "x") == 1234


def test_warnings() -> None:
    pi = hardware.load_profile("pi5-4gb")
    assert hardware.warnings(pi) == []
    import dataclasses

    no_dot = dataclasses.replace(pi, features=("NEON",), ram_available=1 << 30)
    w = hardware.warnings(no_dot)
    assert any("no dotprod kernels" in x and "asimddp" in x for x in w)
    assert any("less than 2 GB RAM free" in x for x in w)
    nv = hardware.GPU("NVIDIA GeForce RTX 3060", "cuda", 12 << 30, 11 << 30, usable=False)
    cpu_build = dataclasses.replace(hardware.load_profile("cpu-2core-4gb"), gpus=(nv,))
    (msg,) = hardware.warnings(cpu_build)
    assert "no CUDA support" in msg and "-DGGML_CUDA=on" in msg


def test_doctor_json_on_this_machine() -> None:
    r = CliRunner().invoke(app, ["doctor", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    hw = hardware.detect_hardware()
    assert out["physical_cores"] == hw.physical_cores
    assert out["defaults"]["threads"] == hw.generation_threads
    assert out["defaults"]["device"] == ("cpu" if not hw.usable_gpus else hw.usable_gpus[0].backend)
    assert isinstance(out["warnings"], list)


def test_doctor_readable_for_a_profile() -> None:
    r = CliRunner().invoke(app, ["doctor", "--hardware", "mac-m1-8gb"])
    assert r.exit_code == 0, r.output
    assert "Apple M1 (metal, unified memory)" in r.output
    assert "metal, 4 generation threads" in r.output


# -- weights repacked for AVX2/AVX-512 without AMX (llama.cpp's CPU_REPACK buffer)

Q = GGMLQuantizationType
X86 = frozenset({"avx2", "avx512"})


@pytest.mark.parametrize(
    ("name", "qtype", "shape", "features", "ok"),
    [
        ("blk.0.ffn_up.weight", Q.Q4_K, (1536, 8960), X86, True),
        ("blk.27.attn_q.weight", Q.Q4_K, (1536, 1536), X86, True),
        ("blk.3.attn_qkv.weight", Q.Q4_0, (2048, 6144), X86, True),
        ("output.weight", Q.Q4_0, (2048, 151936), X86, True),
        ("blk.0.ffn_down.weight", Q.IQ4_NL, (8960, 1536), X86, True),
        ("blk.0.ffn_up.weight", Q.Q4_K, (1536, 8960, 1), X86, True),  # ggml_n_dims: 2
        ("blk.0.ffn_up.weight", Q.Q2_K, (1536, 8960), X86, True),
        ("blk.0.ffn_up.weight", Q.Q2_K, (1536, 8960), {"avx2"}, False),  # AVX-512 only
        ("blk.0.ffn_up.weight", Q.Q4_K, (1536, 8960), frozenset(), False),  # no AVX2
        ("blk.0.attn_k.weight", Q.Q4_K, (1536, 260), X86, False),  # rows not a multiple of 8
        ("blk.0.ffn_down.weight", Q.Q6_K, (8960, 1536), X86, False),  # ARM layouts only
        ("blk.0.ffn_down.weight", Q.Q5_K, (8960, 1536), X86, False),
        ("blk.0.ffn_down.weight", Q.Q8_0, (8960, 1536), X86, False),
        ("blk.0.ffn_down.weight", Q.Q4_1, (8960, 1536), X86, False),
        ("blk.0.ffn_down.weight", Q.F16, (8960, 1536), X86, False),
        ("blk.0.ffn_down.weight", Q.MXFP4, (8960, 1536), X86, False),
        ("token_embd.weight", Q.Q4_K, (1536, 151936), X86, False),  # GET_ROWS, or a tied output
        ("blk.0.ffn_up_exps.weight", Q.Q4_K, (1536, 8960, 64), X86, False),  # MUL_MAT_ID
        ("blk.0.ffn_gate_inp.weight", Q.Q4_K, (1536, 64), X86, False),
        ("blk.0.attn_q.bias", Q.Q4_K, (1536, 8), X86, False),
        ("blk.0.attn_q.weight.x", Q.Q4_K, (1536, 1536), X86, False),
        ("blk.x.attn_q.weight", Q.Q4_K, (1536, 1536), X86, False),
    ],
)
def test_repackable_mirrors_llama_cpp_on_x86(
    name: str, qtype: int, shape: tuple[int, ...], features: frozenset[str], ok: bool
) -> None:
    """ggml_repack_get_optimal_repack_type's x86 branches (ggml-cpu/repack.cpp), and only
    2-D weights llama.cpp reads with MUL_MAT: an override llama.cpp cannot hold crashes."""
    assert hardware.repackable(name, qtype, shape, features) is ok


def test_override_patterns_name_exactly_their_tensors() -> None:
    names = ["blk.0.ffn_up.weight", "blk.12.ffn_up.weight", "output.weight", "blk.3.attn_q.weight"]
    patterns = hardware.override_patterns(names)
    assert len(patterns) == 3  # one per kind: llama.cpp compiles each for every tensor
    others = [
        "blk.1.ffn_up.weight",
        "blk.2.ffn_up.weight",
        "blk.120.ffn_up.weight",
        "blk.012.ffn_up.weight",
        "blk.0.ffn_up.weight.x",
        "blk.0.ffn_up_exps.weight",
        "blk.3.attn_q.bias",
        "blk.3.attn_qkv.weight",
        "token_embd.weight",
        "output_norm.weight",
        "xoutput.weight",
    ]
    for name in names:  # std::regex_search, ECMAScript: the same as Python's re here
        assert sum(bool(re.search(p, name)) for p in patterns) == 1, name
    for name in others:
        assert not any(re.search(p, name) for p in patterns), name
    with pytest.raises(ValueError, match="token_embd"):
        hardware.override_patterns(["token_embd.weight"])


def test_override_patterns_on_a_real_tensor_table(qwen15_path: Path) -> None:
    from ggrun.gguffile import read_gguf

    info = read_gguf(qwen15_path)  # the header only
    names = [t.name for t in info.tensors if hardware.repackable(t.name, t.type, t.shape, X86)]
    assert len(names) == 168 and "token_embd.weight" not in names  # Q4_K; Q6_K stays
    patterns = hardware.override_patterns(names)
    assert len(patterns) == 7
    for t in info.tensors:
        assert any(re.search(p, t.name) for p in patterns) == (t.name in names), t.name


def test_no_overrides_off_x86(monkeypatch: pytest.MonkeyPatch, qwen_path: Path) -> None:
    from ggrun.gguffile import read_gguf

    monkeypatch.setattr(hardware.platform, "machine", lambda: "aarch64")
    assert not hardware.repack_without_amx()
    assert hardware.repack_plan(read_gguf(qwen_path).tensors) is None


def _generate(
    path: Path, extra_buffers: bool | None
) -> tuple[list[str], list[str], tuple[str, ...]]:
    from ggrun import llama
    from ggrun.engine import LoadConfig, Model

    prompts = [
        "def fibonacci(n):",
        " ".join(f"item{i} costs {3 * i} dollars;" for i in range(24)) + " item7 costs",
    ]  # the second one is long enough for the batched (GEMM) kernels
    with llama.captured_llama_log() as log:
        model = Model(path, LoadConfig(n_ctx=1024, extra_buffers=extra_buffers))
    with model:
        texts = [model.generate(p, max_tokens=24, temperature=0).text for p in prompts]
        return texts, list(log), model.weights.repacked


@pytest.mark.skipif(
    not hardware.repack_without_amx(),
    reason="llama.cpp places the weights itself here (no AMX kernels in this build, "
    "GGRUN_AMX=1, or not x86): ggrun sets no buffer overrides",
)
def test_weights_repacked_without_amx_generate_the_same(qwen_path: Path) -> None:
    """On an x86 build with AMX kernels the extra buffers are off, and ggrun names the
    Q4_K weights for CPU_REPACK itself: llama.cpp logs that buffer, never AMX, and greedy
    output is the same as with every weight in the plain CPU buffer (the 0.5B's 12 Q4_K
    weights; the 1.5B's 168 shift its logits a little, KL ~0.002, as REPACK does in
    llama.cpp, and its greedy text parts after a few dozen tokens)."""
    from ggrun.gguffile import read_gguf

    texts, log, repacked = _generate(qwen_path, None)
    info = read_gguf(qwen_path)
    expected = [t.name for t in info.tensors if t.type == Q.Q4_K and t.name != "token_embd.weight"]
    assert expected and list(repacked) == expected
    assert sum("buffer type overridden to CPU_REPACK" in line for line in log) == len(expected)
    (size,) = [line for line in log if "CPU_REPACK model buffer size" in line]
    mib = sum(t.nbytes for t in info.tensors if t.name in expected) / (1 << 20)
    assert float(size.split("=")[1].split()[0]) == pytest.approx(mib, abs=0.1)
    assert not any("AMX model buffer" in line for line in log)

    plain_texts, plain_log, plain_repacked = _generate(qwen_path, False)  # the extra buffers off
    assert plain_repacked == () and not any("CPU_REPACK" in line for line in plain_log)
    assert texts == plain_texts
