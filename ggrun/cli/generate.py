"""``ggrun generate``: one completion, streamed to stdout.

Only the answer goes to stdout; notices, reasoning and statistics go to stderr, so
``ggrun generate ... > out.txt`` (or ``--json ... | jq``) is clean. ``--stats`` also
prints the run's manifest (:class:`~ggrun.runinfo.RunInfo`) there, as a line of JSON.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from ggrun.cli import options
from ggrun.cli.options import CACHE, LOAD, SAMPLING, THINKING


@options.with_options(LOAD, CACHE, SAMPLING, THINKING)
def generate(
    model: Annotated[str, typer.Argument(help="A .gguf path or a model alias.")],
    prompt: Annotated[
        str | None,
        typer.Argument(
            help="The prompt; `-` or absent reads it from stdin (when stdin is not a terminal).",
            show_default=False,
        ),
    ] = None,
    system: Annotated[str | None, typer.Option("--system", "-s", help="A system prompt.")] = None,
    raw: Annotated[
        bool,
        typer.Option("--raw", help="Complete the prompt as raw text, without the chat template."),
    ] = False,
    stats: Annotated[
        bool,
        typer.Option(
            "--stats",
            help="Print token counts, speeds and the run's manifest (model sha256, versions, "
            "sampling, seed) to stderr at the end.",
        ),
    ] = False,
    json_mode: options.JsonOpt = False,
    schema: options.SchemaOpt = None,
    grammar: Annotated[
        str | None,
        typer.Option(
            "--grammar", help="A llama.cpp GBNF grammar file.", rich_help_panel="Structured output"
        ),
    ] = None,
    fmt: Annotated[
        str | None,
        typer.Option(
            "--format",
            help="csv, yaml or xml (grammars in presets/grammars).",
            rich_help_panel="Structured output",
        ),
    ] = None,
    columns: Annotated[
        str | None,
        typer.Option(
            "--columns",
            help="With --format csv: the header, e.g. name,age.",
            rich_help_panel="Structured output",
        ),
    ] = None,
    task: options.TaskOpt = None,
    tools: options.ToolsOpt = None,
    tool_choice: options.ToolChoiceOpt = None,
    file: Annotated[
        Path | None,
        typer.Option("--file", "-f", help="Read the prompt (the task input) from this file."),
    ] = None,
    *,
    opts: dict[str, Any],
) -> None:
    """Generate one completion for PROMPT, streamed token by token.

    The prompt is formatted with the model's chat template (use --raw for plain
    completion). Examples:

      ggrun generate qwen2.5-coder-0.5b "Write a haiku about the sea"

      echo "Summarise: ..." | ggrun generate model.gguf --max-tokens 200 > out.txt
    """
    from ggrun.cli.render import write_stream
    from ggrun.errors import InvalidArgument
    from ggrun.request import Request

    prompt = _read_prompt(prompt, file)
    if task is not None and (raw or system):
        raise InvalidArgument("--task brings its own prompt: drop --raw and --system")
    sampling = options.sampling_kwargs(opts)
    constrained = {
        "json": json_mode,
        "schema": options.read_schema(schema),
        "grammar": options.read_grammar(grammar),
        "format": fmt,
        "columns": columns.split(",") if columns else None,
        "task": task,
    }
    what = {"prompt": prompt} if raw or task else {"messages": _messages(system, prompt)}
    tooling = {"tools": options.read_tools(tools), "tool_choice": options.tool_choice(tool_choice)}
    # built (and checked) before the model loads: a bad schema or task fails at once
    request = Request.build(
        **what, max_tokens=sampling.pop("max_tokens", None), think=opts.get("think"),
        think_budget=opts.get("think_budget"),
        **sampling, **constrained, **tooling,
    )  # fmt: skip
    with options.load_model(model, opts) as m:
        if request.tools:  # the calls are printed as JSON, never run
            result = m.complete(request)
            if result.reasoning and opts.get("show_thinking"):
                print(result.reasoning, file=sys.stderr)
            calls = [{"id": c.id, "name": c.name, "arguments": c.arguments}
                     for c in result.tool_calls]  # fmt: skip
            if calls:
                import json

                if result.text.strip():
                    print(result.text.strip(), file=sys.stderr)
                sys.stdout.write(json.dumps(calls, ensure_ascii=False, indent=2) + "\n")
            else:
                sys.stdout.write(result.text.strip() + "\n")
            last: Any = result
        elif request.constraint is not None:  # generated whole, checked, then printed
            result = m.complete(request)
            if result.reasoning and opts.get("show_thinking"):
                print(result.reasoning, file=sys.stderr)
            sys.stdout.write(result.text.strip() + "\n")
            last = result
        else:
            last = write_stream(
                m.stream(request), sys.stdout, show_thinking=opts["show_thinking"],
                thinking_out=sys.stderr,
            )  # fmt: skip
            sys.stdout.write("\n")
        sys.stdout.flush()
    if stats or opts.get("verbose"):
        print(
            f"ggrun: {last.prompt_tokens} prompt tokens ({last.prompt_tps:.1f} tok/s), "
            f"{last.completion_tokens} generated ({last.generation_tps:.1f} tok/s), "
            f"finish: {last.finish_reason}",
            file=sys.stderr,
        )
        if last.run is not None:  # what went into it, to run it again
            import json

            print(f"ggrun: run {json.dumps(last.run.record())}", file=sys.stderr)


MAX_PROMPT_BYTES = 64 << 20  # far past any context: a prompt file over it is not a prompt


def _read_prompt(prompt: str | None, file: Path | None) -> str:
    """PROMPT, --file or stdin; text that is not UTF-8 is a clean error."""
    from ggrun.errors import InvalidArgument

    if file is not None:
        if prompt is not None:
            raise InvalidArgument("give PROMPT or --file, not both")
        from ggrun.files import read_text

        prompt = read_text(file, what="prompt", limit=MAX_PROMPT_BYTES)
    if prompt is None or prompt == "-":
        if sys.stdin is None or sys.stdin.isatty():
            raise InvalidArgument("no prompt: give PROMPT, or pipe it on stdin")
        try:
            prompt = sys.stdin.buffer.read().decode("utf-8")
        except UnicodeDecodeError as e:
            why = f"{e.reason} at byte {e.start}"
            raise InvalidArgument(f"stdin is not UTF-8 text ({why})") from None
    if not prompt.strip():
        raise InvalidArgument("the prompt is empty")
    return prompt


def _messages(system: str | None, prompt: str) -> list[dict[str, str]]:
    """One user turn, after the system prompt when there is one."""
    head = [{"role": "system", "content": system}] if system else []
    return [*head, {"role": "user", "content": prompt}]
