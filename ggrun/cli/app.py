"""The ``ggrun`` command: assembles the command modules and maps errors to one line.

Every :class:`~ggrun.errors.GgrunError` and every usage error becomes a single line on
stderr and exit code 1; Ctrl-C exits with 130. ``GGRUN_DEBUG=1`` shows tracebacks.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import Any

import typer
from typer.core import TyperGroup

from ggrun.cli import batch, bench, cache, chat, convert, embed, generate, hardware, models, serve


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        prefix = "ggrun: warning: " if record.levelno >= logging.WARNING else "ggrun: "
        return prefix + record.getMessage()


class _Stderr(logging.StreamHandler):  # type: ignore[type-arg]
    """A handler on the ``sys.stderr`` of the moment, not the one it was made with (a
    caller that runs the CLI in-process may swap and close it)."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def setup_logging(argv: list[str]) -> None:
    verbose = "-v" in argv or "--verbose" in argv
    handler = _Stderr()
    handler.setFormatter(_Formatter())
    root = logging.getLogger("ggrun")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO if verbose else logging.WARNING)
    root.propagate = False


INTERRUPTED = 130  # the shell's code for SIGINT


def _fail(message: str, code: int) -> int:
    sys.stdout.flush()
    print(f"ggrun: error: {message}", file=sys.stderr)
    return code


def _click_exceptions() -> Any:
    """click's exception classes: vendored inside newer typer, or click itself."""
    try:
        from typer._click import exceptions
    except ImportError:  # older typer uses click directly
        from click import exceptions  # type: ignore[no-redef]
    return exceptions


def _run(invoke: Callable[[], Any], args: list[str]) -> int:
    """Call ``invoke`` and map every outcome to an exit code and at most one line."""
    from ggrun.errors import GgrunError

    ex = _click_exceptions()
    setup_logging(args)
    debug = os.environ.get("GGRUN_DEBUG") == "1"
    try:
        rv = invoke()
        code = rv if isinstance(rv, int) else 0
    except typer.Exit as e:
        code = e.exit_code
    except (KeyboardInterrupt, typer.Abort):
        if debug:
            raise
        code = INTERRUPTED
    except ex.UsageError as e:
        if type(e).__name__ == "NoArgsIsHelpError":  # help was shown
            return 0
        hint = f" (see `{e.ctx.command_path} --help`)" if e.ctx else ""
        return _fail(e.format_message().replace("\n", " ") + hint, 1)
    except GgrunError as e:
        if debug:
            raise
        return _fail(str(e), e.exit_code)
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    if code == INTERRUPTED:  # newer typer turns Ctrl-C into Exit(130) itself
        sys.stdout.flush()
        print("\nggrun: interrupted", file=sys.stderr)
    return code


class GgrunGroup(TyperGroup):
    """The command group, with ggrun's error mapping around every invocation."""

    def main(
        self,
        args: Any = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        argv = list(sys.argv[1:] if args is None else args)
        code = _run(
            lambda: super(GgrunGroup, self).main(
                args=argv,
                prog_name=prog_name or "ggrun",
                complete_var=complete_var,
                standalone_mode=False,
                windows_expand_args=windows_expand_args,
                **extra,
            ),
            argv,
        )
        if standalone_mode:
            sys.exit(code)
        return code


app = typer.Typer(
    name="ggrun",
    cls=GgrunGroup,
    help="Run small quantized language models locally, on llama.cpp.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.command("generate")(generate.generate)
app.command("chat")(chat.chat)
app.command("pull")(models.pull)
app.command("list")(models.list_models)
app.command("rm")(models.rm)
app.command("convert")(convert.convert)
app.command("batch")(batch.batch)
app.command("embed")(embed.embed)
app.command("bench")(bench.bench)
app.command("serve")(serve.serve)
app.command("doctor")(hardware.doctor)
app.command("fit")(hardware.fit)
app.add_typer(cache.app, name="cache")


def main() -> None:
    app(prog_name="ggrun")
