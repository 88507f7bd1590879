"""Architecture registry: one class per Hugging Face family, overriding only what differs.

As in llama.cpp's ``convert_hf_to_gguf``: ``@register("Qwen3ForCausalLM")`` classes set
the hyper-parameters (:meth:`Arch.set_parameters`) and may transform tensors
(:meth:`Arch.transform`). Tensor names are mapped by gguf-py's
``get_tensor_name_map`` for the class's ``MODEL_ARCH``; no GGUF name is written by hand.
Shapes are checked against ``config.json`` before anything is written.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import gguf
import numpy as np

from ggrun.errors import ConversionError, UnsupportedArchitecture
from ggrun.ggufcheck import HPARAM_LIMITS

REGISTRY: dict[str, type[Arch]] = {}

# config.json key -> the GGUF key it becomes: its bound (what ggrun's validator accepts)
LIMITED = {
    "num_hidden_layers": gguf.Keys.LLM.BLOCK_COUNT,
    "hidden_size": gguf.Keys.LLM.EMBEDDING_LENGTH,
    "intermediate_size": gguf.Keys.LLM.FEED_FORWARD_LENGTH,
    "num_attention_heads": gguf.Keys.Attention.HEAD_COUNT,
    "num_key_value_heads": gguf.Keys.Attention.HEAD_COUNT_KV,
    "head_dim": gguf.Keys.Attention.KEY_LENGTH,
    "vocab_size": gguf.Keys.LLM.VOCAB_SIZE,
    "max_position_embeddings": gguf.Keys.LLM.CONTEXT_LENGTH,
}
FLOAT32_MAX = 3.4028234663852886e38
# Hugging Face rope_scaling.rope_type -> gguf-py's type (others are not converted)
ROPE_SCALING = {
    "linear": gguf.RopeScalingType.LINEAR,
    "yarn": gguf.RopeScalingType.YARN,
}


def _show(v: Any) -> str:
    """A config value for a message: its type, and the value when short."""
    text = repr(v)
    return f"{type(v).__name__} {text}" if len(text) <= 40 else f"a long {type(v).__name__}"


def register(*hf_names: str) -> Callable[[type[Arch]], type[Arch]]:
    def deco(cls: type[Arch]) -> type[Arch]:
        for n in hf_names:
            REGISTRY[n] = cls
        return cls

    return deco


def for_config(config: dict[str, Any], hf_arch: str) -> Arch:
    cls = REGISTRY.get(hf_arch)
    if cls is None:
        raise UnsupportedArchitecture(
            f"architecture {hf_arch!r} is not supported by ggrun convert "
            f"(supported: {', '.join(sorted(REGISTRY))})"
        )
    arch = cls(config)
    arch.set_parameters(gguf.GGUFWriter(path=None, arch=arch.arch_name))  # checks every value
    return arch


class Arch:
    """Base class: a decoder-only transformer with llama-style tensors."""

    model_arch: ClassVar[gguf.MODEL_ARCH]
    pre_tokenizer: ClassVar[str | None] = None  # tokenizer.ggml.pre; None = detect

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.n_layers = self.need("num_hidden_layers")
        self.hidden = self.need("hidden_size")
        self.n_head = self.need("num_attention_heads")
        self.n_head_kv = self.optional_int("num_key_value_heads") or self.n_head
        self.head_dim = self.optional_int("head_dim") or self.hidden // self.n_head
        self.ffn = self.need("intermediate_size")
        self.vocab_size = self.need("vocab_size")
        self.name_map = gguf.get_tensor_name_map(self.model_arch, self.n_layers)
        # GGUF name of each of this architecture's tensors (every block) -> its kind
        self.kinds = {
            gguf.TENSOR_NAMES[kind].format(bid=bid): kind
            for kind in gguf.MODEL_TENSORS[self.model_arch]
            for bid in range(self.n_layers)
        }

    @property
    def arch_name(self) -> str:
        return gguf.MODEL_ARCH_NAMES[self.model_arch]

    def need(self, key: str) -> int:
        v = self.optional_int(key)
        if v is None:
            raise ConversionError(f"config.json: {key!r} is missing")
        return v

    def optional_int(self, key: str) -> int | None:
        """A positive integer no larger than the GGUF key it becomes allows; None if absent."""
        v = self.config.get(key)
        if v is None:
            return None
        limit = HPARAM_LIMITS[LIMITED[key]]
        if not isinstance(v, int) or isinstance(v, bool) or not 0 < v <= limit:
            raise ConversionError(
                f"config.json: {key!r} is {_show(v)}, not an integer from 1 to {limit}"
            )
        return v

    def optional_number(self, key: str, within: dict[str, Any] | None = None) -> float | None:
        """A finite number that fits a float32; None if absent."""
        v = (self.config if within is None else within).get(key)
        if v is None:
            return None
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not abs(v) <= FLOAT32_MAX:
            raise ConversionError(
                f"config.json: {key!r} is {_show(v)}, not a number that fits a float32"
            )
        return v

    def optional_mapping(self, key: str) -> dict[str, Any]:
        v = self.config.get(key)
        if v is None:
            return {}
        if not isinstance(v, dict):
            raise ConversionError(f"config.json: {key!r} is {_show(v)}, not an object")
        return v

    # -- metadata ---------------------------------------------------------------------
    def set_parameters(self, w: gguf.GGUFWriter) -> None:
        w.add_block_count(self.n_layers)
        ctx = self.optional_int("max_position_embeddings")
        if ctx is not None:
            w.add_context_length(ctx)
        w.add_embedding_length(self.hidden)
        w.add_feed_forward_length(self.ffn)
        w.add_head_count(self.n_head)
        w.add_head_count_kv(self.n_head_kv)
        rope = self.optional_mapping("rope_scaling")
        rope_type = rope.get("rope_type")
        kind = ROPE_SCALING.get(rope_type) if isinstance(rope_type, str) else None
        factor = self.optional_number("factor", rope) if kind is not None else None
        if kind is not None and factor is not None:
            w.add_rope_scaling_type(kind)
            w.add_rope_scaling_factor(factor)
            if kind == gguf.RopeScalingType.YARN:
                orig = rope.get("original_max_position_embeddings")
                if not isinstance(orig, int) or isinstance(orig, bool) or not 0 < orig < 2**32:
                    raise ConversionError(
                        "config.json: rope_scaling needs an integer "
                        f"'original_max_position_embeddings' for yarn, not {_show(orig)}"
                    )
                w.add_rope_scaling_orig_ctx_len(orig)
        theta = self.optional_number("rope_theta")
        if "rope_theta" not in self.config:
            theta = self.optional_number("rope_theta", self.optional_mapping("rope_parameters"))
        if theta is not None:
            w.add_rope_freq_base(theta)
        eps = self.optional_number("rms_norm_eps")
        if eps is not None:
            w.add_layer_norm_rms_eps(eps)
        head_dim = self.optional_int("head_dim")
        if head_dim is not None:
            w.add_key_length(head_dim)
            w.add_value_length(head_dim)

    # -- tensors ------------------------------------------------------------------------
    def gguf_name(self, hf_name: str) -> str | None:
        """The GGUF name of a checkpoint tensor; None for tensors that are not written."""
        if hf_name.endswith(("rotary_emb.inv_freq", ".attention.masked_bias")):
            return None
        new = self.name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if new is None:
            raise ConversionError(
                f"tensor {hf_name!r} has no GGUF name for architecture "
                f"{self.arch_name!r} (unmapped tensor)"
            )
        return str(new)

    def expected_shape(self, gguf_name: str) -> tuple[int, ...] | None:
        """The shape config.json implies for a tensor (numpy order), when known."""
        base, _, suffix = gguf_name.rpartition(".")  # "blk.3.attn_q", "weight"
        kind = self.kinds.get(base)
        if kind is None:
            return None
        h, q, kv = self.hidden, self.n_head * self.head_dim, self.n_head_kv * self.head_dim
        T = gguf.MODEL_TENSOR
        table: dict[tuple[gguf.MODEL_TENSOR, str], tuple[int, ...]] = {
            (T.TOKEN_EMBD, "weight"): (self.vocab_size, h),
            (T.OUTPUT, "weight"): (self.vocab_size, h),
            (T.OUTPUT_NORM, "weight"): (h,),
            (T.ATTN_NORM, "weight"): (h,),
            (T.FFN_NORM, "weight"): (h,),
            (T.ATTN_Q, "weight"): (q, h),
            (T.ATTN_K, "weight"): (kv, h),
            (T.ATTN_V, "weight"): (kv, h),
            (T.ATTN_Q, "bias"): (q,),
            (T.ATTN_K, "bias"): (kv,),
            (T.ATTN_V, "bias"): (kv,),
            (T.ATTN_OUT, "weight"): (h, q),
            (T.ATTN_Q_NORM, "weight"): (self.head_dim,),
            (T.ATTN_K_NORM, "weight"): (self.head_dim,),
            (T.FFN_GATE, "weight"): (self.ffn, h),
            (T.FFN_UP, "weight"): (self.ffn, h),
            (T.FFN_DOWN, "weight"): (h, self.ffn),
        }
        return table.get((kind, suffix))

    def row_permutation(self, hf_name: str) -> np.ndarray | None:
        """A row order to apply, streamed (None: rows stay in place)."""
        return None


@register("Qwen2ForCausalLM")
class Qwen2(Arch):
    """Qwen2 / Qwen2.5: q/k/v projections carry a bias."""

    model_arch = gguf.MODEL_ARCH.QWEN2
    pre_tokenizer = "qwen2"


@register("Qwen3ForCausalLM")
class Qwen3(Arch):
    """Qwen3: per-head q_norm/k_norm, no q/k/v bias, tied embeddings."""

    model_arch = gguf.MODEL_ARCH.QWEN3
    pre_tokenizer = "qwen2"


@register("LlamaForCausalLM")
class Llama(Arch):
    """Llama: q/k rows permuted for llama.cpp's rope, as upstream does."""

    model_arch = gguf.MODEL_ARCH.LLAMA

    def set_parameters(self, w: gguf.GGUFWriter) -> None:
        super().set_parameters(w)
        w.add_vocab_size(self.vocab_size)
        w.add_rope_dimension_count(self.head_dim)

    def row_permutation(self, hf_name: str) -> np.ndarray | None:
        if hf_name.endswith(("q_proj.weight", "q_proj.bias")):
            heads = self.n_head
        elif hf_name.endswith(("k_proj.weight", "k_proj.bias")):
            heads = self.n_head_kv
        else:
            return None
        rows = np.arange(heads * self.head_dim)
        # upstream: w.reshape(n_head, 2, rows // n_head // 2, ...).swapaxes(1, 2)
        return rows.reshape(heads, 2, self.head_dim // 2).swapaxes(1, 2).reshape(-1)
