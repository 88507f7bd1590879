"""``ggrun bench``: which quant to use on this machine (speed, memory, quality)."""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

PANEL = "Measurement"


def bench(
    models: Annotated[
        list[str],
        typer.Argument(
            help="GGUF files, an alias (every local quant), or a Hugging Face checkpoint "
            "folder with --quant.",
            show_default=False,
        ),
    ],
    quant: Annotated[
        str | None,
        typer.Option("--quant", help="For a checkpoint folder: quants to convert (cached)."),
    ] = None,
    reference: Annotated[
        str | None,
        typer.Option("--reference", help="The model to compare against (default: most precise)."),
    ] = None,
    text: Annotated[
        Path | None,
        typer.Option("--text", help="Text for the quality pass (default: the bundled corpus)."),
    ] = None,
    chunks: Annotated[
        int, typer.Option("--chunks", min=1, help="Chunks scored.", rich_help_panel=PANEL)
    ] = 8,
    ctx: Annotated[
        int, typer.Option("--ctx", min=16, help="Chunk size in tokens.", rich_help_panel=PANEL)
    ] = 512,
    reps: Annotated[
        int, typer.Option("--reps", min=1, help="Speed repetitions.", rich_help_panel=PANEL)
    ] = 5,
    pp: Annotated[
        int, typer.Option("--pp", min=1, help="Prompt tokens (pp test).", rich_help_panel=PANEL)
    ] = 512,
    tg: Annotated[
        int, typer.Option("--tg", min=1, help="Generated tokens (tg test).", rich_help_panel=PANEL)
    ] = 128,
    threads: Annotated[
        int | None, typer.Option("--threads", "-t", min=1, help="Threads (default: plan).")
    ] = None,
    device: Annotated[
        str | None,
        typer.Option("--device", help="cpu, cuda, metal, rocm or vulkan (default: the plan's)."),
    ] = None,
    cache_type: Annotated[
        str,
        typer.Option(
            "--cache-type",
            help="KV cache types to compare, e.g. f16,q8_0,q4_0: each adds the speed and "
            "the quality cost (PPL, KLD against f16) of that cache.",
        ),
    ] = "f16",
    no_quality: Annotated[
        bool, typer.Option("--no-quality", help="Speed only (no perplexity/KLD pass).")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="JSON output.")] = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="CSV output.")] = False,
    as_markdown: Annotated[bool, typer.Option("--markdown", help="A Markdown table.")] = False,
    plot: Annotated[
        Path | None,
        typer.Option("--plot", help="Save speed against KLD as a PNG (needs matplotlib)."),
    ] = None,
) -> None:
    """Compare quants of a model on this machine: speed, memory and quality.

    For each model: size, load time, pp and tg speed, bandwidth, peak memory, and quality
    against the most precise one (perplexity, KLD, same top token); then a recommendation.

      ggrun bench model-Q4_K_M.gguf model-Q8_0.gguf model-F16.gguf

      ggrun bench ./Qwen3-1.7B --quant q4_k_m,q8_0,f16

      ggrun bench qwen3-1.7b
    """
    from rich.console import Console

    from ggrun import benchmark as b
    from ggrun.errors import InvalidArgument

    if plot is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise InvalidArgument("--plot needs matplotlib: pip install 'ggrun[plot]'") from None
    paths = b.expand(models, quant)
    cfg = b.BenchConfig(
        threads=threads, reps=reps, pp=pp, tg=tg, ctx=ctx, chunks=chunks, text=text,
        quality=not no_quality, device=device,
        cache_types=tuple(c.strip() for c in cache_type.split(",") if c.strip()),
    )  # fmt: skip
    if cfg.quality:
        b.corpus_text(cfg)  # a bad --text fails now, not after the speed runs
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    n = len(paths) * len(cfg.cache_types)
    steps = n + (0 if no_quality else chunks * max(1, n - 1))
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task("benchmarking", total=steps)
        started = [False]

        def step(message: str) -> None:  # a message starts a step: the previous one is done
            bar.update(task, description=message, advance=1 if started[0] else 0)
            started[0] = True

        results = b.bench(paths, reference=reference, config=cfg, progress=step)
        bar.advance(task)
    rows = [_row(r) for r in results]
    if as_json:
        typer.echo(json.dumps([r.as_dict() for r in results], indent=2))
    elif as_csv:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
        typer.echo(buf.getvalue().rstrip("\n"))
    elif as_markdown:
        typer.echo("| " + " | ".join(rows[0]) + " |")
        typer.echo("|" + "---|" * len(rows[0]))
        for row in rows:
            typer.echo("| " + " | ".join(str(v) for v in row.values()) + " |")
    else:
        _table(rows)
    if plot is not None:
        _plot(results, plot)
    line = b.recommend(results)
    if line:
        print(line, file=sys.stdout if not (as_json or as_csv) else sys.stderr)


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def _row(r: Any) -> dict[str, str]:
    return {
        "model": r.model,
        "quant": r.quant,
        "kv": r.cache_type,
        "size": f"{r.size_bytes / 1e9:.2f} GB",
        "bpw": f"{r.bits_per_weight:.2f}",
        "load s": f"{r.load_s:.2f}",
        f"pp{r.pp} t/s": f"{r.pp_tps:.1f} ± {r.pp_tps_std:.1f}",
        f"tg{r.tg} t/s": f"{r.tg_tps:.1f} ± {r.tg_tps_std:.1f}",
        "GB/s": f"{r.bandwidth_gbs:.1f}",
        "peak RSS": f"{r.peak_rss_bytes / 1e9:.2f} GB",
        "PPL": _fmt(r.ppl, ".4f"),
        "PPL ratio": _fmt(r.ppl_ratio, ".4f"),
        "KLD": _fmt(r.kld_mean, ".4f"),
        "KLD p99": _fmt(r.kld_p99, ".4f"),
        "same top": "-" if r.same_top is None else f"{100 * r.same_top:.1f}%",
    }


def _table(rows: list[dict[str, str]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None)
    for col in rows[0]:
        table.add_column(col, justify="left" if col in ("model", "quant", "kv") else "right")
    for row in rows:
        table.add_row(*row.values())
    Console(width=max(160, Console().width)).print(table)


def _plot(results: list[Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ggrun.errors import GgrunError

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in results:
        ax.scatter(r.kld_mean or 0.0, r.tg_tps)
        ax.annotate(r.quant, (r.kld_mean or 0.0, r.tg_tps), textcoords="offset points",
                    xytext=(5, 5))  # fmt: skip
    ax.set_xlabel("mean KL divergence vs reference (lower is better)")
    ax.set_ylabel("generation speed, tokens/s")
    ax.set_title("ggrun bench")
    tmp = path.with_name(path.name + ".tmp.png")
    try:
        fig.savefig(tmp, dpi=120, bbox_inches="tight")
        tmp.replace(path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise GgrunError(f"{path}: cannot write the plot: {e.strerror or e}") from None
    finally:
        plt.close(fig)
