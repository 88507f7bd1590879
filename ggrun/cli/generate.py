"""``ggrun generate``: one completion, streamed to stdout.

Only the answer goes to stdout; notices, reasoning and statistics go to stderr, so
``ggrun generate ... > out.txt`` is clean.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from ggrun.cli import options
from ggrun.cli.options import LOAD, SAMPLING, THINKING


@options.with_options(LOAD, SAMPLING, THINKING)
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
        bool, typer.Option("--stats", help="Print token counts and speeds to stderr at the end.")
    ] = False,
    *,
    opts: dict[str, Any],
) -> None:
    """Generate one completion for PROMPT, streamed token by token.

    The prompt is formatted with the model's chat template (use --raw for plain
    completion). Examples:

      ggrun generate qwen2.5-coder-0.5b "Write a haiku about the sea"

      echo "Summarise: ..." | ggrun generate model.gguf --max-tokens 200 > out.txt
    """
    from ggrun.errors import InvalidArgument

    if prompt is None or prompt == "-":
        if sys.stdin is None or sys.stdin.isatty():
            raise InvalidArgument("no prompt: give PROMPT, or pipe it on stdin")
        prompt = sys.stdin.read()
    if not prompt.strip():
        raise InvalidArgument("the prompt is empty")
    sampling = options.sampling_kwargs(opts)
    max_tokens = sampling.pop("max_tokens", None)
    with options.load_model(model, opts) as m:
        if raw:
            chunks = m.stream(prompt, max_tokens=max_tokens, **sampling)
        else:
            messages = ([{"role": "system", "content": system}] if system else []) + [
                {"role": "user", "content": prompt}
            ]
            chunks = m.chat_stream(
                messages, think=opts.get("think"), max_tokens=max_tokens, **sampling
            )
        from ggrun.cli.render import write_stream

        last = write_stream(
            chunks, sys.stdout, show_thinking=opts["show_thinking"], thinking_out=sys.stderr
        )
        sys.stdout.write("\n")
        sys.stdout.flush()
        if stats or opts.get("verbose"):
            print(
                f"ggrun: {last.prompt_tokens} prompt tokens ({last.prompt_tps:.1f} tok/s), "
                f"{last.completion_tokens} generated ({last.generation_tps:.1f} tok/s), "
                f"finish: {last.finish_reason}",
                file=sys.stderr,
            )
