"""A Hugging Face checkpoint folder: config, weights (one or many shards), tokenizer.

``Checkpoint.open(src)`` accepts a local folder or a hub repo id (downloaded with
huggingface-hub into its cache, weights and tokenizer files only). Every shard header
is validated up front (:mod:`.safetensors`), so a truncated or lying shard fails
before any output is written.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ggrun.errors import ConversionError

from .safetensors import SafetensorsFile, TensorEntry

logger = logging.getLogger(__name__)

HUB_PATTERNS = ["*.json", "*.safetensors", "tokenizer.model", "*.jinja"]


MAX_JSON_BYTES = 64 << 20  # config and index files are kilobytes; tokenizer.json ~10 MB


def read_json(path: Path, what: str) -> Any:
    """A small JSON file; too big, too deep, or not JSON is a ConversionError."""
    try:
        if path.stat().st_size > MAX_JSON_BYTES:
            raise ConversionError(f"{path}: {what} is over {MAX_JSON_BYTES >> 20} MB")
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConversionError(f"{path.parent}: no {path.name} ({what})") from None
    except RecursionError:
        raise ConversionError(f"{path}: cannot read {what}: nested too deeply") from None
    except (OSError, ValueError) as e:  # ValueError: bad JSON, UTF-8, or a 5000-digit number
        raise ConversionError(f"{path}: cannot read {what}: {e}") from None


def _download(repo: str) -> Path:
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
    except ImportError as e:  # pragma: no cover - a declared dependency
        raise ConversionError(f"huggingface-hub is not usable: {e}") from None
    try:
        return Path(snapshot_download(repo, allow_patterns=HUB_PATTERNS))
    except LocalEntryNotFoundError:
        raise ConversionError(
            f"{repo}: not a local folder, and the Hugging Face hub cannot be reached (offline?)"
        ) from None
    except (HfHubHTTPError, OSError, ValueError) as e:
        raise ConversionError(f"{repo}: download failed: {str(e).splitlines()[0]}") from None


@dataclass
class Checkpoint:
    path: Path
    config: dict[str, Any]
    shards: list[SafetensorsFile] = field(default_factory=list)
    index: dict[str, tuple[SafetensorsFile, TensorEntry]] = field(default_factory=dict)

    @classmethod
    def open(cls, src: str | Path) -> Checkpoint:
        path = Path(src).expanduser()
        if not path.exists():
            if (
                "/" in str(src)
                and not str(src).startswith((".", "/", "~"))
                and str(src).count("/") == 1
            ):
                path = _download(str(src))
            else:
                raise ConversionError(f"{path}: no such folder")
        if not path.is_dir():
            raise ConversionError(f"{path}: expected a Hugging Face model folder")
        config = read_json(path / "config.json", "the model's config.json")
        if not isinstance(config, dict):
            raise ConversionError(f"{path / 'config.json'}: not a JSON object")
        ckpt = cls(path, config)
        try:
            ckpt._open_shards()
        except BaseException:
            ckpt.close()
            raise
        return ckpt

    def _open_shards(self) -> None:
        index_file = self.path / "model.safetensors.index.json"
        if index_file.exists():
            index = read_json(index_file, "the shard index")
            weight_map = index.get("weight_map") if isinstance(index, dict) else None
            if not isinstance(weight_map, dict) or not weight_map:
                raise ConversionError(f"{index_file}: no weight_map")
            for tname, fname in weight_map.items():
                if not isinstance(fname, str):
                    raise ConversionError(
                        f"{index_file}: weight_map[{tname!r}] is {type(fname).__name__}, "
                        "not a file name"
                    )
            files = sorted(set(weight_map.values()))
        elif (self.path / "model.safetensors").exists():
            files, weight_map = ["model.safetensors"], None
        else:
            raise ConversionError(
                f"{self.path}: no model.safetensors or "
                "model.safetensors.index.json (only safetensors weights "
                "are supported)"
            )
        for name in files:
            if "/" in name or "\\" in name or name.startswith("."):
                raise ConversionError(f"{index_file}: refusing shard path {name!r}")
            shard = SafetensorsFile(self.path / name)
            self.shards.append(shard)
            for tname, entry in shard.tensors.items():
                if tname in self.index:
                    raise ConversionError(f"tensor {tname!r} is in two shards")
                if weight_map is not None and weight_map.get(tname) != name:
                    raise ConversionError(
                        f"{name}: tensor {tname!r} is not where the index says it is"
                    )
                self.index[tname] = (shard, entry)
        if weight_map is not None:
            missing = sorted(set(weight_map) - set(self.index))
            if missing:
                raise ConversionError(f"{index_file}: tensor {missing[0]!r} is in no shard")

    @property
    def architecture(self) -> str:
        archs = self.config.get("architectures")
        if not isinstance(archs, list) or not archs or not isinstance(archs[0], str):
            raise ConversionError(f"{self.path / 'config.json'}: no 'architectures' entry")
        return archs[0]

    def entry(self, name: str) -> TensorEntry:
        return self.index[name][1]

    def array(self, name: str) -> np.ndarray:
        shard, _ = self.index[name]
        return shard.array(name)

    @property
    def source_dtype(self) -> str:
        """The dtype most weight bytes are stored in (BF16 for Qwen3)."""
        sizes: dict[str, int] = {}
        for _, e in self.index.values():
            sizes[e.dtype] = sizes.get(e.dtype, 0) + e.nbytes
        return max(sizes, key=lambda k: sizes[k]) if sizes else "F32"

    @property
    def nbytes(self) -> int:
        return sum(e.nbytes for _, e in self.index.values())

    def close(self) -> None:
        for s in self.shards:
            s.close()

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
