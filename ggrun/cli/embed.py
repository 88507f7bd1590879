"""``ggrun embed``: one unit vector per text (mean-pooled, L2-normalized).

By default one short line per text goes to stdout (tokens, dimensions, norm, the first
values); ``--json`` prints one JSON object instead: the model, the dimensions, each
text's token count and the vectors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ggrun.cli import options

MAX_FILE_BYTES = 64 << 20  # a texts file: far past what anyone embeds in one command
SHOWN = 4  # values shown per vector in the human output
PREVIEW = 48  # characters of each text shown

# the load options that matter to an embedding (no sampling, no speculation)
EMBED_LOAD = {
    k: options.LOAD[k] for k in ("ctx", "threads", "device", "gpu_layers", "mmap", "verbose")
}


@options.with_options(EMBED_LOAD)
def embed(
    model: Annotated[str, typer.Argument(help="A .gguf path or a model alias.")],
    texts: Annotated[
        list[str] | None,
        typer.Argument(help="The texts to embed, one vector each.", show_default=False),
    ] = None,
    file: Annotated[
        Path | None,
        typer.Option("--file", "-f", help="Embed each line of this file (blank lines skipped)."),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object: model, dims, tokens, vectors.")
    ] = False,
    *,
    opts: dict[str, Any],
) -> None:
    """Embed each TEXT (or each line of --file) into one unit vector.

    Any GGUF works: its tokens' states are mean-pooled (or pooled as an embedding model's
    file says) and L2-normalized, as llama.cpp does. A text is at most --ctx tokens.
    Examples:

      ggrun embed qwen2.5-coder-0.5b "The cat sat on the mat." "A cat was on the rug."

      ggrun embed model.gguf --file sentences.txt --json > vectors.json
    """
    import json
    import sys

    items = _texts(texts, file)
    with options.load_model(model, opts, context=False) as m:
        result = m.embedder.embed(items)
        dims = m.embedder.n_embd
        pooling = m.embedder.pooling
    if as_json:
        out = {"model": model, "dims": dims, "pooling": pooling,
               "tokens": list(result.n_tokens), "vectors": result.tolist()}  # fmt: skip
        sys.stdout.write(json.dumps(out) + "\n")
        return
    width = len(str(len(items)))
    for i, (text, vector, n) in enumerate(zip(items, result.vectors, result.n_tokens, strict=True)):
        norm = float((vector.astype("float64") ** 2).sum() ** 0.5)
        head = " ".join(f"{x:+.4f}" for x in vector[:SHOWN])
        sys.stdout.write(
            f"{i + 1:>{width}}  {n} tokens  {dims} dims  norm {norm:.4f}  [{head} ...]  "
            f"{_preview(text)}\n"
        )


def _texts(texts: list[str] | None, file: Path | None) -> list[str]:
    """The TEXT arguments, or the non-blank lines of --file (a checked UTF-8 file)."""
    from ggrun.errors import InvalidArgument

    if file is not None:
        if texts:
            raise InvalidArgument("give TEXT... or --file, not both")
        from ggrun.files import read_text

        lines = read_text(file, what="text", limit=MAX_FILE_BYTES).splitlines()
        items = [line for line in lines if line.strip()]
        if not items:
            raise InvalidArgument(f"{file}: no text to embed (every line is blank)")
        return items
    if not texts:
        raise InvalidArgument("nothing to embed: give TEXT... or --file")
    return list(texts)


def _preview(text: str) -> str:
    """The start of ``text``, quoted on one line (newlines and controls escaped)."""
    import json

    shown = text if len(text) <= PREVIEW else text[: PREVIEW - 1] + "…"
    return json.dumps(shown, ensure_ascii=False)
