"""Metadata llama.cpp asserts on: each mutant of the real SmolLM2 GGUF aborts bare llama.cpp
(checked in a child process) and is one clean InvalidModelFile in ggrun."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import gguf
import pytest

from ggrun.errors import InvalidModelFile
from ggrun.ggufcheck import _rwkv_byte, _sentencepiece_byte
from ggrun.gguffile import read_gguf
from ggrun.planner import ModelShape
from tests.helpers import rewrite_gguf

# llama.cpp itself, without ggrun's checks: load the file and tokenize some text (under a
# 3 GiB address-space limit: one mutant makes llama.cpp's tokenizer loop, growing forever)
BARE = """
import ctypes, sys
import llama_cpp as ll
quiet = ll.llama_log_callback(lambda level, text, data: None)
ll.llama_log_set(quiet, ctypes.c_void_p(0))
ll.llama_backend_init()
params = ll.llama_model_default_params()
params.use_extra_bufts = False
model = ll.llama_model_load_from_file(sys.argv[1].encode(), params)
if not model:
    sys.exit(3)
vocab = ll.llama_model_get_vocab(model)
text = "Hello world, \\u00fcn\\u00ef \\u2603 <|im_start|>\\n".encode()
buf = (ll.llama_token * 256)()
ll.llama_tokenize(vocab, text, len(text), buf, 256, True, True)
"""
ABORT = -signal.SIGABRT


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))


CLEAN = 3  # llama.cpp refused the file without dying
LOADS = 0


def _tokens(smol_path: Path) -> list[str]:
    return list(gguf.GGUFReader(smol_path).get_field(gguf.Keys.Tokenizer.LIST).contents())


def _types(smol_path: Path) -> list[int]:
    field = gguf.GGUFReader(smol_path).get_field(gguf.Keys.Tokenizer.TOKEN_TYPE)
    return [int(t) for t in field.contents()]


def _nul_twin(tokens: list[str]) -> list[str]:
    out = list(tokens)
    out[1000] = tokens[999] + "\0x"  # equal to #999 up to its NUL
    return out


def _empty_twin(tokens: list[str]) -> list[str]:
    out = list(tokens)
    out[1000], out[1001] = "\0abc", "[EMPTY_1000]"  # llama.cpp renames an empty token
    return out


def _byte_typed(types: list[int]) -> list[int]:
    out = list(types)
    out[500] = int(gguf.TokenType.BYTE)
    return out


TOK, LLM, ATT = gguf.Keys.Tokenizer, gguf.Keys.LLM, gguf.Keys.Attention
MODEL, TOKENS, TYPES = TOK.MODEL, TOK.LIST, TOK.TOKEN_TYPE

# name -> (metadata changes, what bare llama.cpp does, part of ggrun's message)
CASES: dict[str, tuple[dict[str, Any], int, str]] = {
    "no blocks": ({LLM.BLOCK_COUNT: 0}, ABORT, "at least one block"),
    "600 blocks": ({LLM.BLOCK_COUNT: 600}, ABORT, "from 0 to 512"),
    "a block too few": ({LLM.BLOCK_COUNT: 29}, CLEAN, "blk.29.* is beyond"),
    "a block too many": ({LLM.BLOCK_COUNT: 31}, CLEAN, "tensors exist for 30 blocks"),
    "experts used, none": ({LLM.EXPERT_USED_COUNT: 2}, ABORT, "has no experts"),
    "8 used of 4 experts": (
        {LLM.EXPERT_COUNT: 4, LLM.EXPERT_USED_COUNT: 8},
        ABORT,
        "no expert tensors",
    ),
    "experts on dense": (
        {LLM.EXPERT_COUNT: 8, LLM.EXPERT_USED_COUNT: 2},
        CLEAN,
        "no expert tensors",
    ),
    "nextn beyond blocks": ({LLM.NEXTN_PREDICT_LAYERS: 40}, ABORT, "exceeds"),
    "rope scaling bogus": ({gguf.Keys.Rope.SCALING_TYPE: "bogus"}, ABORT, "rope.scaling.type"),
    "tokenizer none": ({MODEL: "none"}, ABORT, "not a tokenizer llama.cpp can run"),
    "tokenizer bogus": ({MODEL: "bogus"}, CLEAN, "not a tokenizer llama.cpp can run"),
    "spm without byte tokens": ({MODEL: "llama"}, ABORT, "needs a token for every byte"),
    # llama.cpp's RWKV tokenizer loops forever, growing its output until memory runs out
    "rwkv without byte tokens": ({MODEL: "rwkv"}, ABORT, "needs a token for every byte"),
    "bert with a byte token": ({MODEL: "bert", TYPES: _byte_typed}, ABORT, "no byte tokens"),
    "tokens equal up to NUL": ({TOKENS: _nul_twin}, ABORT, "twice"),
    "empty token renamed": ({TOKENS: _empty_twin}, ABORT, "twice"),
    "context 2^31": ({LLM.CONTEXT_LENGTH: 2**31}, LOADS, "context_length"),
    "embedding 2^30": ({LLM.EMBEDDING_LENGTH: 2**30}, CLEAN, "embedding_length"),
    "a million heads": ({ATT.HEAD_COUNT: 10**6}, CLEAN, "head_count"),
    "per-layer heads, wrong length": ({ATT.HEAD_COUNT: [9] * 7}, CLEAN, "7 entries"),
}


@pytest.fixture(scope="module")
def smol_tables(smol_path: Path) -> dict[str, Any]:
    return {"tokens": _tokens(smol_path), "types": _types(smol_path)}


def _mutant(smol_path: Path, tables: dict[str, Any], changes: dict[str, Any], dst: Path) -> Path:
    values = {}
    for key, v in changes.items():
        if callable(v):
            v = v(tables["tokens"] if key == TOKENS else tables["types"])
        values[key] = v
    return rewrite_gguf(smol_path, dst, values=values)


@pytest.mark.parametrize("case", CASES)
def test_refused_where_llama_cpp_would_abort(
    smol_path: Path, smol_tables: dict[str, Any], tmp_path: Path, case: str
) -> None:
    changes, bare, message = CASES[case]
    path = _mutant(smol_path, smol_tables, changes, tmp_path / "m.gguf")
    r = subprocess.run(
        [sys.executable, "-c", BARE, str(path)],
        capture_output=True,
        timeout=120,
        env={**os.environ, "GGML_NO_BACKTRACE": "1"},
        preexec_fn=_limit_memory,
    )
    assert r.returncode == bare, (case, r.returncode, r.stderr[-400:])
    with pytest.raises(InvalidModelFile, match=message) as err:
        read_gguf(path)
    assert "\n" not in str(err.value)


def test_cli_refuses_in_one_line(
    smol_path: Path, smol_tables: dict[str, Any], tmp_path: Path
) -> None:
    path = _mutant(smol_path, smol_tables, {LLM.EXPERT_USED_COUNT: 2}, tmp_path / "m.gguf")
    cmd = [sys.executable, "-m", "ggrun", "fit", str(path)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("ggrun: error"), r.stderr


def test_real_models_pass_and_plan_small(smol_path: Path, qwen_path: Path) -> None:
    for path in (smol_path, qwen_path):
        info = read_gguf(path)
        tokens = info.metadata[TOKENS]
        assert tokens.byte_tokens is not None and len(tokens.byte_tokens["llama"]) < 256
        shape = ModelShape.from_gguf(info)
        assert 0 < shape.n_layer <= 512 and shape.kv_bytes(shape.n_ctx_train) < 1 << 40


def test_byte_token_readers() -> None:
    assert _sentencepiece_byte(b"<0x0A>") == 10 and _sentencepiece_byte(b"<0x0a>") is None
    assert _sentencepiece_byte(b"a") == 97 and _sentencepiece_byte(b"ab") is None
    assert _rwkv_byte(b"\\x0a") == 10 and _rwkv_byte(b"\\n") == 10 and _rwkv_byte(b"\\\\") == 92
    assert _rwkv_byte(b"\\") is None and _rwkv_byte(b"\\x") is None and _rwkv_byte(b"z") == 122
