"""Find, or build, native llama.cpp tools from the sources inside llama-cpp-python's sdist.

The tools (llama-bench, llama-perplexity, llama-quantize, llama-batched-bench, and the
speculative examples llama-lookup and llama-speculative-simple) are built
from the same llama.cpp that the installed llama-cpp-python vendors, into a cache
outside the repo (``$GGRUN_BENCH_CACHE``, default ``~/.cache/ggrun-bench``), so that ggrun
and native llama.cpp run the same kernels. On x86 the build leaves out ggml's AMX
kernels, as ggrun's README install does (they crash on some virtual machines).

    python benchmarks/llama_tools.py        # build once (about 4 minutes on 2 cores)
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import tarfile
import tempfile
from importlib.metadata import version
from pathlib import Path

CACHE = Path(os.environ.get("GGRUN_BENCH_CACHE", Path.home() / ".cache" / "ggrun-bench"))
TOOLS = (
    "llama-bench",
    "llama-perplexity",
    "llama-quantize",
    "llama-batched-bench",
    "llama-lookup",
    "llama-speculative-simple",
)
NO_AMX = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"


def bin_dir() -> Path:
    return CACHE / "build" / "bin"


def tool(name: str) -> Path:
    """The path of a built tool; builds them all on first use."""
    path = bin_dir() / name
    if not all((bin_dir() / t).exists() for t in TOOLS):
        build()
    return path


def build() -> None:
    ver = version("llama-cpp-python")
    src = CACHE / f"llama_cpp_python-{ver}"
    if not src.exists():
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "download",
                    "--no-deps",
                    "--no-binary",
                    ":all:",
                    f"llama-cpp-python=={ver}",
                    "-d",
                    tmp,
                ],
                check=True,
            )
            sdist = next(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
            with tarfile.open(sdist) as tar:
                tar.extractall(CACHE, filter="data")
    flags = (
        [f"-DCMAKE_C_FLAGS={NO_AMX}", f"-DCMAKE_CXX_FLAGS={NO_AMX}"]
        if platform.machine() in ("x86_64", "AMD64")
        else []
    )
    build_dir = CACHE / "build"
    subprocess.run(
        [
            "cmake",
            "-S",
            str(src / "vendor" / "llama.cpp"),
            "-B",
            str(build_dir),
            "-DCMAKE_BUILD_TYPE=Release",
            "-DLLAMA_CURL=OFF",
            "-DLLAMA_BUILD_TESTS=OFF",
            "-DLLAMA_BUILD_EXAMPLES=ON",  # llama-lookup, llama-speculative-simple
            "-DLLAMA_BUILD_SERVER=OFF",
            *flags,
        ],
        check=True,
    )
    subprocess.run(
        ["cmake", "--build", str(build_dir), "-j", str(os.cpu_count() or 2), "--target", *TOOLS],
        check=True,
    )


if __name__ == "__main__":
    build()
    print(bin_dir())
