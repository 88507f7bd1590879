"""Test helpers: copies of real GGUF files with changed metadata (gguf-py's own copier)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gguf
from gguf.scripts.gguf_new_metadata import MetadataDetails, copy_with_new_metadata

QWEN3_TEMPLATE = (Path(__file__).parent / "data" / "qwen3_template.jinja").read_text()


def rewrite_gguf(
    src: Path,
    dst: Path,
    *,
    arch: str | None = None,
    template: str | None = None,
    strings: dict[str, str] | None = None,
    remove: tuple[str, ...] = (),
) -> Path:
    """Copy ``src`` to ``dst`` with a new architecture, chat template or string values."""
    reader = gguf.GGUFReader(src)
    old_arch = reader.get_field(gguf.Keys.General.ARCHITECTURE).contents()
    new_arch = arch or old_arch
    new: dict[str, Any] = {}
    if template is not None:
        new[gguf.Keys.Tokenizer.CHAT_TEMPLATE] = MetadataDetails(
            gguf.GGUFValueType.STRING, template
        )
    for k, v in (strings or {}).items():
        new[k] = MetadataDetails(gguf.GGUFValueType.STRING, v)
    writer = gguf.GGUFWriter(dst, arch=new_arch, endianess=reader.endianess)
    if new_arch != old_arch:  # rename the {arch}.* keys too
        remove = remove + tuple(
            f.name for f in reader.fields.values() if f.name.startswith(old_arch + ".")
        )
    copy_with_new_metadata(reader, writer, new, list(remove))
    return dst
