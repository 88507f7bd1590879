"""Options shared by several commands, as ``Annotated`` aliases and option groups.

An option group (:data:`LOAD`, :data:`SAMPLING`, :data:`THINKING`) is added to a
command's signature by :func:`with_options`, and its values reach the command as one
``opts`` dict. That keeps each command short and every shared flag spelled once.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from ggrun import sampling

LOAD_PANEL = "Model loading"
SPECULATIVE_PANEL = "Speculative decoding"
SAMPLING_PANEL = "Sampling"

ModelArg = Annotated[
    str | None,
    typer.Argument(
        help="A .gguf path or an alias (see `ggrun list --all`). "
        "Default: qwen3-1.7b if downloaded, else the embedded default."
    ),
]

STRUCTURED_PANEL = "Structured output"
JsonOpt = Annotated[
    bool,
    typer.Option(
        "--json",
        help="The output is one valid JSON value (grammar-constrained).",
        rich_help_panel=STRUCTURED_PANEL,
    ),
]
SchemaOpt = Annotated[
    str | None,
    typer.Option(
        "--schema",
        help="A JSON Schema (file or inline JSON) the output must match.",
        rich_help_panel=STRUCTURED_PANEL,
    ),
]
TaskOpt = Annotated[
    str | None,
    typer.Option(
        "--task",
        help="A few-shot task from presets/tasks (sentiment, extract-contact, "
        "translate-english) or a task file.",
        rich_help_panel=STRUCTURED_PANEL,
    ),
]
ThinkOpt = Annotated[
    bool | None,
    typer.Option(
        "--think/--no-think",
        help="Qwen3 thinking mode, through the template's enable_thinking (default: the "
        "template's).",
        show_default=False,
    ),
]

LOAD: dict[str, tuple[Any, Any]] = {
    "ctx": (
        int | None,
        typer.Option(
            "--ctx",
            min=16,
            help="Context size in tokens (default: min(model's training context, 4096)).",
            rich_help_panel=LOAD_PANEL,
        ),
    ),
    "threads": (
        int | None,
        typer.Option(
            "--threads",
            "-t",
            min=1,
            help="Generation threads (default: physical cores).",
            rich_help_panel=LOAD_PANEL,
        ),
    ),
    "device": (
        str | None,
        typer.Option(
            "--device",
            help="cpu, cuda, metal, rocm or vulkan (default: the best this build and "
            "machine have; see `ggrun doctor`).",
            rich_help_panel=LOAD_PANEL,
        ),
    ),
    "gpu_layers": (
        str | None,
        typer.Option(
            "--gpu-layers",
            "--ngl",
            help="Layers to offload to the GPU: auto (as many as fit), a number, or all.",
            rich_help_panel=LOAD_PANEL,
        ),
    ),
    "mmap": (
        bool | None,
        typer.Option(
            "--mmap/--no-mmap",
            help="Memory-map the model file (default: on, off when fully on a discrete GPU).",
            show_default=False,
            rich_help_panel=LOAD_PANEL,
        ),
    ),
    "cache_type": (
        str | None,
        typer.Option(
            "--cache-type",
            help="The KV cache: f16, q8_0 (half the memory) or q4_0; default auto (q8_0 "
            "when f16 would shrink the context).",
            rich_help_panel=LOAD_PANEL,
        ),
    ),
    "verbose": (
        bool,
        typer.Option(
            "--verbose",
            "-v",
            help="Show llama.cpp's log and ggrun's details on stderr.",
            rich_help_panel=LOAD_PANEL,
        ),
    ),
    "speculate": (
        str | None,
        typer.Option(
            "--speculate",
            help="Speculative decoding, lossless: lookup (guess from the prompt and the "
            "text so far), draft (a --draft model guesses), auto, or off (default).",
            rich_help_panel=SPECULATIVE_PANEL,
        ),
    ),
    "draft": (
        str | None,
        typer.Option(
            "--draft",
            help="A small model of the same tokenizer that guesses tokens (an alias or a "
            "path); implies --speculate draft.",
            rich_help_panel=SPECULATIVE_PANEL,
        ),
    ),
}


def _token_pairs(values: list[str] | None) -> tuple[tuple[str, float], ...] | None:
    """A repeated ``ID=N`` flag as (token id, number) pairs, for the option table to
    check (ids, range, how many)."""
    pairs = []
    for v in values or ():
        token, sep, number = v.partition("=")
        try:
            pairs.append((token.strip(), float(number)))
        except ValueError:
            sep = ""
        if not sep:
            raise typer.BadParameter(f"{v[:40]!r} is not ID=N (a token id and a number)")
    return tuple(pairs) or None


def _sampling_flag(o: sampling.Option) -> tuple[Any, Any]:
    """A row of :data:`ggrun.sampling.OPTIONS` as a CLI option. A whole-number flag is
    range-checked by the parser too (its message names the flag); the table's own check
    (in ``Request.build``) covers every flag."""
    if o.kind is sampling.TOKEN_MAP:  # repeatable ID=N pairs
        option = typer.Option(o.flag, help=o.help, rich_help_panel=SAMPLING_PANEL,
                              metavar="ID=N", callback=_token_pairs)  # fmt: skip
        return (list[str] | None, option)
    whole: dict[str, Any] = {}
    if o.kind is int:
        whole = {"min": int(o.lo) + o.lo_open, "max": int(o.hi) - o.hi_open}
    option = typer.Option(o.flag, help=o.help, rich_help_panel=SAMPLING_PANEL, **whole)
    return (o.kind | None, option)


SAMPLING: dict[str, tuple[Any, Any]] = {
    **{o.name: _sampling_flag(o) for o in sampling.OPTIONS},
    "max_tokens": (
        int | None,
        typer.Option(
            "--max-tokens",
            "-n",
            min=0,
            help="Most tokens to generate (default: 1024 for chat; capped by the context).",
            rich_help_panel=SAMPLING_PANEL,
        ),
    ),
    "preset": (
        str | None,
        typer.Option(
            "--preset",
            help="A sampling preset from "
            "presets/sampling.yaml (default: the one for the model family).",
            rich_help_panel=SAMPLING_PANEL,
        ),
    ),
}

THINKING: dict[str, tuple[Any, Any]] = {
    "think": (
        bool | None,
        typer.Option(
            "--think/--no-think",
            help="Qwen3 thinking mode, "
            "through the template's enable_thinking (default: the template's).",
            show_default=False,
        ),
    ),
    "think_budget": (
        int | None,
        typer.Option(
            "--think-budget",
            min=0,
            help="Cap Qwen3's reasoning at this many tokens, then end the thought (as the "
            "Qwen3 report does) and answer.",
        ),
    ),
    "show_thinking": (
        bool,
        typer.Option(
            "--show-thinking", help="Show the model's reasoning, dimmed (hidden by default)."
        ),
    ),
}

CACHE_PANEL = "Prompt cache"
CACHE: dict[str, tuple[Any, Any]] = {
    "prompt_cache": (
        bool,
        typer.Option(
            "--prompt-cache/--no-prompt-cache",
            help="Keep prompt states on disk ($GGRUN_HOME/cache), so that a prompt's "
            "fixed part (system prompt, examples, a chat's history) is read once, in any "
            "process. See `ggrun cache`.",
            rich_help_panel=CACHE_PANEL,
        ),
    ),
    "cache_size": (
        str | None,
        typer.Option(
            "--cache-size",
            help="The prompt cache's bound, all models together (e.g. 2G, 500M; default "
            "4G); least recently used states go first.",
            rich_help_panel=CACHE_PANEL,
        ),
    ),
}

_DEFAULTS = {"verbose": False, "show_thinking": False, "prompt_cache": True}


def with_options(
    *groups: dict[str, tuple[Any, Any]],
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Add the options of ``groups`` to a command; they arrive as ``opts: dict``."""

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        sig = inspect.signature(func, eval_str=True)
        params = [p for p in sig.parameters.values() if p.name != "opts"]
        names: list[str] = []
        for group in groups:
            for name, (hint, option) in group.items():
                names.append(name)
                params.append(
                    inspect.Parameter(
                        name,
                        inspect.Parameter.KEYWORD_ONLY,
                        default=_DEFAULTS.get(name),
                        annotation=Annotated[hint, option],
                    )
                )

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            opts = {n: kwargs.pop(n) for n in names if n in kwargs}
            return func(*args, opts=opts, **kwargs)

        wrapper.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
        return wrapper

    return decorate


def split(opts: dict[str, Any], group: dict[str, Any]) -> dict[str, Any]:
    """The values of one group, without the ones left unset."""
    return {k: v for k, v in opts.items() if k in group and v is not None}


def sampling_kwargs(opts: dict[str, Any]) -> dict[str, Any]:
    return split(opts, SAMPLING)


def gpu_layers(value: str | None) -> int | str | None:
    """``--gpu-layers``: ``auto`` (None), ``all`` or a number."""
    from ggrun.errors import InvalidArgument

    if value is None or value.lower() == "auto":
        return None
    if value.lower() == "all":
        return "all"
    if value.isdigit():
        return int(value)
    raise InvalidArgument(f"--gpu-layers takes auto, all or a number, not {value!r}")


def load_kwargs(opts: dict[str, Any]) -> dict[str, Any]:
    """The LOAD options as keywords of :func:`ggrun.load` (and of the planner)."""
    return {
        "n_ctx": opts.get("ctx"),
        "n_threads": opts.get("threads"),
        "device": opts.get("device"),
        "gpu_layers": gpu_layers(opts.get("gpu_layers")),
        "use_mmap": opts.get("mmap"),
        "cache_type": opts.get("cache_type"),
        "speculative": speculation(opts.get("speculate"), opts.get("draft")),
    }


def speculation(mode: str | None, draft: str | None) -> Any:
    """``--speculate`` and ``--draft`` as ``ggrun.load``'s ``speculative``."""
    from ggrun.errors import InvalidArgument
    from ggrun.speculative import Draft, mode_of

    if draft is not None:
        if mode not in (None, "draft", "auto"):
            raise InvalidArgument(f"--draft needs --speculate draft or auto, not {mode}")
        return Draft(draft)
    return mode_of(mode) if mode is not None else None


def load_model(ref: str | None, opts: dict[str, Any], **extra: Any) -> Any:
    """Load a model with the LOAD options; notices go to stderr through logging."""
    from ggrun.engine import load

    return load(
        ref, verbose=bool(opts.get("verbose")), **load_kwargs(opts), **cache_kwargs(opts),
        **extra,
    )  # fmt: skip


def cache_kwargs(opts: dict[str, Any]) -> dict[str, Any]:
    """The CACHE options as :class:`ggrun.LoadConfig` fields."""
    from ggrun.promptcache import parse_size

    size = opts.get("cache_size")
    return {
        "prompt_cache": bool(opts.get("prompt_cache", True)),
        "cache_size": None if size is None else parse_size(size),
    }


def read_schema(value: str | None) -> Any:
    """``--schema``: inline JSON or a JSON file (files are read here, by the CLI only)."""
    if value is None:
        return None
    from ggrun.structured import load_schema

    return load_schema(value)


def read_grammar(path: str | None) -> str | None:
    """``--grammar FILE``: the GBNF text of the file."""
    if path is None:
        return None
    from ggrun.structured import read_grammar as read

    return read(path)


MAX_TOOLS_BYTES = 4 << 20  # a tools file, Python or JSON
ToolsOpt = Annotated[
    Path | None,
    typer.Option(
        "--tools",
        help="Tools the model may call: a Python file (its functions, or its TOOLS list; "
        "your own code, run in this process) or a JSON file of OpenAI tool definitions.",
        rich_help_panel="Tools",
    ),
]
ToolChoiceOpt = Annotated[
    str | None,
    typer.Option(
        "--tool-choice",
        help="auto (default), none, required, or the name of one tool.",
        rich_help_panel="Tools",
    ),
]


def read_tools(path: Path | None) -> list[Any] | None:
    """``--tools``: the functions of a Python file, or the definitions in a JSON file."""
    if path is None:
        return None
    import json
    import types

    from ggrun.errors import InvalidArgument
    from ggrun.files import read_text

    where = f"--tools {path}"
    what = "JSON tools" if path.suffix == ".json" else "Python tools"
    try:
        source = read_text(path, what=what, limit=MAX_TOOLS_BYTES, error=InvalidArgument)
    except InvalidArgument as e:
        raise InvalidArgument(f"--tools {e}") from None
    if path.suffix == ".json":
        try:
            data = json.loads(source)
        except (ValueError, RecursionError) as e:
            why = "nested too deeply" if isinstance(e, RecursionError) else str(e)[:200]
            raise InvalidArgument(f"{where}: not a JSON list of tools: {why}") from None
        if not isinstance(data, list):
            raise InvalidArgument(f"{where}: expected a JSON list of tool definitions")
        return data
    module = types.ModuleType(f"ggrun_tools_{path.stem}")
    module.__file__ = str(path)
    try:  # the user's own code; the source read above, so what runs is what was checked
        exec(compile(source, str(path), "exec"), module.__dict__)
    except Exception as e:  # noqa: BLE001 - the user's own file failed to run
        raise InvalidArgument(f"{where}: {type(e).__name__}: {e}") from None
    found = getattr(module, "TOOLS", None)
    if found is None:
        own = module.__name__
        found = [
            f
            for name, f in vars(module).items()
            if callable(f) and not isinstance(f, type) and not name.startswith("_")
            and getattr(f, "__module__", "") == own
        ]  # fmt: skip
    if not found:
        raise InvalidArgument(f"--tools {path}: defines no functions")
    return list(found)


McpOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--mcp",
        metavar='"CMD ARGS"',
        help='An MCP server to start, as a command line ("npx -y PACKAGE ARGS"); its tools '
        "become tools the model may call. Repeatable.",
        rich_help_panel="Tools",
    ),
]
McpConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--mcp-config",
        metavar="FILE",
        help='MCP servers to start, from a JSON file in Claude Desktop\'s format: {"mcpServers": '
        '{NAME: {"command": ..., "args": [...], "env": {...}}}}.',
        rich_help_panel="Tools",
    ),
]


def mcp_servers(commands: list[str] | None, config: Path | None) -> list[Any] | None:
    """``--mcp`` and ``--mcp-config``: what :class:`ggrun.Chat` takes as ``mcp``."""
    found: list[Any] = list(commands or [])
    if config is not None:
        from ggrun.mcp_tools import read_config

        found.append(read_config(config))
    return found or None


def tool_choice(value: str | None) -> Any:
    """``--tool-choice``: a mode, or a tool's name."""
    if value is None or value in ("auto", "none", "required"):
        return value
    return {"type": "function", "function": {"name": value}}
