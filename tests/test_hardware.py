"""Hardware detection on this machine, recorded samples of other machines, profiles, doctor."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
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
