"""``ggrun serve``: an OpenAI-compatible local server."""

from __future__ import annotations

import ipaddress
import sys
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
            help="Require `Authorization: Bearer KEY` (all endpoints but /health).",
        ),
    ] = None,
    *,
    opts: dict[str, Any],
) -> None:
    """Serve MODEL over HTTP with the OpenAI API (chat, completions, models, streaming).

    Concurrent requests share the model through continuous batching, up to --parallel at
    once; --ctx is the context of each request. Endpoints: POST /v1/chat/completions,
    POST /v1/completions, GET /v1/models, GET /health, GET /metrics.

      ggrun serve qwen2.5-coder-0.5b --port 8080

      curl localhost:8080/v1/chat/completions -d '{"messages":[{"role":"user","content":"hi"}]}'
    """
    from ggrun import models
    from ggrun.engine import DEFAULT_CTX
    from ggrun.server import check_address
    from ggrun.server import serve as run

    if not _is_loopback(host) and not api_key:
        print(
            f"ggrun: warning: serving on {host} without --api-key: anyone who can reach "
            "this port can use the model",
            file=sys.stderr,
        )
    check_address(host, port)
    ref = model or models.default_model()[0]
    kw = options.load_kwargs(opts)
    slot_ctx = kw.pop("n_ctx")
    with options.load_model(ref, {**opts, "ctx": 64}) as m:
        slot = slot_ctx or min(m.n_ctx_train or DEFAULT_CTX, DEFAULT_CTX)
        model_id = m.path.stem if not model or models.looks_like_path(model) else model
        print(
            f"ggrun: serving {model_id} on http://{host}:{port}/v1 "
            f"({parallel} slots of {slot} tokens); Ctrl-C stops",
            file=sys.stderr,
        )
        run(m, model_id=model_id, host=host, port=port, parallel=parallel, slot_ctx=slot,
            api_key=api_key)  # fmt: skip
