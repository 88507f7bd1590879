"""Synthetic Hugging Face checkpoints for the converter's tests and benchmarks.

``write_qwen3(dir, shape)`` writes a Qwen3 checkpoint with the real tensor names and
layout, seeded random BF16 weights (norms 1, other weights N(0, 0.02)) and a real Qwen
tokenizer rebuilt from the tokens and merges inside the Qwen2.5 GGUF of MODELS.md, with
Qwen3's special tokens up to ``</think>`` (151668). Safetensors files are written with
numpy (no torch); BF16 values are rounded to nearest even from float32.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

QWEN2_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| "
    r"?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SPECIALS = [  # (id, content, special) as in Qwen3's tokenizer.json
    (151643, "<|endoftext|>", True),
    (151644, "<|im_start|>", True),
    (151645, "<|im_end|>", True),
    (151646, "<|object_ref_start|>", True),
    (151647, "<|object_ref_end|>", True),
    (151648, "<|box_start|>", True),
    (151649, "<|box_end|>", True),
    (151650, "<|quad_start|>", True),
    (151651, "<|quad_end|>", True),
    (151652, "<|vision_start|>", True),
    (151653, "<|vision_end|>", True),
    (151654, "<|vision_pad|>", True),
    (151655, "<|image_pad|>", True),
    (151656, "<|video_pad|>", True),
    (151657, "<tool_call>", False),
    (151658, "</tool_call>", False),
    (151659, "<|fim_prefix|>", True),
    (151660, "<|fim_middle|>", True),
    (151661, "<|fim_suffix|>", True),
    (151662, "<|fim_pad|>", True),
    (151663, "<|repo_name|>", True),
    (151664, "<|file_sep|>", True),
    (151665, "<tool_response>", False),
    (151666, "</tool_response>", False),
    (151667, "<think>", False),
    (151668, "</think>", False),
]
N_BPE = 151643


@dataclass(frozen=True)
class Shape:
    hidden: int = 64
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    head_dim: int = 16
    intermediate: int = 128
    vocab: int = 151936


TINY = Shape()
QWEN3_1_7B = Shape(hidden=2048, layers=28, heads=16, kv_heads=8, head_dim=128, intermediate=6144)


def to_bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> BF16 bit patterns (uint16), round to nearest even."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    return ((u + (0x7FFF + ((u >> 16) & 1))) >> 16).astype(np.uint16)


def write_safetensors(path: Path, tensors: dict[str, tuple[str, tuple[int, ...], bytes]]) -> None:
    """Write ``{name: (dtype, shape, raw bytes)}`` as a safetensors file."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {
            "dtype": dtype,
            "shape": list(shape),
            "data_offsets": [offset, offset + len(raw)],
        }
        offset += len(raw)
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        for _dtype, _shape, raw in tensors.values():
            f.write(raw)


@lru_cache(maxsize=2)
def qwen_vocab(gguf_path: str) -> tuple[list[str], list[str]]:
    """The BPE tokens (ids 0..151642) and merges of a Qwen2.5 GGUF."""
    import gguf

    r = gguf.GGUFReader(gguf_path)
    tokens = r.get_field("tokenizer.ggml.tokens").contents()[:N_BPE]
    merges = r.get_field("tokenizer.ggml.merges").contents()
    return list(tokens), list(merges)


def write_tokenizer(
    folder: Path,
    qwen_gguf: Path,
    chat_template: str,
    specials: list[tuple[int, str, bool]] = SPECIALS,
) -> None:
    tokens, merges = qwen_vocab(str(qwen_gguf))
    tok = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {
                "id": i,
                "content": c,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": s,
            }
            for i, c, s in specials
        ],
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {
                    "type": "Split",
                    "pattern": {"Regex": QWEN2_REGEX},
                    "behavior": "Isolated",
                    "invert": False,
                },
                {
                    "type": "ByteLevel",
                    "add_prefix_space": False,
                    "trim_offsets": False,
                    "use_regex": False,
                },
            ],
        },
        "post_processor": {
            "type": "ByteLevel",
            "add_prefix_space": False,
            "trim_offsets": False,
            "use_regex": False,
        },
        "decoder": {
            "type": "ByteLevel",
            "add_prefix_space": False,
            "trim_offsets": False,
            "use_regex": False,
        },
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": "",
            "end_of_word_suffix": "",
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": {t: i for i, t in enumerate(tokens)},
            "merges": [m.split(" ", 1) for m in merges],
        },
    }
    (folder / "tokenizer.json").write_text(json.dumps(tok, ensure_ascii=False))
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "add_bos_token": False,
                "add_prefix_space": False,
                "bos_token": None,
                "eos_token": "<|im_end|>",
                "pad_token": "<|endoftext|>",
                "errors": "replace",
                "model_max_length": 131072,
                "split_special_tokens": False,
                "tokenizer_class": "Qwen2Tokenizer",
                "unk_token": None,
                "chat_template": chat_template,
                "added_tokens_decoder": {
                    str(i): {
                        "content": c,
                        "lstrip": False,
                        "normalized": False,
                        "rstrip": False,
                        "single_word": False,
                        "special": s,
                    }
                    for i, c, s in specials
                },
            },
            ensure_ascii=False,
            indent=2,
        )
    )


FAMILIES = {  # hf architecture, model_type, q/k/v bias, q/k norm
    "qwen3": ("Qwen3ForCausalLM", "qwen3", False, True),
    "qwen2": ("Qwen2ForCausalLM", "qwen2", True, False),
    "llama": ("LlamaForCausalLM", "llama", False, False),
}


def qwen3_tensors(shape: Shape, family: str = "qwen3") -> list[tuple[str, tuple[int, ...]]]:
    _arch, _type, bias, qk_norm = FAMILIES[family]
    q, kv = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    out = [("model.embed_tokens.weight", (shape.vocab, shape.hidden))]
    for i in range(shape.layers):
        p = f"model.layers.{i}."
        out += [
            (p + "input_layernorm.weight", (shape.hidden,)),
            (p + "self_attn.q_proj.weight", (q, shape.hidden)),
            (p + "self_attn.k_proj.weight", (kv, shape.hidden)),
            (p + "self_attn.v_proj.weight", (kv, shape.hidden)),
            (p + "self_attn.o_proj.weight", (shape.hidden, q)),
        ]
        if bias:
            out += [
                (p + "self_attn.q_proj.bias", (q,)),
                (p + "self_attn.k_proj.bias", (kv,)),
                (p + "self_attn.v_proj.bias", (kv,)),
            ]
        if qk_norm:
            out += [
                (p + "self_attn.q_norm.weight", (shape.head_dim,)),
                (p + "self_attn.k_norm.weight", (shape.head_dim,)),
            ]
        out += [
            (p + "post_attention_layernorm.weight", (shape.hidden,)),
            (p + "mlp.gate_proj.weight", (shape.intermediate, shape.hidden)),
            (p + "mlp.up_proj.weight", (shape.intermediate, shape.hidden)),
            (p + "mlp.down_proj.weight", (shape.hidden, shape.intermediate)),
        ]
    out.append(("model.norm.weight", (shape.hidden,)))
    return out


def qwen3_config(shape: Shape, family: str = "qwen3") -> dict[str, Any]:
    arch, model_type, bias, _norm = FAMILIES[family]
    return {
        "architectures": [arch],
        "model_type": model_type,
        "attention_bias": bias,
        "attention_dropout": 0.0,
        "bos_token_id": 151643,
        "eos_token_id": 151645,
        "head_dim": shape.head_dim,
        "hidden_act": "silu",
        "hidden_size": shape.hidden,
        "initializer_range": 0.02,
        "intermediate_size": shape.intermediate,
        "max_position_embeddings": 40960,
        "max_window_layers": shape.layers,
        "num_attention_heads": shape.heads,
        "num_hidden_layers": shape.layers,
        "num_key_value_heads": shape.kv_heads,
        "rms_norm_eps": 1e-06,
        "rope_scaling": None,
        "rope_theta": 1000000,
        "sliding_window": None,
        "tie_word_embeddings": True,
        "torch_dtype": "bfloat16",
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": shape.vocab,
    }


def write_qwen3(
    folder: Path,
    qwen_gguf: Path,
    chat_template: str,
    shape: Shape = TINY,
    *,
    seed: int = 0,
    shards: int = 1,
    family: str = "qwen3",
) -> Path:
    """Write the checkpoint into ``folder`` (created) and return it."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = qwen3_tensors(shape, family)
    # values are drawn in one fixed order, so a sharded copy holds the same weights
    per_file: list[dict[str, tuple[str, tuple[int, ...], bytes]]] = [{} for _ in range(shards)]
    weight_map = {}
    for i, (name, shp) in enumerate(names):
        if name.endswith("norm.weight"):
            data = np.ones(shp, dtype=np.float32)
        else:
            data = rng.standard_normal(shp, dtype=np.float32) * np.float32(0.02)
        k = i * shards // len(names)
        fname = (
            "model.safetensors" if shards == 1 else f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
        )
        per_file[k][name] = ("BF16", shp, to_bf16(data).tobytes())
        weight_map[name] = fname
    for k, tensors in enumerate(per_file):
        fname = (
            "model.safetensors" if shards == 1 else f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
        )
        write_safetensors(folder / fname, tensors)
    del per_file
    if shards > 1:
        (folder / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {}, "weight_map": weight_map}, indent=2)
        )
    (folder / "config.json").write_text(json.dumps(qwen3_config(shape, family), indent=2))
    (folder / "generation_config.json").write_text(
        json.dumps(
            {
                "bos_token_id": 151643,
                "do_sample": True,
                "eos_token_id": [151645, 151643],
                "pad_token_id": 151643,
                "temperature": 0.6,
                "top_k": 20,
                "top_p": 0.95,
            },
            indent=2,
        )
    )
    write_tokenizer(folder, qwen_gguf, chat_template)
    return folder


# metadata compared between converters: large arrays by hash, small values as they are
HASHED_KEYS = (
    "tokenizer.ggml.tokens",
    "tokenizer.ggml.token_type",
    "tokenizer.ggml.merges",
    "tokenizer.chat_template",
)
VALUE_KEYS = (
    "tokenizer.ggml.pre",
    "tokenizer.ggml.eos_token_id",
    "tokenizer.ggml.padding_token_id",
    "tokenizer.ggml.bos_token_id",
    "tokenizer.ggml.add_bos_token",
    "general.file_type",
)


def digest(path: Path) -> dict[str, Any]:
    """What must match between two converters: tensors (name, type, shape, data hash),
    the tokenizer arrays and the chat template."""
    import hashlib

    import gguf

    r = gguf.GGUFReader(path)
    out: dict[str, Any] = {"tensors": {}}
    for t in r.tensors:
        out["tensors"][t.name] = {
            "type": gguf.GGMLQuantizationType(t.tensor_type).name,
            "shape": [int(d) for d in t.shape],
            "sha256": hashlib.sha256(np.asarray(t.data).tobytes()).hexdigest(),
        }
    for key in HASHED_KEYS:
        field = r.get_field(key)
        value = field.contents() if field is not None else None
        out[key] = hashlib.sha256(json.dumps(value, ensure_ascii=False).encode()).hexdigest()
    for key in VALUE_KEYS:
        field = r.get_field(key)
        out[key] = field.contents() if field is not None else None
    return out


QWEN25_SPECIALS = [(i, c, s) for i, c, s in SPECIALS if i <= 151664]


def dequantize_to_hf(gguf_path: Path, folder: Path, chat_template: str | None = None) -> Path:
    """Turn a Qwen2 GGUF back into a Hugging Face BF16 folder (real weights, rounded).

    Tensor names are mapped back with gguf-py's own table; the config comes from the
    GGUF's metadata and the tokenizer from its token and merge arrays.
    """
    import gguf

    folder.mkdir(parents=True, exist_ok=True)
    r = gguf.GGUFReader(gguf_path)

    def kv(key: str) -> Any:
        return r.get_field(key).contents()

    n_layers = int(kv("qwen2.block_count"))
    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN2, n_layers)
    reverse: dict[str, str] = {}
    for hf, (_kind, gname) in tmap.mapping.items():
        if hf.startswith(("model.", "lm_head")) and gname not in reverse:
            reverse[gname] = hf
    tensors = {}
    for t in r.tensors:
        base, _, suffix = t.name.rpartition(".")
        x = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).astype(np.float32)
        shape = tuple(int(d) for d in reversed([int(v) for v in t.shape]))
        x = x.reshape(shape)
        tensors[f"{reverse[base]}.{suffix}"] = ("BF16", shape, to_bf16(x).tobytes())
    write_safetensors(folder / "model.safetensors", tensors)
    has_output = any(t.name == "output.weight" for t in r.tensors)
    config = {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "hidden_size": int(kv("qwen2.embedding_length")),
        "intermediate_size": int(kv("qwen2.feed_forward_length")),
        "num_hidden_layers": n_layers,
        "num_attention_heads": int(kv("qwen2.attention.head_count")),
        "num_key_value_heads": int(kv("qwen2.attention.head_count_kv")),
        "max_position_embeddings": int(kv("qwen2.context_length")),
        "rope_theta": float(kv("qwen2.rope.freq_base")),
        "rms_norm_eps": float(kv("qwen2.attention.layer_norm_rms_epsilon")),
        "vocab_size": len(kv("tokenizer.ggml.tokens")),
        "tie_word_embeddings": not has_output,
        "torch_dtype": "bfloat16",
        "bos_token_id": 151643,
        "eos_token_id": 151645,
        "hidden_act": "silu",
        "sliding_window": None,
        "use_sliding_window": False,
        "max_window_layers": n_layers,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "use_cache": True,
        "rope_scaling": None,
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    template = chat_template if chat_template is not None else kv("tokenizer.chat_template")
    write_tokenizer(folder, gguf_path, template, specials=QWEN25_SPECIALS)
    return folder
