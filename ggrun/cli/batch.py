"""``ggrun batch``: many prompts from a JSONL file, decoded together, resumable."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Annotated, Any

import typer

from ggrun.cli import options
from ggrun.cli.options import CACHE, LOAD, SAMPLING

RAY_PANEL = "Several machines (Ray)"


@options.with_options(LOAD, CACHE, SAMPLING)
def batch(
    model: Annotated[str, typer.Argument(help="A .gguf path or a model alias.")],
    input_file: Annotated[
        Path,
        typer.Argument(
            help='JSONL, one request per line: {"id": ..., "prompt": "..."} or '
            '{"id": ..., "messages": [...]}; optional max_tokens and sampling fields.',
            show_default=False,
        ),
    ],
    output: Annotated[
        Path,
        typer.Option(
            "--output", "-o", help="Results, JSONL; appended, and resumed when it exists."
        ),
    ],
    parallel: Annotated[
        int, typer.Option("--parallel", "-p", min=1, max=256, help="Sequences decoded at once.")
    ] = 8,
    slot_ctx: Annotated[
        int | None,
        typer.Option(
            "--slot-ctx",
            min=16,
            help="Context per sequence (default: the longest prompt plus --max-tokens).",
        ),
    ] = None,
    ray: Annotated[
        str | None,
        typer.Option(
            "--ray",
            metavar="auto|ADDRESS",
            help="Run on a Ray cluster: auto (the one running here or at $RAY_ADDRESS, "
            "else a local one) or the head's HOST:PORT. Needs pip install 'ggrun\\[ray]'.",
            rich_help_panel=RAY_PANEL,
            show_default=False,
        ),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            min=1,
            help="Ray workers: each loads the model once and decodes --parallel sequences "
            "with --threads threads (default: as many as the cluster's CPUs hold).",
            rich_help_panel=RAY_PANEL,
            show_default=False,
        ),
    ] = None,
    worker_memory: Annotated[
        str | None,
        typer.Option(
            "--worker-memory",
            metavar="SIZE",
            help="Memory each Ray worker may allocate beyond its loaded model (e.g. 2GiB); "
            "a line that needs more fails alone (default: twice what its slots need "
            "plus 256 MiB).",
            rich_help_panel=RAY_PANEL,
            show_default=False,
        ),
    ] = None,
    think: options.ThinkOpt = None,
    json_mode: options.JsonOpt = False,
    schema: options.SchemaOpt = None,
    task: options.TaskOpt = None,
    tools: options.ToolsOpt = None,
    tool_choice: options.ToolChoiceOpt = None,
    *,
    opts: dict[str, Any],
) -> None:
    """Run every request of INPUT_FILE with continuous batching; write one JSON line each.

    Each output line holds id, text, reasoning, data (with --json/--schema/--task),
    finish_reason, prompt_tokens, completion_tokens, error and run (what went into it:
    the model's sha256, versions, sampling and seed). A line that fails on its own gets
    an error and the batch goes on. Re-running the same command skips
    the ids already in the output, so an interrupted run loses nothing.

      ggrun batch qwen2.5-coder-0.5b prompts.jsonl -o results.jsonl --parallel 8

    With --ray, Ray workers on several machines run the lines instead (same input,
    same output file); MODEL must be a path every node has, or an alias.

      ggrun batch qwen3-1.7b prompts.jsonl -o results.jsonl --ray auto --workers 8 -p 4 -t 4
    """
    from ggrun.errors import InvalidArgument
    from ggrun.jsonl import ResultsFile, id_key, read_requests
    from ggrun.request import Request
    from ggrun.tasks import load_task

    if sum(x not in (None, False) for x in (json_mode, schema, task)) > 1:
        raise InvalidArgument("give one of --json, --schema and --task")
    if workers is not None and ray is None:
        raise InvalidArgument("--workers needs --ray (auto, or a cluster's HOST:PORT)")
    if worker_memory is not None and ray is None:
        raise InvalidArgument("--worker-memory needs --ray (auto, or a cluster's HOST:PORT)")
    cap = None if worker_memory is None else _size("--worker-memory", worker_memory)
    if ray is not None:
        from ggrun.distributed import require_ray

        require_ray()  # not installed: say so before anything is read or written
    common: dict[str, Any] = options.sampling_kwargs(opts)
    common.setdefault("max_tokens", 256)
    common["think"] = think
    common["json"] = json_mode or None
    common["schema"] = options.read_schema(schema)
    common["tools"] = options.read_tools(tools)
    common["tool_choice"] = options.tool_choice(tool_choice)
    if task is not None:
        common["task"] = load_task(task)  # read once; a bad task fails before loading
        common["prompt"] = ""  # each line's text replaces it
    probe = {"prompt": "?"} if task else {"messages": [{"role": "user", "content": "?"}]}
    Request.build(**{**probe, **common})  # bad options fail before loading
    out = ResultsFile(output, source=input_file)
    items: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    seen: set[str] = set()
    for item, rid, error in read_requests(input_file):
        key = id_key(rid)
        if key in out.done:
            continue
        if key in seen:
            print(f"ggrun: warning: id {rid!r} appears again; line skipped", file=sys.stderr)
            continue
        seen.add(key)
        if item is None:
            errors.append(_record_error(rid, error))
            continue
        if "text" in item:  # a task's input (or a plain prompt)
            item["prompt"] = item.pop("text")
        item["parse_special"] = False  # a line's prompt is text, never markup
        items.append(item)
    skipped = len(out.done)
    total = len(items) + len(errors)
    if skipped:
        print(f"ggrun: {skipped} ids already in {output}; resuming", file=sys.stderr)
    with out:
        for rec in errors:
            out.write(rec)
        if not items:
            print(f"ggrun: nothing to do ({total} new requests)", file=sys.stderr)
            return
        if ray is not None:
            _run_ray(model, opts, items, common, ray, workers, parallel, slot_ctx, cap, out,
                     total, len(errors))  # fmt: skip
            return
        from ggrun.batching import run_batch

        def on_start(n: int, ctx: int) -> None:
            print(f"ggrun: {n} slots of {ctx} tokens each", file=sys.stderr)

        with options.load_model(model, opts) as m:
            results = run_batch(
                m, items, parallel=parallel, slot_ctx=slot_ctx, on_start=on_start, **common
            )
            _write(results, out, total, len(errors))


def _record_error(rid: Any, error: str) -> dict[str, Any]:
    return {
        "id": rid,
        "text": "",
        "finish_reason": "error",
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "error": error,
    }


def _record(result: Any) -> dict[str, Any]:
    rec: dict[str, Any] = {"id": result.id, "text": result.text}
    if result.reasoning:
        rec["reasoning"] = result.reasoning
    if result.data is not None:
        rec["data"] = result.data
    if result.tool_calls:
        rec["tool_calls"] = [
            {"id": c.id, "name": c.name, "arguments": c.arguments} for c in result.tool_calls
        ]
    rec.update(
        finish_reason=result.finish_reason,
        prompt_tokens=result.prompt_tokens,
        completion_tokens=result.completion_tokens,
        reasoning_tokens=result.reasoning_tokens,
        ttft=round(result.ttft, 4),
        generation_tps=round(result.generation_tps, 2),
        error=result.error,
    )
    if result.run is not None:  # what went into it (a request that never ran has none)
        rec["run"] = result.run.record()
    return rec


def _size(flag: str, value: str) -> int:
    """A size such as ``2GiB`` or ``512MiB``, at least 1 MiB."""
    from ggrun.errors import GgrunError, InvalidArgument
    from ggrun.hardware import parse_size

    try:
        n = parse_size(value, flag)
    except (GgrunError, ValueError, OverflowError):
        n = -1
    if n < 1 << 20:
        raise InvalidArgument(f"{flag}: {value!r} is not a size of 1 MiB or more (e.g. 2GiB)")
    return n


def _run_ray(
    model: str,
    opts: dict[str, Any],
    items: list[dict[str, Any]],
    common: dict[str, Any],
    address: str,
    workers: int | None,
    parallel: int,
    slot_ctx: int | None,
    worker_memory: int | None,
    out: Any,
    total: int,
    already: int,
) -> None:
    """The same batch on Ray workers: each loads MODEL with the same options."""
    from ggrun.batching import run_batch
    from ggrun.distributed import Job

    load = options.load_kwargs(opts)
    threads = load.pop("n_threads")
    load = {k: v for k, v in load.items() if v is not None}
    load["verbose"] = bool(opts.get("verbose"))
    job = Job(
        model,
        items,
        runner=run_batch,
        address=address,
        workers=workers,
        threads=threads,
        parallel=parallel,
        slot_ctx=slot_ctx,
        worker_memory=worker_memory,
        load=load,
        notify=lambda line: print(f"ggrun: {line}", file=sys.stderr),
        **common,
    )
    with job:  # join the cluster and start the workers before the bar, with their notices
        _write(job, out, total, already, status=job.status, where=job)


def _write(
    results: Iterable[tuple[int, Any]],
    out: Any,
    total: int,
    already: int,
    *,
    status: Callable[[], str] | None = None,
    where: Any = None,
) -> None:
    """Append each result as it comes (once per id), with a progress bar on stderr."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from ggrun.jsonl import id_key

    t0 = time.perf_counter()
    tokens = failed = written = 0
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        "{task.fields[rate]}",
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task("batch", total=total, completed=already, rate="")
        for _, result in results:
            rec = _record(result)
            if id_key(rec["id"]) in out.done:  # a result seen twice: keep the first
                continue
            out.write(rec)
            written += 1
            tokens += result.completion_tokens
            failed += result.error is not None
            rate = tokens / max(time.perf_counter() - t0, 1e-9)
            bar.update(task, advance=1, rate=status() if status else f"{rate:.1f} tok/s")
    dt = time.perf_counter() - t0
    on = ""
    if where is not None:
        lost = f", {where.lost} lost" if where.lost else ""
        n = len(where.alive)
        on = f" on {n} Ray worker{'s' * (n != 1)} (after {where.startup_s:.1f} s to start{lost})"
    print(
        f"ggrun: {written + already} done ({failed + already} with errors) in {dt:.1f} s{on}, "
        f"{tokens} tokens generated ({tokens / max(dt, 1e-9):.1f} tok/s)",
        file=sys.stderr,
    )
