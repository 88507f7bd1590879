"""``ggrun batch``: many prompts from a JSONL file, decoded together, resumable."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from ggrun.cli import options
from ggrun.cli.options import LOAD, SAMPLING


@options.with_options(LOAD, SAMPLING)
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
    finish_reason, prompt_tokens, completion_tokens and error. A line that fails on
    its own gets an error and the batch goes on. Re-running the same command skips
    the ids already in the output, so an interrupted run loses nothing.

      ggrun batch qwen2.5-coder-0.5b prompts.jsonl -o results.jsonl --parallel 8
    """
    from ggrun.errors import InvalidArgument
    from ggrun.jsonl import ResultsFile, id_key, read_requests
    from ggrun.request import Request
    from ggrun.tasks import load_task

    if sum(x not in (None, False) for x in (json_mode, schema, task)) > 1:
        raise InvalidArgument("give one of --json, --schema and --task")
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
        with options.load_model(model, opts) as m:
            _run(m, items, common, parallel, slot_ctx, out, total, len(errors))


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
    return rec


def _run(
    m: Any,
    items: list[dict[str, Any]],
    common: dict[str, Any],
    parallel: int,
    slot_ctx: int | None,
    out: Any,
    total: int,
    already: int,
) -> None:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from ggrun.batch import run_batch

    def on_start(n: int, ctx: int) -> None:
        print(f"ggrun: {n} slots of {ctx} tokens each", file=sys.stderr)

    t0 = time.perf_counter()
    tokens = failed = 0
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
        for _, result in run_batch(
            m, items, parallel=parallel, slot_ctx=slot_ctx, on_start=on_start, **common
        ):
            out.write(_record(result))
            tokens += result.completion_tokens
            failed += result.error is not None
            rate = tokens / max(time.perf_counter() - t0, 1e-9)
            bar.update(task, advance=1, rate=f"{rate:.1f} tok/s")
    dt = time.perf_counter() - t0
    print(
        f"ggrun: {len(items) + already} done ({failed + already} with errors) in {dt:.1f} s, "
        f"{tokens} tokens generated ({tokens / max(dt, 1e-9):.1f} tok/s)",
        file=sys.stderr,
    )
