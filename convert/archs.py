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

REGISTRY: dict[str, type[Arch]] = {}


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
    return cls(config)


class Arch:
    """Base class: a decoder-only transformer with llama-style tensors."""

    model_arch: ClassVar[gguf.MODEL_ARCH]
    pre_tokenizer: ClassVar[str | None] = None  # tokenizer.ggml.pre; None = detect

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.n_layers = self.need("num_hidden_layers")
        self.hidden = self.need("hidden_size")
        self.n_head = self.need("num_attention_heads")
        self.n_head_kv = int(config.get("num_key_value_heads") or self.n_head)
        self.head_dim = int(config.get("head_dim") or self.hidden // self.n_head)
        self.ffn = self.need("intermediate_size")
        self.vocab_size = self.need("vocab_size")
        self.name_map = gguf.get_tensor_name_map(self.model_arch, self.n_layers)

    @property
    def arch_name(self) -> str:
        return gguf.MODEL_ARCH_NAMES[self.model_arch]

    def need(self, key: str) -> int:
        v = self.config.get(key)
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            raise ConversionError(f"config.json: {key!r} is missing or not a positive integer")
        return v

    # -- metadata ---------------------------------------------------------------------
    def set_parameters(self, w: gguf.GGUFWriter) -> None:
        c = self.config
        w.add_block_count(self.n_layers)
        ctx = c.get("max_position_embeddings")
        if isinstance(ctx, int):
            w.add_context_length(ctx)
        w.add_embedding_length(self.hidden)
        w.add_feed_forward_length(self.ffn)
        w.add_head_count(self.n_head)
        w.add_head_count_kv(self.n_head_kv)
        rope = c.get("rope_scaling") or {}
        if (
            isinstance(rope, dict)
            and rope.get("rope_type") in ("linear", "yarn")
            and rope.get("factor") is not None
        ):
            kind = (
                gguf.RopeScalingType.LINEAR
                if rope["rope_type"] == "linear"
                else gguf.RopeScalingType.YARN
            )
            w.add_rope_scaling_type(kind)
            w.add_rope_scaling_factor(rope["factor"])
            if kind == gguf.RopeScalingType.YARN:
                w.add_rope_scaling_orig_ctx_len(rope["original_max_position_embeddings"])
        theta = c.get("rope_theta", (c.get("rope_parameters") or {}).get("rope_theta"))
        if theta is not None:
            w.add_rope_freq_base(theta)
        if c.get("rms_norm_eps") is not None:
            w.add_layer_norm_rms_eps(c["rms_norm_eps"])
        if c.get("head_dim") is not None:
            w.add_key_length(c["head_dim"])
            w.add_value_length(c["head_dim"])

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
        h, q, kv = self.hidden, self.n_head * self.head_dim, self.n_head_kv * self.head_dim
        base = gguf_name.split(".", 2)[-1] if gguf_name.startswith("blk.") else gguf_name
        table = {
            "token_embd.weight": (self.vocab_size, h),
            "output.weight": (self.vocab_size, h),
            "output_norm.weight": (h,),
            "attn_norm.weight": (h,),
            "ffn_norm.weight": (h,),
            "attn_q.weight": (q, h),
            "attn_k.weight": (kv, h),
            "attn_v.weight": (kv, h),
            "attn_q.bias": (q,),
            "attn_k.bias": (kv,),
            "attn_v.bias": (kv,),
            "attn_output.weight": (h, q),
            "attn_q_norm.weight": (self.head_dim,),
            "attn_k_norm.weight": (self.head_dim,),
            "ffn_gate.weight": (self.ffn, h),
            "ffn_up.weight": (self.ffn, h),
            "ffn_down.weight": (h, self.ffn),
        }
        return table.get(base)

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
        w.add_rope_dimension_count(int(self.config.get("head_dim") or self.hidden // self.n_head))

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
