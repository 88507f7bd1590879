"""``ggrun bench``: which quant to use on this machine (speed, memory, quality, and
accuracy on the user's own labelled examples with ``--task`` and ``--eval``)."""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

PANEL = "Measurement"
EVAL = "Accuracy on your examples"


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
    task: Annotated[
        str | None,
        typer.Option(
            "--task",
            help="A task preset (sentiment, extract-contact, ...) or task file to score "
            "each variant on, with --eval.",
            rich_help_panel=EVAL,
        ),
    ] = None,
    eval_file: Annotated[
        Path | None,
        typer.Option(
            "--eval",
            help='Labelled examples, one {"input": ..., "expected": ...} per line.',
            rich_help_panel=EVAL,
        ),
    ] = None,
    match: Annotated[
        str | None,
        typer.Option(
            "--match",
            help="contains, exact or json (field by field). Default: json for a JSON task "
            "whose expected values are objects, else exact.",
            rich_help_panel=EVAL,
        ),
    ] = None,
    tolerance: Annotated[
        float,
        typer.Option(
            "--tolerance",
            help="Accuracy points from the best a pick may lose.",
            rich_help_panel=EVAL,
        ),
    ] = 2.0,
    prefer: Annotated[
        str,
        typer.Option(
            "--prefer", help="size or speed: what the pick minimises.", rich_help_panel=EVAL
        ),
    ] = "size",  # fmt: skip
    as_json: Annotated[bool, typer.Option("--json", help="JSON output.")] = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="CSV output.")] = False,
    as_markdown: Annotated[bool, typer.Option("--markdown", help="A Markdown table.")] = False,
    plot: Annotated[
        Path | None,
        typer.Option(
            "--plot",
            help="Save a PNG (needs matplotlib): speed against KLD, or with --eval accuracy "
            "against speed.",
        ),
    ] = None,
) -> None:
    """Compare quants of a model on this machine: speed, memory and quality.

    For each model: size, load time, pp and tg speed, bandwidth, peak memory, and quality
    against the most precise one (perplexity, KLD, same top token); then a recommendation.

      ggrun bench model-Q4_K_M.gguf model-Q8_0.gguf model-F16.gguf

      ggrun bench ./Qwen3-1.7B --quant q4_k_m,q8_0,f16

      ggrun bench qwen3-1.7b

      ggrun bench ./Qwen3-1.7B --quant q4_0,q4_k_m,q8_0 --task sentiment --eval mine.jsonl
    """
    from rich.console import Console

    from ggrun import benchmark as b
    from ggrun import evaluate
    from ggrun.errors import InvalidArgument

    if plot is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise InvalidArgument("--plot needs matplotlib: pip install 'ggrun[plot]'") from None
    if (task is None) != (eval_file is None):
        raise InvalidArgument("--task and --eval go together: the task and its labelled examples")
    ev = None
    if task is not None and eval_file is not None:
        ev = evaluate.EvalConfig(task, eval_file, match, tolerance, prefer)
        n_examples = len(evaluate.Plan.of(ev).examples)  # a bad file or task fails now
    elif match is not None:
        raise InvalidArgument("--match needs --task and --eval")
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
    n_kv = len([c for c in cfg.cache_types if c != "f16"])
    steps += len(paths) * n_kv * min(chunks, b.KV_CHUNKS)
    steps += n * n_examples if ev is not None else 0
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        bar_task = bar.add_task("benchmarking", total=steps)
        started = [False]

        def step(message: str) -> None:  # a message starts a step: the previous one is done
            bar.update(bar_task, description=message, advance=1 if started[0] else 0)
            started[0] = True

        results = b.bench(paths, reference=reference, config=cfg, progress=step, evaluation=ev)
        bar.advance(bar_task)
    line, pick = _recommendation(results, ev)
    kv_col = any(r.cache_type != "f16" for r in results)
    rows = _drop_empty([_row(r, kv_col) for r in results])
    if as_json:
        doc = {"results": [r.as_dict() for r in results], "recommended": pick}
        typer.echo(json.dumps(doc, indent=2, ensure_ascii=False))
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
        typer.echo("")
    else:
        _table(rows, [r.kv_check == "failed" for r in results])
    if not (as_json or as_csv):
        _wrong(results, markdown=as_markdown)
    if plot is not None:
        _plot(results, plot, pick)
    if line:
        print(line, file=sys.stdout if not (as_json or as_csv) else sys.stderr)


def _recommendation(results: list[Any], ev: Any) -> tuple[str, dict[str, Any] | None]:
    """The recommendation's line, and its JSON form (None when there is none)."""
    from ggrun import benchmark as b

    if ev is None:
        line = b.recommend(results)
        best = b.recommended(results)
        pick = None if best is None else {**_who(best), "by": "speed", "line": line}
        return line, pick
    best, rec = b.recommendation(results, ev.tolerance, ev.prefer)
    if best is None:
        return rec.line, None
    pick = {**_who(best), "by": f"accuracy, then {ev.prefer}", "tolerance": ev.tolerance,
            "line": rec.line, "conclusive": rec.conclusive,
            "more_examples": rec.more_examples}  # fmt: skip
    return rec.line, pick


def _who(r: Any) -> dict[str, Any]:
    return {"model": r.model, "quant": r.quant, "cache_type": r.cache_type}


def _wrong(results: list[Any], *, markdown: bool) -> None:
    """The first few examples each variant got wrong that the reference got right."""
    for r in results:
        if not r.wrong:
            continue
        head = f"{r.quant} [{r.cache_type}] got {r.regressions} wrong that the reference got right"
        typer.echo(("**" + head + "**" if markdown else head) + ":")
        for w in r.wrong:
            got = _short(w["got"])
            want = _short(w["expected"] if isinstance(w["expected"], str)
                          else json.dumps(w["expected"], ensure_ascii=False))  # fmt: skip
            typer.echo(f"- line {w['line']}: {_short(w['input'])!r}: expected {want}, got {got}")
        typer.echo("")


def _short(text: str, n: int = 70) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def _row(r: Any, kv_col: bool) -> dict[str, str]:
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
        **_eval_cols(r, kv_col),
    }


def _drop_empty(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    """Without the columns nothing was measured for (PPL and KLD with --no-quality)."""
    empty = [k for k in rows[0] if all(row[k] == "-" for row in rows)]
    return [{k: v for k, v in row.items() if k not in empty} for row in rows]


def _eval_cols(r: Any, kv_col: bool) -> dict[str, str]:
    cols: dict[str, str] = {}
    if kv_col:
        cols["KV check"] = "-" if r.kv_check is None else (
            f"{r.kv_check} (KLD {r.kv_kld:.3f})")  # fmt: skip
    if r.accuracy is not None:
        lo, hi = r.ci
        cols["accuracy"] = f"{100 * r.accuracy:.1f}% ({r.correct}/{r.examples})"
        cols["95% CI"] = f"{100 * lo:.0f}-{100 * hi:.0f}%"
        if r.field_accuracy is not None:
            cols["fields"] = " ".join(f"{k} {100 * v:.0f}%" for k, v in r.field_accuracy.items())
        cols["s/example"] = f"{r.s_per_example:.2f}"
    return cols


def _table(rows: list[dict[str, str]], failed: list[bool]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None)
    left = ("model", "quant", "kv", "fields", "KV check")
    for col in rows[0]:
        table.add_column(col, justify="left" if col in left else "right")
    for row, bad in zip(rows, failed, strict=True):
        table.add_row(*row.values(), style="red" if bad else None)
    Console(width=max(160, Console().width)).print(table)


def _plot(results: list[Any], path: Path, pick: dict[str, Any] | None) -> None:
    """Speed against KLD; with an eval, accuracy (and its interval) against speed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ggrun.errors import GgrunError

    fig, ax = plt.subplots(figsize=(6, 4))
    accuracy = any(r.accuracy is not None for r in results)
    for r in results:
        name = r.quant if r.cache_type == "f16" else f"{r.quant} KV {r.cache_type}"
        chosen = pick is not None and (r.model, r.cache_type) == (pick["model"], pick["cache_type"])
        color = "red" if r.kv_check == "failed" else ("green" if chosen else "C0")
        if accuracy:
            lo, hi = r.ci or (0.0, 0.0)
            y = 100 * (r.accuracy or 0.0)
            err = [[y - 100 * lo], [100 * hi - y]]
            ax.errorbar(r.tg_tps, y, yerr=err, fmt="o", color=color, capsize=3)
            xy = (r.tg_tps, y)
        else:
            xy = (r.kld_mean or 0.0, r.tg_tps)
            ax.scatter(*xy, color=color)
        ax.annotate(name + (" (recommended)" if chosen else ""), xy,
                    textcoords="offset points", xytext=(5, 5))  # fmt: skip
    if accuracy:
        ax.set_xlabel("generation speed, tokens/s")
        ax.set_ylabel("accuracy on your examples, % (95% interval)")
    else:
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
