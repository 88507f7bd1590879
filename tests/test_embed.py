"""Embeddings on real models: ``Model.embed``, the llama layer's ``Embedder`` and
``ggrun embed``, checked against llama-cpp-python's own embedding path (the oracle)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from ggrun import llama
from ggrun.cli.app import app
from ggrun.engine import Model
from ggrun.errors import ContextOverflow, GgrunError, InvalidArgument

PARAPHRASES = [
    ("The cat sat on the mat.", "A cat was sitting on the rug.", "Quarterly revenue grew by 10%."),
    (
        "How do I reverse a list in Python?",
        "What is the way to reverse a Python list?",
        "The weather in Paris is mild in spring.",
    ),
    (
        "The train to Berlin leaves at noon.",
        "At 12 o'clock the Berlin train departs.",
        "Photosynthesis turns light into chemical energy.",
    ),
]
TEXTS = [
    "The cat sat on the mat.",
    "def add(a, b):\n    return a + b",
    "<|im_start|>user\nhello<|im_end|>",  # a control token's text is text here
    "Übermäßig schöne Grüße aus Köln ☃",
    "x",
]
# a text's vector depends a little on the texts decoded with it: llama.cpp's CPU kernels
# pick their path (and rounding) by the batch's shape. Measured here with flash attention
# off, as in the embedding context: <= 1.8e-3 a component, cosine >= 0.99997 (with it on:
# 7.5e-3 and 0.9997); with the Q4_K weights repacked (REPACK: rows in fours through its
# GEMM, the rest through its GEMV) <= 3.7e-3 and cosine >= 0.99990
BATCH_ATOL = 6e-3
BATCH_COS = 0.9998


@pytest.fixture(scope="module")
def model(qwen: Model) -> Iterator[Model]:
    yield qwen
    qwen.embedder.close()  # the session's model keeps no embedding context after us


def cos(a: Any, b: Any) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


# -- meaning


@pytest.mark.parametrize(("a", "b", "other"), PARAPHRASES)
def test_paraphrases_are_closer_than_an_unrelated_sentence(
    model: Model, a: str, b: str, other: str
) -> None:
    va, vb, vo = model.embed([a, b, other])
    assert cos(va, vb) > cos(va, vo) + 0.1
    assert cos(va, vb) > cos(vb, vo) + 0.1


def test_unit_vectors_of_the_models_width(model: Model) -> None:
    vectors = model.embed(TEXTS)
    n_embd = model.info.arch_get("embedding_length")
    assert n_embd == 896 == model.embedder.n_embd
    assert len(vectors) == len(TEXTS)
    for v in vectors:
        assert isinstance(v, list) and len(v) == n_embd
        assert all(isinstance(x, float) for x in v)
        assert abs(np.linalg.norm(v) - 1.0) < 1e-5
    assert model.embedder.pooling == "mean"  # a generative GGUF: no pooling of its own


def test_a_string_is_one_text(model: Model) -> None:
    one = model.embed("The cat sat on the mat.")
    assert len(one) == 1
    np.testing.assert_allclose(one[0], model.embed(["The cat sat on the mat."])[0], atol=1e-7)


def test_text_is_data_not_markup(model: Model) -> None:
    """``<|im_start|>`` typed in a text is its characters' tokens, never the control token."""
    [tokens] = model.embedder.tokenize("<|im_start|>user")
    assert model.weights.single_token("<|im_start|>") not in tokens
    assert tokens == model.tokenize("<|im_start|>user", add_special=True)


# -- batching


def test_batched_texts_match_one_at_a_time(model: Model) -> None:
    batched = np.array(model.embed(TEXTS))
    alone = np.array([model.embed(t)[0] for t in TEXTS])
    assert np.abs(batched - alone).max() < BATCH_ATOL
    assert min(cos(a, b) for a, b in zip(batched, alone, strict=True)) > BATCH_COS


def test_many_texts_split_into_several_decodes_in_order(model: Model) -> None:
    texts = [f"{'cat' if i % 2 else 'train'} {i}" for i in range(70)]
    many = np.array(model.embed(texts))  # over EMBED_SEQ_MAX texts: two decodes at least
    small = llama.Embedder(model.weights, n_ctx=64, n_threads_batch=2, n_seq_max=3)
    try:
        few = small.embed(texts)
        assert small.n_batch == 64
    finally:
        small.close()
    assert few.vectors.shape == many.shape == (70, 896)
    assert np.abs(few.vectors - many).max() < BATCH_ATOL
    assert min(cos(a, b) for a, b in zip(few.vectors, many, strict=True)) > BATCH_COS
    assert [len(t) for t in model.embedder.tokenize(texts)] == list(few.n_tokens)


@pytest.mark.parametrize(
    ("lengths", "n_batch", "n_seq_max", "ends"),
    [
        ([5, 5, 5], 512, 64, [3]),
        ([5, 5, 5], 10, 64, [2, 3]),
        ([5, 5, 5, 5, 5], 512, 2, [2, 4, 5]),
        ([10, 1, 10], 10, 64, [1, 2, 3]),
        ([7], 7, 1, [1]),
    ],
)
def test_groups_hold_at_most_n_batch_tokens_and_n_seq_max_texts(
    model: Model, lengths: list[int], n_batch: int, n_seq_max: int, ends: list[int]
) -> None:
    e = llama.Embedder(model.weights, n_ctx=n_batch, n_seq_max=n_seq_max)
    assert e._groups(lengths) == ends  # no context is made: nothing to close


@pytest.mark.parametrize(("n_ctx", "n_seq_max"), [(7, 3), (100, 64), (509, 64), (64, 3)])
def test_odd_context_sizes_do_not_abort(model: Model, n_ctx: int, n_seq_max: int) -> None:
    """llama.cpp aborts the process when its micro-batch is not a multiple of n_seq_max."""
    e = llama.Embedder(model.weights, n_ctx=n_ctx, n_threads_batch=2, n_seq_max=n_seq_max)
    try:
        got = e.embed(["one", "two words", "three more words"])
    finally:
        e.close()
    assert got.vectors.shape == (3, 896)


def test_a_long_text_grows_the_context_and_is_pooled_whole(model: Model) -> None:
    """Pooling needs a text in one micro-batch: a text cut in two would be pooled over its
    last part only. A text over the first 512 tokens makes the context anew, larger."""
    e = llama.Embedder(model.weights, n_ctx=2048, n_threads=2, n_threads_batch=2)
    text = " ".join(f"Item {i} goes here." for i in range(100))
    try:
        assert e.n_batch == llama.EMBED_BATCH
        [n] = e.embed(text).n_tokens
        assert 512 < n <= 1024 and e.n_batch == 1024
        again = e.embed([text, "short"]).vectors[0]  # in a batch of two, same context
    finally:
        e.close()
    whole = llama.Embedder(model.weights, n_ctx=2048, n_threads=2, n_threads_batch=2)
    try:
        whole.n_batch = 1280  # a context of another shape that holds it whole
        ref = whole.embed(text).vectors[0]
    finally:
        whole.close()
    assert np.abs(again - ref).max() < BATCH_ATOL and cos(again, ref) > BATCH_COS


def test_concurrent_calls_take_turns(model: Model) -> None:
    """Two threads (two HTTP requests) embedding at once get what each gets alone."""
    want = {i: model.embed([f"thread {i} text {j}" for j in range(6)]) for i in range(3)}
    got: dict[int, list[list[float]]] = {}
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            got[i] = model.embed([f"thread {i} text {j}" for j in range(6)])
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i in range(3):
        assert np.abs(np.array(got[i]) - np.array(want[i])).max() < 1e-6


# -- generation is undisturbed


def test_generation_is_the_same_after_embedding(model: Model) -> None:
    options = {"temperature": 0, "max_tokens": 8}
    model.reset()
    before = model.generate("def fibonacci(n):", **options).text
    held = model.kv_tokens
    model.embed(TEXTS * 2)
    assert model.kv_tokens == held  # the generation context's cache is untouched
    model.reset()
    assert model.generate("def fibonacci(n):", **options).text == before


# -- bad inputs


@pytest.mark.parametrize(
    "texts",
    [123, None, b"bytes", {"a": 1}, ["ok", 7], ["ok", None], [b"raw"], [["nested"]]],
)
def test_anything_but_strings_is_refused(model: Model, texts: Any) -> None:
    with pytest.raises(InvalidArgument, match="string"):
        model.embed(texts)


def test_empty_inputs(model: Model) -> None:
    assert model.embed([]) == []
    # Qwen adds no BOS: an empty text has no tokens (llama.cpp's server refuses it too)
    with pytest.raises(InvalidArgument, match="text 1 is empty"):
        model.embed(["fine", ""])
    assert len(model.embed(" ")[0]) == 896  # a space is a token


def test_a_text_over_the_context_is_refused_before_llama_cpp(model: Model) -> None:
    with pytest.raises(ContextOverflow, match=r"text 1 has \d+ tokens but the embedding"):
        model.embed(["short", "word " * 3000])
    with pytest.raises(ContextOverflow, match="characters"):
        model.embed("a" * (llama.MAX_EMBED_CHARS + 1))
    assert len(model.embed("still works")) == 1


def test_a_closed_model_refuses(smol_path: Path) -> None:
    m = Model(smol_path, llama_config(context=False))
    m.embed("hello")
    m.close()
    with pytest.raises(GgrunError, match="closed"):
        m.embed("hello")


def llama_config(**extra: Any) -> Any:
    from ggrun.engine import LoadConfig

    return LoadConfig(n_ctx=512, n_threads=2, n_threads_batch=2, **extra)


# -- the oracle: llama-cpp-python's own embedding path


@pytest.fixture(scope="module")
def oracle(qwen_path: Path) -> Iterator[Any]:
    """``Llama(embedding=True, pooling_type=MEAN)`` with its defaults (flash attention
    off, as in ggrun's embedding context), on the same weight buffers as ggrun (this
    build's AMX kernels crash here): the benchmark's own reference side."""
    from benchmarks.embed_bench import llama_cpp_side

    with llama_cpp_side(qwen_path, n_ctx=512, threads=2) as ref:
        yield ref


def test_same_vectors_as_llama_cpp_python(model: Model, oracle: Any) -> None:
    e = llama.Embedder(model.weights, n_ctx=512, n_threads=2, n_threads_batch=2)
    try:
        ours = e.embed(TEXTS)
        alone = [e.embed(t).vectors[0] for t in TEXTS[:2]]
    finally:
        e.close()
    ref = np.array(oracle.embed(TEXTS, normalize=True))
    assert ours.vectors.shape == ref.shape
    assert np.abs(ours.vectors - ref).max() < 1e-6  # the same numbers
    for t, v in zip(TEXTS[:2], alone, strict=True):
        assert np.abs(v - np.array(oracle.embed(t, normalize=True))).max() < 1e-6
    assert list(ours.n_tokens) == [len(oracle.tokenize(t.encode())) for t in TEXTS]


# -- the command


def test_cli_json(qwen_path: Path) -> None:
    r = CliRunner().invoke(
        app, ["embed", str(qwen_path), "--ctx", "512", "--json", "The cat sat.", "A dog ran."]
    )
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["dims"] == 896 and out["pooling"] == "mean"
    assert out["model"] == str(qwen_path)
    assert len(out["vectors"]) == 2 == len(out["tokens"])
    for v in out["vectors"]:
        assert len(v) == 896 and abs(np.linalg.norm(v) - 1) < 1e-5


def test_cli_file_and_human_lines(qwen_path: Path, tmp_path: Path) -> None:
    f = tmp_path / "texts.txt"
    f.write_text("first line\n\n  \nsecond line\n", encoding="utf-8")
    r = CliRunner().invoke(app, ["embed", str(qwen_path), "--ctx", "512", "--file", str(f)])
    assert r.exit_code == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 2  # blank lines skipped
    assert "896 dims" in lines[0] and "norm 1.0000" in lines[0] and '"first line"' in lines[0]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["too " * 600], "tokens but the embedding context holds 512"),
        ([""], "is empty"),
        ([], "nothing to embed"),
        (["--file", "/dev/zero"], "is a device"),
        (["x", "--file", __file__], "not both"),
    ],
)
def test_cli_errors_are_one_line(qwen_path: Path, args: list[str], message: str) -> None:
    r = CliRunner().invoke(app, ["embed", str(qwen_path), "--ctx", "512", *args])
    assert r.exit_code == 1, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ggrun: error:") and message in lines[0]
