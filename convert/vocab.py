"""The tokenizer: BPE tokens and types from ``tokenizer.json``; specials with gguf-py.

Token types follow llama.cpp's converter: added tokens marked special, or that look
special (``<|...|>``), are CONTROL; other added tokens (Qwen3's ``<think>``) are
USER_DEFINED; ids the tokenizer does not use up to ``vocab_size`` become ``[PAD{i}]``
(UNUSED). Merges, bos/eos/pad ids, ``add_bos_token`` and the chat template come from
gguf-py's ``SpecialVocab``, as upstream does.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import gguf

from ggrun.errors import ConversionError

from .checkpoint import read_json

logger = logging.getLogger(__name__)

# Pre-tokenizer regexes llama.cpp knows, by the name it expects in tokenizer.ggml.pre.
LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| "
    r"?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| "
    r"?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
KNOWN_PRE = {LLAMA3_REGEX: "llama-bpe", QWEN2_REGEX: "qwen2"}


def looks_special(token: str) -> bool:
    return (
        token in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
        or (token.startswith("<|") and token.endswith("|>"))
        or (token.startswith("<｜") and token.endswith("｜>"))
        or (token.startswith("<unused") and token.endswith(">"))
    )


def _regexes(node: Any) -> list[str]:
    """Every ``pattern.Regex`` in a pre-tokenizer tree, in order (no recursion)."""
    found, stack = [], [node]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            pattern = node.get("pattern")
            if isinstance(pattern, dict) and isinstance(pattern.get("Regex"), str):
                found.append(pattern["Regex"])
            stack.extend(reversed(list(node.values())))
        elif isinstance(node, list):
            stack.extend(reversed(node))
    return found


def load_tokenizer(path: Path) -> dict[str, Any]:
    f = path / "tokenizer.json"
    if not f.exists():
        raise ConversionError(
            f"{path}: no tokenizer.json (a missing tokenizer; only "
            "Hugging Face fast BPE tokenizers are supported)"
        )
    tok = read_json(f, "the tokenizer")
    model = tok.get("model") if isinstance(tok, dict) else None
    if (
        not isinstance(model, dict)
        or model.get("type") != "BPE"
        or not isinstance(model.get("vocab"), dict)
    ):
        raise ConversionError(f"{f}: not a BPE tokenizer (only BPE is supported)")
    if not all(_is_id(i) for i in model["vocab"].values()):
        raise ConversionError(f"{f}: the vocabulary maps a token to something not a token id")
    added = tok.get("added_tokens", [])
    if not isinstance(added, list) or not all(
        isinstance(a, dict) and _is_id(a.get("id")) and isinstance(a.get("content"), str)
        for a in added
    ):
        raise ConversionError(f"{f}: added_tokens is not a list of {{id, content}} objects")
    return tok


def _is_id(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def detect_pre(tok: dict[str, Any], default: str | None) -> str:
    if default:
        return default
    for regex in _regexes(tok.get("pre_tokenizer")):
        if regex in KNOWN_PRE:
            return KNOWN_PRE[regex]
    logger.warning("unknown pre-tokenizer; writing 'default'")
    return "default"


def tokens_and_types(tok: dict[str, Any], vocab_size: int) -> tuple[list[str], list[int]]:
    vocab: dict[str, int] = dict(tok["model"]["vocab"])
    added = {a["id"]: a for a in tok.get("added_tokens", []) if isinstance(a, dict)}
    for a in added.values():
        vocab[a["content"]] = a["id"]
    reverse = {i: t for t, i in vocab.items()}
    if reverse and max(reverse) >= vocab_size:
        raise ConversionError(
            f"tokenizer id {max(reverse)} is not below the model's vocab_size {vocab_size}"
        )
    tokens: list[str] = []
    types: list[int] = []
    for i in range(vocab_size):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        token = reverse[i]
        if i in added:
            if added[i].get("special") or looks_special(token):
                types.append(gguf.TokenType.CONTROL)
            else:
                token = token.replace("\u2581", " ")
                types.append(gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
        tokens.append(token)
    return tokens, types


def add_vocab(w: gguf.GGUFWriter, path: Path, vocab_size: int, pre: str | None) -> None:
    tok = load_tokenizer(path)
    tokens, types = tokens_and_types(tok, vocab_size)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(detect_pre(tok, pre))
    w.add_token_list(tokens)
    w.add_token_types(types)
    try:  # gguf-py reads tokenizer.json and tokenizer_config.json itself
        special = gguf.SpecialVocab(path, load_merges=True)
        if not special.merges:
            raise ConversionError(f"{path / 'tokenizer.json'}: no BPE merges")
        special.add_to_gguf(w)
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError, OSError) as e:
        raise ConversionError(f"{path}: the tokenizer's special tokens are unusable: {e}") from None
