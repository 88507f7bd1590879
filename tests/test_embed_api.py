"""Embeddings over HTTP: OpenAI's ``/v1/embeddings`` through the openai SDK (float and
base64), ollama's ``/api/embed`` through the ollama client and the older
``/api/embeddings``, all equal to ``Model.embed`` on the same model; bad bodies are 400s
that name the field."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import serving

ollama = pytest.importorskip("ollama")
openai = pytest.importorskip("openai")

QWEN = "qwen2.5-coder-0.5b-instruct-q4_k_m"
TEXTS = ["The cat sat on the mat.", "A cat was sitting on the rug.", "Stock prices fell."]


@pytest.fixture(scope="module")
def server(qwen_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    args = [str(qwen_path), "--parallel", "1", "--ctx", "512"]
    with serving(args, tmp_path_factory.mktemp("home")) as base:
        yield base


@pytest.fixture(scope="module")
def expected(qwen_path: Path) -> list[list[float]]:
    from ggrun.engine import LoadConfig, Model

    with Model(qwen_path, LoadConfig(n_ctx=512)) as m:
        return m.embed(TEXTS)


def _close(a: list[float], b: list[float], tol: float = 6e-3) -> bool:
    """Equal vectors, within what another batch shape changes in llama.cpp's sums (with
    the Q4_K weights repacked, up to 3.7e-3 a component and cosine 0.99990: test_embed)."""
    if len(a) != len(b):
        return False
    cosine = math.fsum(x * y for x, y in zip(a, b, strict=True))  # both unit vectors
    return max(abs(x - y) for x, y in zip(a, b, strict=True)) < tol and cosine > 0.9998


def test_openai_sdk_float_and_base64(server: str, expected: list[list[float]]) -> None:
    client = openai.OpenAI(base_url=server + "/v1", api_key="x", max_retries=0)
    r = client.embeddings.create(model=QWEN, input=TEXTS, encoding_format="float")
    assert [d.index for d in r.data] == [0, 1, 2] and r.model == QWEN
    assert all(_close(d.embedding, e) for d, e in zip(r.data, expected, strict=True))
    assert r.usage.prompt_tokens == r.usage.total_tokens > len(TEXTS)
    default = client.embeddings.create(model=QWEN, input=TEXTS[0])  # the SDK asks base64
    assert _close(default.data[0].embedding, expected[0])
    assert math.isclose(math.fsum(x * x for x in default.data[0].embedding), 1.0, rel_tol=1e-4)


def test_ollama_embed_and_legacy_embeddings(server: str, expected: list[list[float]]) -> None:
    r = ollama.Client(host=server).embed(model=QWEN, input=TEXTS)
    assert len(r.embeddings) == 3
    assert all(_close(v, e) for v, e in zip(r.embeddings, expected, strict=True))
    assert r.prompt_eval_count and r.total_duration
    legacy = httpx.post(
        server + "/api/embeddings", json={"model": QWEN, "prompt": TEXTS[1]}, timeout=300
    )
    assert legacy.status_code == 200 and _close(legacy.json()["embedding"], expected[1])


@pytest.mark.parametrize(
    ("path", "body", "says"),
    [
        ("/v1/embeddings", {"input": ["a"], "dimensions": 8}, "dimensions"),
        ("/v1/embeddings", {"input": [1, 2, 3]}, "token ids"),
        ("/v1/embeddings", {"input": []}, "input"),
        ("/v1/embeddings", {"input": "a", "encoding_format": "int8"}, "encoding_format"),
        ("/v1/embeddings", {"input": "a", "extra": 1}, "extra"),
        ("/v1/embeddings", {"input": "a", "model": "nope"}, "does not exist"),
        ("/api/embed", {"input": {"a": 1}}, "input"),
        ("/api/embed", {"input": "a", "truncate": "yes"}, "truncate"),
        ("/api/embeddings", {"prompt": ["a"]}, "prompt"),
    ],
)
def test_bad_bodies_are_400s(server: str, path: str, body: dict[str, Any], says: str) -> None:
    r = httpx.post(server + path, json=body)
    assert r.status_code in (400, 404), r.text
    err = r.json()["error"]
    assert says in (err if isinstance(err, str) else err["message"])


def test_a_text_past_the_context_is_a_400(server: str) -> None:
    r = httpx.post(server + "/v1/embeddings", json={"input": "word " * 40_000})
    assert r.status_code == 400 and "context" in r.json()["error"]["message"]
    assert httpx.post(server + "/v1/embeddings", json={"input": "still fine"}).status_code == 200


def test_ollama_truncates_a_long_text_by_default_as_ollama_does(qwen_path: Path,
                                                                 server: str) -> None:  # fmt: skip
    from ggrun.engine import LoadConfig, Model

    long = "the quick brown fox jumps over the lazy dog " * 300  # ~2,700 tokens
    with Model(qwen_path, LoadConfig(n_ctx=512)) as m:
        cut = m.embedder.embed(long, truncate=True)
    assert cut.n_tokens == (m.embedder.n_ctx,)
    r = httpx.post(server + "/api/embed", json={"input": long}, timeout=300)
    assert r.status_code == 200 and r.json()["prompt_eval_count"] == m.embedder.n_ctx
    assert _close(r.json()["embeddings"][0], cut.tolist()[0])
    r = httpx.post(server + "/api/embed", json={"input": long, "truncate": False}, timeout=300)
    assert r.status_code == 400 and "context" in r.json()["error"]
    huge = httpx.post(server + "/api/embed", json={"input": "word " * 200_000}, timeout=300)
    assert huge.status_code == 200  # cut to its first characters before it is tokenized
