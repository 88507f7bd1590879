"""``ggrun convert``: Hugging Face safetensors -> GGUF, with a progress bar per output."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer


def convert(
    src: Annotated[
        str,
        typer.Argument(
            help="A Hugging Face model folder, or a hub repo id "
            "such as Qwen/Qwen3-1.7B (downloaded first)."
        ),
    ],
    quant: Annotated[
        str,
        typer.Option(
            "--quant",
            "-q",
            help="Comma-separated: f32, f16, "
            "bf16, q8_0, q6_k, q5_k_m, q4_k_m, q4_0. Several outputs share one read "
            "of the source.",
        ),
    ] = "q4_k_m",
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Output folder (default: the current one) or, for one quant, a .gguf file.",
        ),
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Show the architecture, tensors, planned types and sizes; write nothing.",
        ),
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Overwrite existing outputs.")] = False,
    keep_intermediate: Annotated[
        bool,
        typer.Option(
            "--keep-intermediate", help="Keep the BF16/F16 file quantized outputs are made from."
        ),
    ] = False,
    threads: Annotated[
        int | None,
        typer.Option("--threads", "-t", min=1, help="Quantizer threads (default: all cores)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Convert safetensors weights to GGUF (Qwen3, Qwen2, Llama).

    Output names default to <model>-<QUANT>.gguf. Files appear under their final name only
    when complete.
    """
    from ggrun.converter import load

    conv = load()

    if dry_run:
        p = conv.plan(src, quant, out)
        info = {
            "source": str(p.src),
            "architecture": p.hf_arch,
            "gguf_arch": p.gguf_arch,
            "source_dtype": p.source_dtype,
            "source_bytes": p.source_bytes,
            "tensors": p.n_tensors,
            "tensor_types": p.types,
            "quantized_from": p.intermediate,
            "outputs": [
                {"quant": o.quant, "path": str(o.path), "bytes": o.est_bytes} for o in p.outputs
            ],
        }
        if as_json:
            typer.echo(json.dumps(info, indent=2))
            return
        typer.echo(
            f"{p.src}: {p.hf_arch} -> {p.gguf_arch}, {p.n_tensors} tensors, "
            f"{p.source_dtype}, {p.source_bytes / 1e6:,.0f} MB"
        )
        typer.echo("float tensor types: " + ", ".join(f"{k} x{v}" for k, v in p.types.items()))
        if p.intermediate:
            typer.echo(f"quantized outputs are made from a {p.intermediate.upper()} intermediate")
        for o in p.outputs:
            approx = "about " if o.quant in conv.QUANTS else ""
            typer.echo(f"  {o.quant.upper():<7} {o.path}  ({approx}{o.est_bytes / 1e6:,.0f} MB)")
        return

    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TaskID,
        TimeRemainingColumn,
    )

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    ) as bar:
        tasks: dict[str, TaskID] = {}

        def progress(label: str, done: int, total: int) -> None:
            if label not in tasks:
                tasks[label] = bar.add_task(label, total=total)
            bar.update(tasks[label], completed=done, total=total)

        paths = conv.convert(
            src,
            quant,
            out,
            force=force,
            keep_intermediate=keep_intermediate,
            progress=progress,
            threads=threads,
        )
    if as_json:
        typer.echo(json.dumps([str(p) for p in paths]))
    else:
        for path in paths:
            typer.echo(str(path))
