"""``ggrun serve``: an OpenAI-compatible local server."""

from __future__ import annotations

import ipaddress
import re
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from ggrun.cli import options
from ggrun.cli.options import CACHE, LOAD

LOOPBACK = {"localhost"}
HOST_NAME = re.compile(r"(?=.{1,253}$)[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?"
                       r"(\.[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?)*\.?")  # fmt: skip


def _is_loopback(host: str) -> bool:
    if host in LOOPBACK:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@options.with_options(LOAD, CACHE)
def serve(
    model: Annotated[
        list[str] | None,
        typer.Argument(
            help="Models to serve: .gguf paths or aliases (the first is the default; each "
            "loads on first use). Default: qwen3-1.7b if downloaded, else the embedded default.",
            show_default=False,
        ),
    ] = None,
    models_dir: Annotated[
        Path | None,
        typer.Option("--models-dir", help="Also serve every .gguf file in this folder."),
    ] = None,
    max_loaded: Annotated[
        int,
        typer.Option(
            "--max-loaded",
            min=1,
            max=64,
            help="Most models kept in memory (the least recently used idle one goes).",
        ),
    ] = 1,
    keep_alive: Annotated[
        str,
        typer.Option(
            "--keep-alive", help="Unload a model idle this long (5m, 30s, 0; -1: never), as ollama."
        ),
    ] = "5m",
    host: Annotated[
        str, typer.Option("--host", help="Address to bind (loopback by default).")
    ] = "127.0.0.1",
    allowed_host: Annotated[
        list[str] | None,
        typer.Option(
            "--allowed-host",
            help="A name clients may reach the server by (the Host header), besides IP "
            "addresses and localhost; repeatable; * allows any (no DNS-rebinding guard).",
        ),
    ] = None,
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="TCP port.")] = 8080,
    parallel: Annotated[
        int,
        typer.Option("--parallel", "-p", min=1, max=64, help="Requests decoded at once."),
    ] = 4,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            envvar="GGRUN_API_KEY",
            help="Require `Authorization: Bearer KEY` (all endpoints but /health). Prefer "
            "GGRUN_API_KEY or --api-key-file: `ps` shows the command line.",
        ),
    ] = None,
    api_key_file: Annotated[
        Path | None,
        typer.Option("--api-key-file", help="Read the API key from this file (first line)."),
    ] = None,
    allow_repeated_calls: Annotated[
        bool,
        typer.Option(
            "--allow-repeated-calls",
            help="Let the model repeat a tool call the conversation has already answered "
            "(polling tools). By default such a reply is drawn again with tool calls "
            "closed, so that small models answer from the result instead of looping.",
        ),
    ] = False,
    memory: Annotated[
        bool,
        typer.Option(
            "--memory/--no-memory",
            help="Guess from the model's recent replies (speculative decoding, --speculate). "
            "--no-memory on a shared server: a request's speed could tell whether it repeats "
            "what the model told someone else.",
        ),
    ] = True,
    *,
    opts: dict[str, Any],
) -> None:
    """Serve MODEL over HTTP with the OpenAI API (chat, completions, models, streaming).

    Concurrent requests share the model through continuous batching, up to --parallel at
    once; --ctx is the context of each request. Endpoints: POST /v1/chat/completions,
    POST /v1/completions, GET /v1/models, GET /health, GET /metrics.

      ggrun serve qwen2.5-coder-0.5b --port 8080

      curl localhost:8080/v1/chat/completions -H 'Content-Type: application/json' \\
        -d '{"messages":[{"role":"user","content":"hi"}]}'
    """
    from ggrun import models
    from ggrun.api.ollama import keep_alive as duration
    from ggrun.errors import ApiError, InvalidArgument
    from ggrun.pool import Pool
    from ggrun.server import check_address
    from ggrun.server import serve as run

    if api_key_file is not None:
        api_key = _read_key(api_key_file)
    hosts = list(allowed_host or [])
    for name in hosts:
        if name != "*" and not HOST_NAME.fullmatch(name):
            raise InvalidArgument(f"--allowed-host {name[:100]!r}: not a host name")
    if not _is_loopback(host) and not api_key:
        print(
            f"ggrun: warning: serving on {host} without --api-key: anyone who can reach "
            "this port can use the model (by an IP address, localhost or a name given "
            "with --allowed-host)",
            file=sys.stderr,
        )
    check_address(host, port)
    refs = list(model or [])
    if models_dir is not None:
        if not models_dir.is_dir():
            raise InvalidArgument(f"--models-dir {models_dir}: not a folder")
        refs += [str(p) for p in sorted(models_dir.glob("*.gguf"))]
    if not refs:
        refs = [models.default_model()[0]]
    ids = {(Path(r).stem if models.looks_like_path(r) else r): r for r in refs}
    try:
        ka = duration(keep_alive)
    except ApiError as e:
        raise InvalidArgument(f"--keep-alive: {e}") from None
    assert ka is not None
    first = next(iter(ids))

    def loader(ref: str) -> Any:
        return options.load_model(ref, opts, context=False, memory=memory)

    pool = Pool(ids, loader, parallel=parallel, slot_ctx=opts.get("ctx"), max_loaded=max_loaded,
                keep_alive=ka)  # fmt: skip
    pool.add(first, loader(ids[first]))  # the default model loads now: its errors show at once
    slot = pool.loaded[first].engine.slot_ctx
    more = f" (+{len(ids) - 1} more, loaded on first use)" if len(ids) > 1 else ""
    print(
        f"ggrun: serving {first}{more} on http://{host}:{port}/ (chat page) and /v1, /api "
        f"({parallel} slots of {slot} tokens); Ctrl-C stops",
        file=sys.stderr,
    )
    run(pool, host=host, port=port, api_key=api_key, extra_hosts=hosts,
        allow_repeated_calls=allow_repeated_calls)  # fmt: skip


def _read_key(path: Path) -> str:
    from ggrun.errors import InvalidArgument
    from ggrun.files import read_text

    lines = read_text(path, what="key", limit=64 << 10).strip().splitlines()
    key = lines[0].strip() if lines else ""
    if not key:
        raise InvalidArgument(f"--api-key-file {path}: the file holds no key")
    return key
