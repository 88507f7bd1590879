"""What llama.cpp asserts on in a GGUF's metadata, checked before it sees the file.

A failed ``GGML_ASSERT`` in llama.cpp aborts the whole process (SIGABRT); no ``try``
catches it. :func:`check` refuses, as one :class:`~ggrun.errors.InvalidModelFile`, the
metadata that reaches such an assert (``llama-model.cpp`` ``load_hparams``,
``llama-vocab.cpp``): a block count of zero, above ``LLAMA_MAX_LAYERS`` or not matching
the ``blk.N`` tensors; expert counts a dense model cannot have, or that contradict each
other; a rope scaling type or tokenizer model llama.cpp does not know; a vocabulary whose
tokens are not unique as C strings (checked while reading, see ``gguffile``). It also
bounds every hyperparameter ggrun's planner multiplies, so no header value can drive its
arithmetic to absurd sizes. Keys and tensor names come from gguf-py's tables.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from gguf.constants import (
    MODEL_ARCH,
    MODEL_ARCH_NAMES,
    MODEL_TENSOR,
    MODEL_TENSORS,
    TENSOR_NAMES,
    GGUFValueType,
    Keys,
    RopeScalingType,
    TokenType,
)

from ggrun.errors import InvalidModelFile

LLAMA_MAX_LAYERS = 512  # llama-hparams.h
LLAMA_MAX_EXPERTS = 1024  # llama-hparams.h

# The largest value accepted per key: llama.cpp's own limits where it has them, else
# far above any real model (Llama 4 Scout's context is 10M tokens).
HPARAM_LIMITS: dict[str, int] = {
    Keys.LLM.BLOCK_COUNT: LLAMA_MAX_LAYERS,
    Keys.LLM.CONTEXT_LENGTH: 1 << 24,
    Keys.LLM.EMBEDDING_LENGTH: 1 << 17,
    Keys.LLM.FEED_FORWARD_LENGTH: 1 << 20,
    Keys.LLM.VOCAB_SIZE: 1 << 24,
    Keys.LLM.EXPERT_COUNT: LLAMA_MAX_EXPERTS,
    Keys.LLM.EXPERT_USED_COUNT: LLAMA_MAX_EXPERTS,
    Keys.LLM.EXPERT_GROUP_COUNT: LLAMA_MAX_EXPERTS,
    Keys.LLM.EXPERT_GROUP_USED_COUNT: LLAMA_MAX_EXPERTS,
    Keys.LLM.NEXTN_PREDICT_LAYERS: LLAMA_MAX_LAYERS,
    Keys.Attention.HEAD_COUNT: 1 << 12,
    Keys.Attention.HEAD_COUNT_KV: 1 << 12,
    Keys.Attention.KEY_LENGTH: 1 << 14,
    Keys.Attention.VALUE_LENGTH: 1 << 14,
    Keys.Rope.DIMENSION_COUNT: 1 << 14,
}
# keys llama.cpp also reads as one value per layer (get_key_or_arr)
PER_LAYER = {
    Keys.LLM.FEED_FORWARD_LENGTH,
    Keys.LLM.EXPERT_USED_COUNT,
    Keys.Attention.HEAD_COUNT,
    Keys.Attention.HEAD_COUNT_KV,
}
# llama-model.cpp LLAMA_ROPE_SCALING_TYPES; anything else fails an assert
ROPE_SCALING_TYPES = tuple(
    t.value
    for t in (
        RopeScalingType.NONE,
        RopeScalingType.LINEAR,
        RopeScalingType.YARN,
        RopeScalingType.LONGROPE,
    )
)
# llama-vocab.cpp: the tokenizer models with a tokenizer ("no_vocab"/"none" have none
# and abort on the first tokenization; "test" is llama.cpp's own test stub)
TOKENIZER_MODELS = (
    "llama", "gpt2", "bert", "t5", "rwkv", "plamo2", "gemma4", "hybriddna", "whitespace",
)  # fmt: skip
# WordPiece ("bert") aborts on a token typed BYTE while it builds its piece cache
NO_BYTE_TOKEN_MODELS = ("bert",)
# llama.cpp ignores an expert count of 1 for these (load_hparams)
EXPERTS_IGNORED_UP_TO_ONE = {MODEL_ARCH.HUNYUAN_DENSE, MODEL_ARCH.HUNYUAN_VL}
EXPERT_TENSORS = (
    MODEL_TENSOR.FFN_GATE_INP,
    MODEL_TENSOR.FFN_GATE_EXP,
    MODEL_TENSOR.FFN_UP_EXP,
    MODEL_TENSOR.FFN_DOWN_EXP,
)
_ARCHS = {name: arch for arch, name in MODEL_ARCH_NAMES.items()}
# "blk." of "blk.{bid}.attn_norm": how repeating-layer tensors are named
BLOCK_PREFIX = TENSOR_NAMES[MODEL_TENSOR.ATTN_NORM].partition("{bid}")[0]
TOKEN_ID_KEYS = (
    Keys.Tokenizer.BOS_ID,
    Keys.Tokenizer.EOS_ID,
    Keys.Tokenizer.EOT_ID,
    Keys.Tokenizer.EOM_ID,
    Keys.Tokenizer.UNK_ID,
    Keys.Tokenizer.SEP_ID,
    Keys.Tokenizer.PAD_ID,
    Keys.Tokenizer.MASK_ID,
    Keys.Tokenizer.FIM_PRE_ID,
    Keys.Tokenizer.FIM_SUF_ID,
    Keys.Tokenizer.FIM_MID_ID,
    Keys.Tokenizer.FIM_PAD_ID,
    Keys.Tokenizer.FIM_REP_ID,
    Keys.Tokenizer.FIM_SEP_ID,
)


def _sentencepiece_byte(token: bytes) -> int | None:
    """``<0xAB>`` (llama.cpp spells it in upper case), else a one-byte token."""
    if len(token) == 6 and token[:3] == b"<0x" and token[5:] == b">":
        digits = token[3:5]
        return int(digits, 16) if digits == digits.upper() and digits.isalnum() else None
    return token[0] if len(token) == 1 else None


def _rwkv_byte(token: bytes) -> int | None:
    """The byte an RWKV token stands for, unescaped as llama.cpp does (``\\x0a``, ``\\n``)."""

    def nibble(c: int) -> int:
        return (c - ord("a") + 10 if c >= ord("a") else c - ord("0")) & 0xFF

    if len(token) == 1:
        return None if token == b"\\" else token[0]
    if len(token) == 2 and token[0] == ord("\\") and token[1] != ord("x"):
        return {ord("t"): 9, ord("n"): 10, ord("r"): 13}.get(token[1], token[1])
    if len(token) == 4 and token[:2] == b"\\x":
        return ((nibble(token[2]) << 4) + nibble(token[3])) & 0xFF
    return None


# Tokenizers that fall back to one token per byte for text outside the vocabulary; a
# byte without its token throws where nothing catches it, and the process aborts.
BYTE_TOKENS: dict[str, Callable[[bytes], int | None]] = {
    "llama": _sentencepiece_byte,
    "rwkv": _rwkv_byte,
}
BYTE_TOKEN_LENGTHS = frozenset((1, 2, 4, 6))  # the only lengths the readers accept


@dataclass(frozen=True)
class ArrayValue:
    """A metadata array: its element type and length; values only when short.

    Long integer arrays keep the set of values that occur (``distinct``, the first 256);
    the vocabulary keeps, per tokenizer in :data:`BYTE_TOKENS`, the bytes it has a token for.
    """

    type: int
    count: int
    values: tuple[Any, ...] | None = None
    distinct: frozenset[int] | None = None
    byte_tokens: Mapping[str, frozenset[int]] | None = None


def block_index(tensor_name: str) -> int | None:
    """N for a repeating-layer tensor ``blk.N.*``, else None."""
    if not tensor_name.startswith(BLOCK_PREFIX):
        return None
    n = tensor_name[len(BLOCK_PREFIX) :].partition(".")[0]
    return int(n) if n.isdigit() and n.isascii() else None


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


_INT_TYPES = {
    GGUFValueType.UINT8, GGUFValueType.INT8, GGUFValueType.UINT16, GGUFValueType.INT16,
    GGUFValueType.UINT32, GGUFValueType.INT32, GGUFValueType.UINT64, GGUFValueType.INT64,
}  # fmt: skip


class _Meta:
    """The metadata with ``{arch}`` keys resolved; every read value is already bounded."""

    def __init__(self, metadata: Mapping[str, Any], arch: str) -> None:
        self.metadata = metadata
        self.arch = arch

    def key(self, key: str) -> str:
        return key.format(arch=self.arch)

    def raw(self, key: str) -> Any:
        return self.metadata.get(self.key(key))

    def most(self, key: str) -> int:
        """The value, or the largest per-layer value; 0 when absent."""
        v = self.raw(key)
        if isinstance(v, ArrayValue):
            return max(v.values or (0,))
        return int(v) if _is_int(v) else 0


def check(metadata: Mapping[str, Any], tensor_names: Iterable[str]) -> None:
    """Raise InvalidModelFile (a message without the path) for what llama.cpp asserts on."""
    arch = metadata.get(Keys.General.ARCHITECTURE)
    if not isinstance(arch, str) or not arch:
        raise InvalidModelFile(f"{Keys.General.ARCHITECTURE} is missing or not a string")
    meta = _Meta(metadata, arch)
    names = list(tensor_names)
    for rule in RULES:
        rule(meta, names)


def _tokens(meta: _Meta, names: list[str]) -> None:
    tokens = meta.metadata.get(Keys.Tokenizer.LIST)
    model = meta.metadata.get(Keys.Tokenizer.MODEL)
    if model is not None and model not in TOKENIZER_MODELS:
        raise InvalidModelFile(
            f"{Keys.Tokenizer.MODEL} {model!r} is not a tokenizer llama.cpp can run "
            f"(known: {', '.join(TOKENIZER_MODELS)})"
        )
    if tokens is None:
        return
    if not isinstance(tokens, ArrayValue) or tokens.type != GGUFValueType.STRING:
        raise InvalidModelFile(f"{Keys.Tokenizer.LIST} is not an array of strings")
    for key in (Keys.Tokenizer.SCORES, Keys.Tokenizer.TOKEN_TYPE):
        v = meta.metadata.get(key)
        if v is not None and (not isinstance(v, ArrayValue) or v.count != tokens.count):
            raise InvalidModelFile(f"{key} does not have one entry per token ({tokens.count})")
    for key in TOKEN_ID_KEYS:
        v = meta.metadata.get(key)
        if v is not None and (not _is_int(v) or not -1 <= v < tokens.count):
            raise InvalidModelFile(f"{key} = {v!r} is not a token id below {tokens.count}")
    covered = (tokens.byte_tokens or {}).get(str(model), frozenset())
    if model in BYTE_TOKENS and len(covered) < 256:
        raise InvalidModelFile(
            f"{Keys.Tokenizer.MODEL} {model!r} needs a token for every byte, and "
            f"{256 - len(covered)} of 256 are missing from {Keys.Tokenizer.LIST}"
        )
    types = meta.metadata.get(Keys.Tokenizer.TOKEN_TYPE)
    kinds = (types.values or types.distinct or ()) if isinstance(types, ArrayValue) else ()
    if model in NO_BYTE_TOKEN_MODELS and TokenType.BYTE in kinds:
        raise InvalidModelFile(f"{Keys.Tokenizer.MODEL} {model!r} has no byte tokens")


def _bounded(meta: _Meta, names: list[str]) -> None:
    n_layer = meta.raw(Keys.LLM.BLOCK_COUNT)
    for key, limit in HPARAM_LIMITS.items():
        v, name = meta.raw(key), meta.key(key)
        if v is None:
            continue
        if isinstance(v, ArrayValue) and key in PER_LAYER:
            if v.type not in _INT_TYPES or v.values is None:
                raise InvalidModelFile(f"{name} is not an array of integers, one per layer")
            if v.count != n_layer:
                raise InvalidModelFile(f"{name} has {v.count} entries for {n_layer!r} layers")
            values: tuple[Any, ...] = v.values
        else:
            values = (v,)
        for x in values:
            if not _is_int(x) or not 0 <= x <= limit:
                raise InvalidModelFile(f"{name} = {x!r} is not an integer from 0 to {limit}")


def _blocks(meta: _Meta, names: list[str]) -> None:
    n_layer = meta.raw(Keys.LLM.BLOCK_COUNT)
    if n_layer is None:
        return
    key = meta.key(Keys.LLM.BLOCK_COUNT)
    if n_layer < 1:
        raise InvalidModelFile(f"{key} is 0; llama.cpp needs at least one block")
    blocks = {i for i in map(block_index, names) if i is not None}
    top = max(blocks, default=-1)
    if top >= n_layer:
        raise InvalidModelFile(f"tensor {BLOCK_PREFIX}{top}.* is beyond {key} = {n_layer}")
    if top + 1 < n_layer:
        raise InvalidModelFile(f"{key} = {n_layer} but tensors exist for {top + 1} blocks")
    nextn = meta.raw(Keys.LLM.NEXTN_PREDICT_LAYERS)
    if nextn is not None and nextn > n_layer:
        raise InvalidModelFile(f"{meta.key(Keys.LLM.NEXTN_PREDICT_LAYERS)} exceeds {key}")


def _experts(meta: _Meta, names: list[str]) -> None:
    n_expert = meta.most(Keys.LLM.EXPERT_COUNT)
    used = meta.most(Keys.LLM.EXPERT_USED_COUNT)
    groups = meta.most(Keys.LLM.EXPERT_GROUP_COUNT)
    group_used = meta.most(Keys.LLM.EXPERT_GROUP_USED_COUNT)
    arch = _ARCHS.get(meta.arch)
    if arch in EXPERTS_IGNORED_UP_TO_ONE and n_expert <= 1:
        n_expert = used = 0
    count_key, used_key = meta.key(Keys.LLM.EXPERT_COUNT), meta.key(Keys.LLM.EXPERT_USED_COUNT)
    if n_expert == 0:
        if used or groups:
            raise InvalidModelFile(f"{used_key} is {used} but the model has no experts")
        return
    if arch is not None and not set(EXPERT_TENSORS) & set(MODEL_TENSORS.get(arch, ())):
        raise InvalidModelFile(f"{count_key} = {n_expert} on {meta.arch!r}, a dense model")
    patterns = [TENSOR_NAMES[t].partition("{bid}")[2] for t in EXPERT_TENSORS]
    if not any(name.startswith(BLOCK_PREFIX) and p in name for name in names for p in patterns):
        raise InvalidModelFile(f"{count_key} = {n_expert} but the file has no expert tensors")
    if not 0 < used <= n_expert:
        raise InvalidModelFile(f"{used_key} = {used}, but it must be 1 to {count_key} ({n_expert})")
    if groups >= n_expert or (groups > 1 and (n_expert % groups or not 0 < group_used < groups)):
        raise InvalidModelFile(
            f"expert groups ({groups}, {group_used} used) do not divide {n_expert} experts"
        )


def _rope(meta: _Meta, names: list[str]) -> None:
    v = meta.raw(Keys.Rope.SCALING_TYPE)
    if v is not None and v not in ROPE_SCALING_TYPES:
        raise InvalidModelFile(
            f"{meta.key(Keys.Rope.SCALING_TYPE)} {v!r} is not one llama.cpp knows "
            f"({', '.join(ROPE_SCALING_TYPES)})"
        )


RULES: tuple[Callable[[_Meta, list[str]], None], ...] = (
    _tokens,
    _bounded,
    _blocks,
    _experts,
    _rope,
)
