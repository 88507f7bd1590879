"""``ggrun serve``: an OpenAI-compatible local server."""

from __future__ import annotations

import ipaddress
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from ggrun.cli import options
from ggrun.cli.options import LOAD, ModelArg

LOOPBACK = {"localhost"}


def _is_loopback(host: str) -> bool:
    if host in LOOPBACK:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@options.with_options(LOAD)
def serve(
    model: ModelArg = None,
    host: Annotated[
        str, typer.Option("--host", help="Address to bind (loopback by default).")
    ] = "127.0.0.1",
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
    from ggrun.server import check_address
    from ggrun.server import serve as run

    if api_key_file is not None:
        api_key = _read_key(api_key_file)
    if not _is_loopback(host) and not api_key:
        print(
            f"ggrun: warning: serving on {host} without --api-key: anyone who can reach "
            "this port can use the model",
            file=sys.stderr,
        )
    check_address(host, port)
    ref = model or models.default_model()[0]
    with options.load_model(ref, opts, context=False) as m:  # the engine makes its own
        slot = m.n_ctx
        model_id = m.path.stem if not model or models.looks_like_path(model) else model
        print(
            f"ggrun: serving {model_id} on http://{host}:{port}/v1 "
            f"({parallel} slots of {slot} tokens); Ctrl-C stops",
            file=sys.stderr,
        )
        run(m, model_id=model_id, host=host, port=port, parallel=parallel, slot_ctx=slot,
            api_key=api_key)  # fmt: skip


def _read_key(path: Path) -> str:
    from ggrun.errors import InvalidArgument

    try:
        key = path.read_text(encoding="utf-8").strip().splitlines()[0].strip()
    except (OSError, UnicodeDecodeError, IndexError) as e:
        raise InvalidArgument(f"--api-key-file {path}: cannot read a key: {e}") from None
    if not key:
        raise InvalidArgument(f"--api-key-file {path}: the file holds no key")
    return key
