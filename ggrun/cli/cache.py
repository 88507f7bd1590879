"""``ggrun cache``: the prompt states kept on disk (list, size, clear)."""

from __future__ import annotations

import json
import time
from typing import Annotated

import typer

app = typer.Typer(
    help="The prompt cache: KV states of prompts read before, in $GGRUN_HOME/cache. "
    "`ggrun cache` lists them; `ggrun cache clear` deletes them.",
    no_args_is_help=False,
)


@app.callback(invoke_without_command=True)
def show(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document.")] = False,
) -> None:
    """List the states: model, tokens, size, last use; and the total."""
    if ctx.invoked_subcommand is not None:
        return
    from ggrun.files import size_text
    from ggrun.promptcache import cache_root, listing

    rows = listing()
    total = sum(r["bytes"] for r in rows)
    if as_json:
        typer.echo(json.dumps({"path": str(cache_root()), "bytes": total, "states": rows}))
        return
    if not rows:
        typer.echo(f"the prompt cache is empty ({cache_root()})")
        return
    for r in sorted(rows, key=lambda r: -r.get("used", 0)):
        used = time.strftime("%Y-%m-%d %H:%M", time.localtime(r.get("used", 0)))
        size = size_text(r["bytes"])
        typer.echo(f"{r['model']:40.40}  {r['tokens']:>7} tokens  {size:>8}  {used}")
    typer.echo(f"{len(rows)} states, {size_text(total)} in {cache_root()}")


@app.command()
def clear(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document.")] = False,
) -> None:
    """Delete every prompt state (all models)."""
    from ggrun.files import size_text
    from ggrun.promptcache import clear as clear_all

    n, size = clear_all()
    if as_json:
        typer.echo(json.dumps({"deleted": n, "bytes": size}))
    else:
        typer.echo(f"deleted {n} states ({size_text(size)})")
