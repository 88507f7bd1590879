"""``ggrun serve``: HTTP (Starlette on uvicorn) over the batch engine.

This module is only HTTP: it checks who asks and what arrives, hands the body to an
API adapter (:mod:`ggrun.openai_api`), builds the one :class:`~ggrun.request.Request`,
makes it ready for the model (template, tokens, grammar check) *before* anything is
queued, and hands it to the :class:`~ggrun.batching.Engine` thread, which decodes all
requests together. Chunks come back through a queue, as server-sent events or as one
JSON body.

What holds for every request (the README's Security section):
- ``Host`` must be an IP address, ``localhost``, the bound name or one given with
  ``--allowed-host`` (DNS rebinding: a web page cannot reach the server through a
  domain of its own), and a POST body must be ``application/json`` (a page cannot send
  one without a CORS preflight, which is never granted);
- a body is read within :data:`BODY_TIMEOUT` seconds and ``max_body`` bytes; uvicorn
  caps the open connections;
- the API key (``--api-key``, ``GGRUN_API_KEY`` or ``--api-key-file``) is compared in
  constant time;
- a malformed body (bad JSON, NaN, infinities, nesting deeper than :data:`MAX_DEPTH`,
  wrong types, lone surrogates, fields ggrun does not implement) is a 400, never a 500,
  and is refused before any model is loaded for it; a model that cannot load is a 503
  that says why;
- no answer names a file path: models are known by their names;
- a client that goes away, streaming or not, frees its slot at the next step.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from datetime import datetime, timedelta, timezone
from typing import Any

from ggrun import ollama_api, openai_api
from ggrun.batching import Waiter
from ggrun.errors import GgrunError
from ggrun.openai_api import ApiError
from ggrun.pool import Loaded, Pool
from ggrun.request import Request
from ggrun.textstream import Chunk, Result

logger = logging.getLogger(__name__)

MAX_BODY = 1 << 20  # bytes
MAX_DEPTH = 64  # nesting of a JSON body
BODY_TIMEOUT = float(os.environ.get("GGRUN_BODY_TIMEOUT", "30"))  # seconds for a whole body
MAX_CONNECTIONS = 64
MAX_PS_SECONDS = 10 * 365 * 86400  # /api/ps's "expires_at" of a model kept forever


def allowed_hosts(host: str, extra: Iterable[str] = ()) -> frozenset[str] | None:
    """Host names a request may carry for a server bound to ``host`` besides IP literals
    (always accepted: DNS rebinding needs a name): ``localhost``, the bound name and
    ``extra`` (``--allowed-host``); None: any (``*`` among ``extra``)."""
    names = {h.strip().lower().strip("[]") for h in extra}
    if "*" in names:
        return None
    return frozenset(names | {"localhost", host.strip().lower().strip("[]")} - {""})


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


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
            name = _host_name(host)
            if name not in self.hosts and not _is_ip(name):
                from starlette.responses import JSONResponse

                err = ApiError(400, f"unexpected Host header {host[:100]!r}: use an IP address "
                               "or localhost, or start the server with --allowed-host NAME",
                               code="bad_host")  # fmt: skip
                await JSONResponse(err.body(), status_code=400)(scope, receive, send)
                return
        await self.app(scope, receive, send)


class Server:
    """The Starlette application around a pool of models and their engines."""

    def __init__(
        self,
        pool: Pool,
        *,
        api_key: str | None = None,
        max_body: int = MAX_BODY,
        host: str = "127.0.0.1",
        extra_hosts: Iterable[str] = (),
    ) -> None:
        self.pool = pool
        self.api_key = api_key
        self.max_body = max_body
        self.created = int(time.time())
        self.app = _HostCheck(self._build(), allowed_hosts(host, extra_hosts))

    @property
    def model_id(self) -> str:  # the default model (the first one named)
        return self.pool.default

    def close(self) -> None:
        self.pool.close()

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
            Route("/api/chat", self.ollama_chat, methods=["POST"]),
            Route("/api/generate", self.ollama_generate, methods=["POST"]),
            Route("/api/tags", self.ollama_tags, methods=["GET"]),
            Route("/api/show", self.ollama_show, methods=["POST"]),
            Route("/api/ps", self.ollama_ps, methods=["GET"]),
            Route("/api/version", self.ollama_version, methods=["GET"]),
            *webpage.routes(self),
        ]
        handlers = {ApiError: self._api_error, 404: self._not_found, 405: self._not_allowed}

        @contextlib.asynccontextmanager
        async def lifespan(app: Any) -> AsyncIterator[None]:
            sweeper = asyncio.ensure_future(self.pool.sweeper())
            try:
                yield
            finally:
                sweeper.cancel()

        return Starlette(routes=routes, exception_handlers=handlers, lifespan=lifespan)  # type: ignore[arg-type]

    async def _api_error(self, request: Any, exc: Exception) -> Any:
        from starlette.responses import Response

        assert isinstance(exc, ApiError)
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        body = {"error": str(exc)} if request.url.path.startswith("/api/") else exc.body()
        text = json.dumps(body)  # ASCII: a message that quotes a lone surrogate stays JSON
        return Response(text, exc.status, headers, media_type="application/json")

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
        return body

    def _model(self, body: dict[str, Any]) -> str:
        """The model a body names (the default one when it names none)."""
        model = body.get("model")
        if model in (None, ""):
            return self.pool.default
        if not isinstance(model, str):
            raise ApiError(400, "'model' must be a string (a model's name)", param="model")
        if model not in self.pool.refs:
            raise ApiError(
                404,
                f"the model {str(model)[:100]!r} does not exist; this server has "
                f"{', '.join(self.pool.refs)}",
                param="model",
                code="model_not_found",
            )
        return model

    async def _acquire(self, model_id: str) -> Loaded:
        """The model, loaded; one that cannot load is a 503 that says why (not where)."""
        try:
            return await self.pool.acquire(model_id)
        except (GgrunError, OSError) as e:
            reason = str(e) or type(e).__name__
            for path in self._paths(model_id):
                reason = reason.replace(path, model_id)
            raise ApiError(503, f"cannot load {model_id}: {reason[:500]}", kind="server_error",
                           code="model_unavailable") from None  # fmt: skip

    def _paths(self, model_id: str) -> list[str]:
        """The ways a model's file may be written in a message, longest first."""
        from pathlib import Path

        ref = self.pool.refs[model_id]
        found = self.pool.describe(model_id)["path"]
        names = {ref, str(Path(ref).expanduser()), os.path.abspath(os.path.expanduser(ref))}
        names |= {str(found), str(Path(found).resolve())} if found is not None else set()
        return sorted(names, key=len, reverse=True)

    # -- endpoints --------------------------------------------------------------
    async def health(self, request: Any) -> Any:
        from starlette.responses import JSONResponse

        return JSONResponse({"status": "ok", "model": self.model_id})

    async def models(self, request: Any) -> Any:
        from starlette.responses import JSONResponse

        self._auth(request)
        cards = [
            {"id": m, "object": "model", "created": self.created, "owned_by": "ggrun"}
            for m in self.pool.refs
        ]
        return JSONResponse({"object": "list", "data": cards})

    async def metrics(self, request: Any) -> Any:
        from starlette.responses import PlainTextResponse

        self._auth(request)
        engines = [e.engine for e in self.pool.loaded.values()]

        def total(f: Callable[[Any], float]) -> float:
            return sum(f(e) for e in engines)

        lines = [
            ("ggrun_requests_total", "counter", total(lambda e: e.stats.requests)),
            ("ggrun_requests_finished_total", "counter", total(lambda e: e.stats.finished)),
            ("ggrun_requests_cancelled_total", "counter", total(lambda e: e.stats.cancelled)),
            ("ggrun_tokens_generated_total", "counter",
             total(lambda e: e.batcher.tokens_generated)),
            ("ggrun_draft_tokens_total", "counter", total(lambda e: e.batcher.drafted)),
            ("ggrun_draft_accepted_tokens_total", "counter",
             total(lambda e: e.batcher.accepted)),
            ("ggrun_tokens_per_second", "gauge", round(total(lambda e: e.tokens_per_second()), 2)),
            ("ggrun_requests_active", "gauge", total(lambda e: e.active)),
            ("ggrun_requests_active_peak", "gauge", max((e.stats.peak_active for e in engines),
                                                       default=0)),
            ("ggrun_queue_length", "gauge", total(lambda e: e.queued)),
            ("ggrun_slots", "gauge", total(lambda e: e.parallel)),
            ("ggrun_models_loaded", "gauge", len(engines)),
        ]  # fmt: skip
        text = "".join(f"# TYPE {n} {t}\n{n} {int(v) if t == 'counter' else v}\n"
                       for n, t, v in lines)  # fmt: skip
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    async def chat(self, request: Any) -> Any:
        body = await self._body(request)
        return await self._openai(request, body, openai_api.chat_options(body), chat=True)

    async def completions(self, request: Any) -> Any:
        body = await self._body(request)
        return await self._openai(request, body, openai_api.completion_options(body), chat=False)

    # -- running a request ------------------------------------------------------------
    def _prepare(self, entry: Loaded, req: Request, asked: int | None) -> Any:
        """Prepare the request (in a worker thread: templates, tokens, grammar)."""
        job = entry.model.prepare(req)
        slot = entry.engine.slot_ctx
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

    async def _start(self, body: dict[str, Any], options: dict[str, Any],
                     keep_alive: float | None = None) -> _Run:  # fmt: skip
        """Validate and queue a request on its model; nothing queues before it is valid."""
        from starlette.concurrency import run_in_threadpool

        model_id = self._model(body)
        asked = options.pop("max_tokens", None)
        try:  # checked before a model is loaded for it
            req = await run_in_threadpool(lambda: Request.build(**options, max_tokens=None))
        except GgrunError as e:
            raise openai_api.from_error(e) from None
        t0 = time.perf_counter()
        entry = await self._acquire(model_id)
        run = _Run(self.pool, entry, keep_alive, time.perf_counter() - t0, t0)
        try:
            run.job = await run_in_threadpool(self._prepare, entry, req, asked)
        except GgrunError as e:
            run.done()
            raise openai_api.from_error(e) from None
        except BaseException:
            run.done()
            raise
        loop = asyncio.get_running_loop()
        waiter = Waiter(
            on_chunk=lambda c: loop.call_soon_threadsafe(run.queue.put_nowait, c),
            on_done=lambda r: loop.call_soon_threadsafe(run.queue.put_nowait, r),
        )
        run.index = entry.engine.next_index()
        entry.engine.submit(run.index, run.job, waiter)
        return run

    async def _openai(self, request: Any, body: dict[str, Any], options: dict[str, Any], *,
                      chat: bool) -> Any:  # fmt: skip
        run = await self._start(body, options)
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        if body.get("stream"):
            include = bool((body.get("stream_options") or {}).get("include_usage"))
            return self._sse(run, rid, chat, include)
        result = await self._wait(request, run)
        if result.error is not None:
            if result.finish_reason == "error":
                raise ApiError(400, result.error)
            raise ApiError(422, f"the output failed its checks: {result.error}",
                           code="invalid_output")  # fmt: skip
        from starlette.responses import JSONResponse

        return JSONResponse(openai_api.final_body(rid, run.entry.id, result, chat))

    async def _wait(self, request: Any, run: _Run) -> Result:
        """The result; a client that goes away first cancels its request."""

        async def gone() -> None:
            while (await request.receive())["type"] != "http.disconnect":
                pass

        watch = asyncio.ensure_future(gone())
        try:
            while True:
                get = asyncio.ensure_future(run.queue.get())
                await asyncio.wait({get, watch}, return_when=asyncio.FIRST_COMPLETED)
                if not get.done():
                    get.cancel()
                    run.cancel()
                    raise ApiError(499, "the client closed the request")
                item = get.result()
                if isinstance(item, Result):
                    run.done()
                    return item
        except asyncio.CancelledError:
            run.cancel()
            raise
        finally:
            watch.cancel()

    def _sse(self, run: _Run, rid: str, chat: bool, include_usage: bool) -> Any:
        from sse_starlette.sse import EventSourceResponse

        created = int(time.time())
        model_id = run.entry.id

        def event(c: Chunk | None, finish: str | None = None, r: Result | None = None) -> str:
            d = openai_api.chunk_body(rid, model_id, created, chat, c, finish)
            if r is not None and include_usage:
                d["usage"] = openai_api.usage(r)
            return json.dumps(d, ensure_ascii=False)

        async def events() -> AsyncIterator[str]:
            n_calls = 0
            try:
                if chat:
                    yield event(None)
                async for item in run.items():
                    if isinstance(item, Result):
                        if item.error is not None:
                            yield json.dumps(ApiError(400, item.error).body())
                        else:
                            yield event(None, item.finish_reason, item)
                        break
                    if item.text or item.reasoning or item.logprobs:
                        yield event(item)
                    for piece in openai_api.tool_call_deltas(item.tool_calls, n_calls):
                        d = openai_api.chunk_body(rid, model_id, created, chat, None, None)
                        d["choices"][0]["delta"] = {"tool_calls": [piece]}
                        yield json.dumps(d, ensure_ascii=False)
                    n_calls += len(item.tool_calls)
                yield "[DONE]"
            finally:
                run.cancel()  # a client that went away frees its slot (no-op when done)

        return EventSourceResponse(events(), ping=15)

    # -- the ollama API ----------------------------------------------------------------
    async def ollama_chat(self, request: Any) -> Any:
        body = await self._body(request)
        return await self._ollama(request, body, ollama_api.chat_options(body),
                                  ollama_api.chat_piece)  # fmt: skip

    async def ollama_generate(self, request: Any) -> Any:
        body = await self._body(request)
        return await self._ollama(request, body, ollama_api.generate_options(body),
                                  ollama_api.generate_piece)  # fmt: skip

    async def _ollama(self, request: Any, body: dict[str, Any], options: dict[str, Any],
                      piece: Callable[..., dict[str, Any]]) -> Any:  # fmt: skip
        from starlette.responses import JSONResponse, StreamingResponse

        ka = ollama_api.keep_alive(body.get("keep_alive"))
        if not (options.get("messages") or options.get("prompt")):  # load or unload only
            check = {**options, "prompt": None, "messages": [{"role": "user", "content": ""}]}
            try:  # its options are checked all the same
                Request.build(**check)
            except GgrunError as e:
                raise openai_api.from_error(e) from None
            return await self._ollama_load(body, ka, piece)
        run = await self._start(body, options, ka)
        model_id = run.entry.id
        if body.get("stream", True):

            async def lines() -> AsyncIterator[bytes]:
                try:
                    async for item in run.items():
                        if isinstance(item, Result):
                            if item.error is not None:
                                line: dict[str, Any] = {"error": item.error}
                            else:
                                last = piece(model_id, Chunk(), True)
                                line = ollama_api.final(last, item, run.t0, run.load_s)
                            yield (json.dumps(line, ensure_ascii=False) + "\n").encode()
                            break
                        if item.text or item.reasoning or item.tool_calls or item.logprobs:
                            out = piece(model_id, item, False)
                            yield (json.dumps(out, ensure_ascii=False) + "\n").encode()
                finally:
                    run.cancel()

            return StreamingResponse(lines(), media_type="application/x-ndjson")
        result = await self._wait(request, run)
        if result.error is not None:
            raise ApiError(400 if result.finish_reason == "error" else 422, result.error)
        whole = ollama_api.final(piece(model_id, result, True), result, run.t0, run.load_s)
        return JSONResponse(whole)

    async def _ollama_load(self, body: dict[str, Any], ka: float | None,
                           piece: Callable[..., dict[str, Any]]) -> Any:  # fmt: skip
        """An empty request loads a model (or, with keep_alive 0, unloads it)."""
        from starlette.responses import JSONResponse

        model_id = self._model(body)
        entry = await self._acquire(model_id)
        self.pool.release(entry, ka)
        out = piece(model_id, Chunk(), True)
        reason = "unload" if ka == 0 else "load"
        return JSONResponse({**out, "done_reason": reason})

    async def ollama_tags(self, request: Any) -> Any:
        from starlette.responses import JSONResponse

        self._auth(request)
        return JSONResponse({"models": [self._ollama_model(m) for m in self.pool.refs]})

    async def ollama_ps(self, request: Any) -> Any:
        from starlette.responses import JSONResponse

        self._auth(request)
        out = []
        for m, e in list(self.pool.loaded.items()):
            d = self._ollama_model(m)
            left = e.expires - time.monotonic() if e.expires is not None else MAX_PS_SECONDS
            left = min(max(left, 0.0), MAX_PS_SECONDS) if left == left else 0.0  # NaN: 0
            when = datetime.now(timezone.utc) + timedelta(seconds=left)
            d |= {"expires_at": when.isoformat().replace("+00:00", "Z"), "size_vram": 0,
                  "context_length": e.engine.slot_ctx}  # fmt: skip
            out.append(d)
        return JSONResponse({"models": out})

    async def ollama_show(self, request: Any) -> Any:
        from starlette.responses import JSONResponse

        body = await self._body(request)
        unknown = sorted(k for k in body if k not in ("model", "name", "verbose"))
        if unknown:
            raise ApiError(400, f"unknown field(s): {', '.join(unknown)[:200]}")
        model_id = body.get("model") if body.get("model") is not None else body.get("name")
        if not isinstance(model_id, str) or not model_id:
            raise ApiError(400, "'model' must be the name of a model", param="model")
        if not isinstance(body.get("verbose", False), bool):
            raise ApiError(400, "'verbose' must be true or false", param="verbose")
        model_id = self._model({"model": model_id})
        info = self._info(model_id)
        template = (info.chat_template if info else None) or ""
        caps = ["completion"] + (["tools"] if "tools" in template else [])
        caps += ["thinking"] if "<think>" in template else []
        model_info = {}
        if info is not None:
            model_info = {
                "general.architecture": info.arch,
                "general.parameter_count": info.n_params,
                "general.file_type": info.file_type,
                f"{info.arch}.context_length": info.context_length,
            }
        return JSONResponse({
            "modelfile": f"FROM {model_id}", "parameters": "", "template": template,
            "details": self._ollama_model(model_id)["details"], "model_info": model_info,
            "capabilities": caps, "modified_at": self._ollama_model(model_id)["modified_at"],
        })  # fmt: skip

    async def ollama_version(self, request: Any) -> Any:
        from starlette.responses import JSONResponse

        return JSONResponse({"version": ollama_api.VERSION})

    def _info(self, model_id: str) -> Any:
        """The model's GGUF metadata (None when its file cannot be read)."""
        d = self.pool.describe(model_id)
        if d["info"] is not None or d["path"] is None:
            return d["info"]
        from ggrun.gguffile import read_gguf

        try:
            return read_gguf(d["path"])
        except (GgrunError, OSError):
            return None

    def _ollama_model(self, model_id: str) -> dict[str, Any]:
        d = self.pool.describe(model_id)
        info = self._info(model_id)
        try:
            mtime = d["path"].stat().st_mtime if d["path"] is not None else time.time()
        except OSError:
            mtime = time.time()
        return {
            "name": model_id,
            "model": model_id,
            "modified_at": datetime.fromtimestamp(mtime, timezone.utc).isoformat(),
            "size": d["size"],
            "digest": "",
            "details": {
                "parent_model": "",
                "format": "gguf",
                "family": info.arch if info else "",
                "families": [info.arch] if info else [],
                "parameter_size": f"{info.n_params / 1e9:.1f}B" if info else "",
                "quantization_level": info.file_type if info else "",
            },
        }


class _Run:
    """One request in flight: its queue of chunks, and its claim on the model."""

    def __init__(self, pool: Pool, entry: Loaded, keep_alive: float | None, load_s: float,
                 t0: float) -> None:  # fmt: skip
        self.pool, self.entry, self.keep_alive = pool, entry, keep_alive
        self.load_s, self.t0 = load_s, t0
        self.queue: asyncio.Queue[Chunk | Result] = asyncio.Queue()
        self.index = -1
        self.job: Any = None
        self._released = False

    async def items(self) -> AsyncIterator[Chunk | Result]:
        while True:
            item = await self.queue.get()
            yield item
            if isinstance(item, Result):
                self.done()
                return

    def cancel(self) -> None:
        if not self._released and self.index >= 0:
            self.entry.engine.cancel(self.index)
        self.done()

    def done(self) -> None:
        if not self._released:
            self._released = True
            self.pool.release(self.entry, self.keep_alive)


def check_address(host: str, port: int) -> None:
    """Fail with one line now, not with uvicorn's log after the model has loaded."""
    import socket

    try:
        with socket.create_server((host, port)):
            pass
    except OSError as e:
        raise GgrunError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


def serve(
    pool: Pool,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    api_key: str | None = None,
    extra_hosts: Iterable[str] = (),
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

    server = Server(pool, api_key=api_key, host=host, extra_hosts=extra_hosts)
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        uvicorn.run(
            server.app,
            host=host,
            port=port,
            log_level="warning",
            timeout_graceful_shutdown=5,
            limit_concurrency=MAX_CONNECTIONS + pool.parallel * pool.max_loaded,
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
