"""``ggrun serve``: HTTP (Starlette on uvicorn) over the batch engine.

This module is only HTTP: it checks who asks and what arrives, hands the body to an
API adapter (:mod:`ggrun.openai_api`), builds the one :class:`~ggrun.request.Request`,
makes it ready for the model (template, tokens, grammar check) *before* anything is
queued, and hands it to the :class:`~ggrun.batch.Engine` thread, which decodes all
requests together. Chunks come back through a queue, as server-sent events or as one
JSON body.

What holds for every request (the README's Security section):
- ``Host`` must name the bound address (DNS rebinding: a web page cannot reach a
  loopback server through its own domain), and a POST body must be
  ``application/json`` (a page cannot send one without a CORS preflight, which is
  never granted);
- a body is read within :data:`BODY_TIMEOUT` seconds and ``max_body`` bytes; uvicorn
  caps the open connections;
- the API key (``--api-key``, ``GGRUN_API_KEY`` or ``--api-key-file``) is compared in
  constant time;
- a malformed body (bad JSON, NaN, infinities, nesting deeper than :data:`MAX_DEPTH`,
  wrong types, lone surrogates, fields ggrun does not implement) is a 400, never a 500;
- a client that goes away, streaming or not, frees its slot at the next step.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from ggrun import openai_api
from ggrun.batch import Engine, Waiter
from ggrun.engine import Model
from ggrun.errors import GgrunError
from ggrun.openai_api import ApiError
from ggrun.request import Request
from ggrun.textstream import Chunk, Result

logger = logging.getLogger(__name__)

MAX_BODY = 1 << 20  # bytes
MAX_DEPTH = 64  # nesting of a JSON body
BODY_TIMEOUT = float(os.environ.get("GGRUN_BODY_TIMEOUT", "30"))  # seconds for a whole body
MAX_CONNECTIONS = 64
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
WILDCARDS = ("0.0.0.0", "::", "")


def allowed_hosts(host: str) -> frozenset[str] | None:
    """Host names a request may carry for a server bound to ``host``; None: any."""
    if host in WILDCARDS:
        return None
    names = {host.lower().strip("[]")}
    try:
        if ipaddress.ip_address(host.strip("[]")).is_loopback:
            names.update(LOOPBACK_NAMES)
    except ValueError:
        if host == "localhost":
            names.update(LOOPBACK_NAMES)
    return frozenset(names)


def _host_name(header: str) -> str:
    h = header.strip().lower()
    if h.startswith("["):
        return h[1 : h.find("]")] if "]" in h else h
    return h.rsplit(":", 1)[0] if h.count(":") == 1 else h


def _depth(value: Any) -> int:
    """The nesting depth of parsed JSON (iterative: no recursion limit to hit)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, (dict, list)):
            deepest = max(deepest, d)
            if d > MAX_DEPTH:
                break
            stack.extend((x, d + 1) for x in (v.values() if isinstance(v, dict) else v))
    return deepest


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


class _HostCheck:
    """ASGI middleware: refuse requests whose Host names another server."""

    def __init__(self, app: Any, hosts: frozenset[str] | None) -> None:
        self.app, self.hosts = app, hosts

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and self.hosts is not None:
            host = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1")
            if _host_name(host) not in self.hosts:
                from starlette.responses import JSONResponse

                err = ApiError(400, f"unexpected Host header {host[:100]!r}", code="bad_host")
                await JSONResponse(err.body(), status_code=400)(scope, receive, send)
                return
        await self.app(scope, receive, send)


class Server:
    """The Starlette application around one model and its engine."""

    def __init__(
        self,
        model: Model,
        *,
        model_id: str,
        parallel: int = 4,
        slot_ctx: int | None = None,
        api_key: str | None = None,
        max_body: int = MAX_BODY,
        host: str = "127.0.0.1",
    ) -> None:
        self.model = model
        self.model_id = model_id
        self.api_key = api_key
        self.max_body = max_body
        self.engine = Engine(model, parallel=parallel, slot_ctx=slot_ctx or model.n_ctx)
        self.created = int(time.time())
        self.app = _HostCheck(self._build(), allowed_hosts(host))

    def close(self) -> None:
        self.engine.close()

    # -- plumbing -----------------------------------------------------------
    def _build(self) -> Any:
        from starlette.applications import Starlette
        from starlette.routing import Route

        from ggrun import webpage

        routes = [
            Route("/health", self.health, methods=["GET"]),
            Route("/metrics", self.metrics, methods=["GET"]),
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/v1/chat/completions", self.chat, methods=["POST"]),
            Route("/v1/completions", self.completions, methods=["POST"]),
            *webpage.routes(self),
        ]
        handlers = {ApiError: self._api_error, 404: self._not_found, 405: self._not_allowed}
        return Starlette(routes=routes, exception_handlers=handlers)  # type: ignore[arg-type]

    async def _api_error(self, request: Any, exc: Exception) -> Any:
        from starlette.responses import JSONResponse

        assert isinstance(exc, ApiError)
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse(exc.body(), status_code=exc.status, headers=headers)

    async def _not_found(self, request: Any, exc: Exception) -> Any:
        err = ApiError(404, f"no route {request.url.path[:200]}", code="not_found")
        return await self._api_error(request, err)

    async def _not_allowed(self, request: Any, exc: Exception) -> Any:
        err = ApiError(405, f"{request.method} is not allowed on {request.url.path[:200]}")
        return await self._api_error(request, err)

    def _auth(self, request: Any) -> None:
        if self.api_key is None:
            return
        given = request.headers.get("authorization", "").encode("utf-8", "replace")
        if not hmac.compare_digest(given, f"Bearer {self.api_key}".encode()):
            raise ApiError(
                401,
                "invalid or missing API key (Authorization: Bearer KEY)",
                kind="authentication_error",
                code="invalid_api_key",
            )

    async def _body(self, request: Any) -> dict[str, Any]:
        """The request's JSON object: authenticated, typed, bounded in size, time and depth."""
        from starlette.requests import ClientDisconnect

        self._auth(request)
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/json":
            raise ApiError(415, "the body must be JSON (Content-Type: application/json)")
        size = request.headers.get("content-length")
        if size is not None and size.isdigit() and int(size) > self.max_body:
            raise ApiError(413, f"the request body is larger than {self.max_body} bytes")
        raw = bytearray()

        async def read() -> None:
            async for part in request.stream():
                raw.extend(part)
                if len(raw) > self.max_body:
                    raise ApiError(413, f"the request body is larger than {self.max_body} bytes")

        try:
            await asyncio.wait_for(read(), BODY_TIMEOUT)
        except asyncio.TimeoutError:
            raise ApiError(408, f"the body did not arrive within {BODY_TIMEOUT:g} s") from None
        except ClientDisconnect:
            raise ApiError(400, "the client went away while sending the body") from None
        try:
            body = json.loads(bytes(raw), parse_constant=_no_constant)
        except (ValueError, RecursionError) as e:
            raise ApiError(400, f"the body is not valid JSON: {str(e)[:200]}") from None
        if not isinstance(body, dict):
            raise ApiError(400, "the body must be a JSON object")
        if _depth(body) > MAX_DEPTH:
            raise ApiError(400, f"the body is nested deeper than {MAX_DEPTH} levels")
        model = body.get("model")
        if model not in (None, "", self.model_id):
            raise ApiError(
                404,
                f"the model {str(model)[:100]!r} does not exist; this server has {self.model_id!r}",
                param="model",
                code="model_not_found",
            )
        return body

    # -- endpoints --------------------------------------------------------------
    async def health(self, request: Any) -> Any:
        from starlette.responses import JSONResponse

        return JSONResponse({"status": "ok", "model": self.model_id})

    async def models(self, request: Any) -> Any:
        from starlette.responses import JSONResponse

        self._auth(request)
        card = {"id": self.model_id, "object": "model", "created": self.created}
        card["owned_by"] = "ggrun"
        return JSONResponse({"object": "list", "data": [card]})

    async def metrics(self, request: Any) -> Any:
        from starlette.responses import PlainTextResponse

        self._auth(request)
        e, s = self.engine, self.engine.stats
        lines = [
            ("ggrun_requests_total", "counter", s.requests),
            ("ggrun_requests_finished_total", "counter", s.finished),
            ("ggrun_requests_cancelled_total", "counter", s.cancelled),
            ("ggrun_tokens_generated_total", "counter", e.batcher.tokens_generated),
            ("ggrun_draft_tokens_total", "counter", e.batcher.drafted),
            ("ggrun_draft_accepted_tokens_total", "counter", e.batcher.accepted),
            ("ggrun_tokens_per_second", "gauge", round(e.tokens_per_second(), 2)),
            ("ggrun_requests_active", "gauge", e.active),
            ("ggrun_requests_active_peak", "gauge", s.peak_active),
            ("ggrun_queue_length", "gauge", e.queued),
            ("ggrun_slots", "gauge", e.parallel),
        ]
        text = "".join(f"# TYPE {n} {t}\n{n} {v}\n" for n, t, v in lines)
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    async def chat(self, request: Any) -> Any:
        body = await self._body(request)
        return await self._run(request, body, openai_api.chat_options(body), chat=True)

    async def completions(self, request: Any) -> Any:
        body = await self._body(request)
        return await self._run(request, body, openai_api.completion_options(body), chat=False)

    def _prepare(self, options: dict[str, Any]) -> Any:
        """Build and prepare the request (in a worker thread: templates, tokens, grammar)."""
        asked = options.pop("max_tokens", None)
        job = self.model.prepare(Request.build(**options, max_tokens=None))
        slot = self.engine.slot_ctx
        room = slot - len(job.tokens)
        if room < 1:
            raise ApiError(
                400,
                f"the prompt has {len(job.tokens)} tokens; the context holds {slot}",
                code="context_length_exceeded",
            )
        if asked is not None and asked > room:
            raise ApiError(
                400,
                f"max_tokens {asked} is more than the {room} tokens left in the {slot}-token "
                f"context after the prompt ({len(job.tokens)} tokens)",
                param="max_tokens",
                code="context_length_exceeded",
            )
        job.max_tokens = asked  # None: the room left
        return job

    async def _run(self, request: Any, body: dict[str, Any], options: dict[str, Any], *,
                   chat: bool) -> Any:  # fmt: skip
        from starlette.concurrency import run_in_threadpool

        try:
            job = await run_in_threadpool(self._prepare, options)
        except GgrunError as e:
            raise openai_api.from_error(e) from None
        index = self.engine.next_index()
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        queue: asyncio.Queue[Chunk | Result] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        waiter = Waiter(
            on_chunk=lambda c: loop.call_soon_threadsafe(queue.put_nowait, c),
            on_done=lambda r: loop.call_soon_threadsafe(queue.put_nowait, r),
        )
        self.engine.submit(index, job, waiter)
        if body.get("stream"):
            include = bool((body.get("stream_options") or {}).get("include_usage"))
            return self._stream(index, rid, queue, chat, include)
        result = await self._wait(request, index, queue)
        return self._final(rid, result, chat)

    async def _wait(self, request: Any, index: int, queue: asyncio.Queue[Any]) -> Result:
        """The result; a client that goes away first cancels its request."""

        async def gone() -> None:
            while (await request.receive())["type"] != "http.disconnect":
                pass

        watch = asyncio.ensure_future(gone())
        try:
            while True:
                get = asyncio.ensure_future(queue.get())
                await asyncio.wait({get, watch}, return_when=asyncio.FIRST_COMPLETED)
                if not get.done():
                    get.cancel()
                    self.engine.cancel(index)
                    raise ApiError(499, "the client closed the request")
                item = get.result()
                if isinstance(item, Result):
                    return item
        except asyncio.CancelledError:
            self.engine.cancel(index)
            raise
        finally:
            watch.cancel()

    def _final(self, rid: str, r: Result, chat: bool) -> Any:
        from starlette.responses import JSONResponse

        if r.error is not None:
            if r.finish_reason == "error":
                raise ApiError(400, r.error)
            raise ApiError(422, f"the output failed its checks: {r.error}", code="invalid_output")
        return JSONResponse(openai_api.final_body(rid, self.model_id, r, chat))

    def _stream(self, index: int, rid: str, queue: asyncio.Queue[Any], chat: bool,
                include_usage: bool) -> Any:  # fmt: skip
        from sse_starlette.sse import EventSourceResponse

        created = int(time.time())

        def event(c: Chunk | None, finish: str | None = None, r: Result | None = None) -> str:
            d = openai_api.chunk_body(rid, self.model_id, created, chat, c, finish)
            if r is not None and include_usage:
                d["usage"] = openai_api.usage(r)
            return json.dumps(d, ensure_ascii=False)

        async def events() -> AsyncIterator[str]:
            finished = False
            n_calls = 0
            try:
                if chat:
                    yield event(None)
                while True:
                    item = await queue.get()
                    if isinstance(item, Result):
                        finished = True
                        if item.error is not None:
                            yield json.dumps(ApiError(400, item.error).body())
                            break
                        yield event(None, item.finish_reason, item)
                        break
                    if item.text or item.reasoning:
                        yield event(item)
                    for piece in openai_api.tool_call_deltas(item.tool_calls, n_calls):
                        d = openai_api.chunk_body(rid, self.model_id, created, chat, None, None)
                        d["choices"][0]["delta"] = {"tool_calls": [piece]}
                        yield json.dumps(d, ensure_ascii=False)
                    n_calls += len(item.tool_calls)
                yield "[DONE]"
            finally:
                if not finished:  # the client went away: free the slot now
                    self.engine.cancel(index)

        return EventSourceResponse(events(), ping=15)


def check_address(host: str, port: int) -> None:
    """Fail with one line now, not with uvicorn's log after the model has loaded."""
    import socket

    try:
        with socket.create_server((host, port)):
            pass
    except OSError as e:
        raise GgrunError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


def serve(
    model: Model,
    *,
    model_id: str,
    host: str = "127.0.0.1",
    port: int = 8080,
    parallel: int = 4,
    slot_ctx: int | None = None,
    api_key: str | None = None,
) -> None:
    """Run the server until Ctrl-C (exit 130) or SIGTERM (exit 0), shutting down cleanly.

    uvicorn handles both signals itself (stop accepting, finish or cancel the open
    requests), then raises the signal again once its handlers are restored; the handlers
    installed here turn that into a normal return (SIGTERM) or a KeyboardInterrupt
    (SIGINT) outside uvicorn, which would otherwise swallow it.
    """
    import signal

    import uvicorn

    class _Stop(Exception):
        def __init__(self, signum: int) -> None:
            self.signum = signum

    def on_signal(signum: int, frame: Any) -> None:
        raise _Stop(signum)

    server = Server(
        model, model_id=model_id, parallel=parallel, slot_ctx=slot_ctx, api_key=api_key, host=host
    )
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        uvicorn.run(
            server.app,
            host=host,
            port=port,
            log_level="warning",
            timeout_graceful_shutdown=5,
            limit_concurrency=MAX_CONNECTIONS + parallel,
            timeout_keep_alive=15,
        )
    except _Stop as e:
        if e.signum == signal.SIGINT:
            raise KeyboardInterrupt from None  # the CLI's one line and exit code 130
        logger.warning("stopped (SIGTERM)")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        server.close()
