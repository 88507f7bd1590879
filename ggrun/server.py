"""``ggrun serve``: HTTP (Starlette on uvicorn) over the batch engine.

This module is routes, one run path and the models' lifecycle: it checks who asks and
what arrives, hands the body to the route's API adapter (:mod:`ggrun.api`: it knows the
wire format, this module does not), builds the one :class:`~ggrun.request.Request`,
makes it ready for the model (template, tokens, grammar check) *before* anything is
queued, and hands it to the :class:`~ggrun.batching.Engine` thread, which decodes all
requests together. Chunks come back through a queue and the adapter renders them, as
server-sent events, NDJSON lines or one JSON body.

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
from collections.abc import AsyncIterator, Callable, Iterable
from datetime import datetime, timedelta, timezone
from typing import Any

from ggrun import flight
from ggrun.api import (
    Adapter,
    Call,
    Choices,
    EmbedAdapter,
    Event,
    Meta,
    Reply,
    anthropic,
    ollama,
    openai,
    responses,
)
from ggrun.errors import ApiError, GgrunError
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


def _lone_surrogate(body: dict[str, Any]) -> str | None:
    """Where the first string (a value or a key) that is not valid text is, as
    ``a.b[2]``; None when every one is (an echoed field would otherwise fail as the
    reply is encoded, and a tool's text would reach the tokenizer as broken UTF-8)."""
    try:
        json.dumps(body, ensure_ascii=False).encode("utf-8")
        return None
    except UnicodeEncodeError:
        pass
    stack: list[tuple[Any, str]] = [(body, "")]
    while stack:
        v, at = stack.pop()
        items = v.items() if isinstance(v, dict) else enumerate(v) if isinstance(v, list) else ()
        for k, x in items:
            here = f"{at}[{k}]" if isinstance(k, int) else f"{at}.{k}" if at else k
            for text in (k, x):
                if isinstance(text, str) and not _encodes(text):
                    return repr(here)[1:-1] if text is k else here
            stack.append((x, here))
    return None  # unreachable: dumps failed on some string


def _encodes(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


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
                await JSONResponse(openai.error_body(err), status_code=400)(scope, receive, send)
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
        allow_repeated_calls: bool = False,
    ) -> None:
        self.pool = pool
        self.api_key = api_key
        self.allow_repeated_calls = allow_repeated_calls  # else a repeat is drawn again
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
            Route("/v1/models/{model_id:path}", self.model_card, methods=["GET"]),
            *(self._route(path, adapter) for path, adapter in GENERATION.items()),
            Route("/v1/messages/count_tokens", self.count_tokens, methods=["POST"]),
            *(self._embed_route(path, adapter) for path, adapter in EMBEDDINGS.items()),
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

    def _route(self, path: str, adapter: Adapter) -> Any:
        from starlette.routing import Route

        async def endpoint(request: Any) -> Any:
            request.state.adapter = adapter  # errors are rendered in its shape
            call = adapter.parse(await self._body(request))
            response = await self._generate(request, adapter, call)
            response.headers.update(call.headers)  # the adapter's notes (ignored options)
            return response

        return Route(path, endpoint, methods=["POST"])

    def _embed_route(self, path: str, adapter: EmbedAdapter) -> Any:
        from starlette.routing import Route

        async def endpoint(request: Any) -> Any:
            request.state.adapter = adapter
            return await self._embed(request, adapter)

        return Route(path, endpoint, methods=["POST"])

    async def _api_error(self, request: Any, exc: Exception) -> Any:
        from starlette.responses import Response

        assert isinstance(exc, ApiError)
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        text = json.dumps(_adapter_of(request).error(exc))  # ASCII: lone surrogates stay JSON
        return Response(text, exc.status, headers, media_type="application/json")

    async def _not_found(self, request: Any, exc: Exception) -> Any:
        err = ApiError(404, f"no route {request.url.path[:200]}", code="not_found")
        return await self._api_error(request, err)

    async def _not_allowed(self, request: Any, exc: Exception) -> Any:
        err = ApiError(405, f"{request.method} is not allowed on {request.url.path[:200]}")
        return await self._api_error(request, err)

    def _auth(self, request: Any) -> None:
        """The API key, as ``Authorization: Bearer KEY`` or (Anthropic's) ``x-api-key``."""
        if self.api_key is None:
            return
        given = request.headers.get("authorization", "").encode("utf-8", "replace")
        key = request.headers.get("x-api-key", "").encode("utf-8", "replace")
        bearer = hmac.compare_digest(given, f"Bearer {self.api_key}".encode())
        if not (hmac.compare_digest(key, self.api_key.encode()) | bearer):  # both compared
            raise ApiError(
                401,
                "invalid or missing API key (Authorization: Bearer KEY, or x-api-key: KEY)",
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
        where = _lone_surrogate(body)
        if where is not None:  # JSON allows "\ud800"; UTF-8, templates and llama.cpp do not
            raise ApiError(400, f"{where[:200]} is not valid text (it holds a lone surrogate)",
                           param=where.split(".")[0].split("[")[0][:100] or None)  # fmt: skip
        return body

    def _model(self, model: Any) -> str:
        """The model a body names (the default one when it names none)."""
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
        cards = [openai.model_card(m, self.created) for m in self.pool.refs]
        return JSONResponse({"object": "list", "data": cards})

    async def model_card(self, request: Any) -> Any:
        from starlette.responses import JSONResponse

        self._auth(request)
        name = request.path_params["model_id"]
        if not name:
            raise ApiError(404, "name a model: /v1/models/{id}", code="model_not_found")
        model_id = self._model(name)
        return JSONResponse(openai.model_card(model_id, self.created))

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

    async def count_tokens(self, request: Any) -> Any:
        """Anthropic's ``/v1/messages/count_tokens``: the tokens of the prompt that a
        message body makes on its model (system, tools and thinking included)."""
        from starlette.concurrency import run_in_threadpool
        from starlette.responses import JSONResponse

        request.state.adapter = anthropic.MESSAGES  # errors are rendered in its shape
        call = anthropic.count_call(await self._body(request))
        model_id = self._model(call.model)
        try:
            req = await run_in_threadpool(lambda: Request.build(**call.options))
        except GgrunError as e:
            raise ApiError.of(e) from None
        entry = await self._acquire(model_id)

        def count() -> int:  # as Model.prepare renders and tokenizes it
            m = entry.model
            prompt = m.render_chat(req.messages or (), think=req.think, tools=req.offered_tools)
            return len(m.tokenize_prompt(prompt))

        try:
            n = await run_in_threadpool(count)
        except GgrunError as e:
            raise ApiError.of(e) from None
        finally:
            self.pool.release(entry, None)
        return JSONResponse(anthropic.count_body(n))

    # -- the one run path ------------------------------------------------------------
    async def _generate(self, request: Any, adapter: Adapter, call: Call) -> Any:
        """Every API's generation: call -> request -> the engine -> its reply."""
        from starlette.responses import JSONResponse

        model_id = self._model(call.model)
        if call.load_only:
            return await self._load(model_id, call, adapter)
        run = await self._start(model_id, call)
        runs = flight.choices(run, call.n)
        meta = Meta(model_id, int(time.time()), run.t0, run.load_s, run.job.run)
        reply = adapter.reply(call, meta)
        if call.stream:
            return self._stream(runs, reply, adapter)
        results = []
        try:
            for r in runs:
                result = flight.served(await self._wait(request, r))
                if result.error is not None:
                    raise flight.failed(result)  # the other choices are cancelled
                results.append(result)
        finally:
            for r in runs:
                r.cancel()  # no-op when done
        if len(results) > 1:
            return JSONResponse(_many(reply).whole_of(results))
        return JSONResponse(reply.whole(results[0]))

    async def _load(self, model_id: str, call: Call, adapter: Adapter) -> Any:
        """A call with nothing to generate loads the model (or, keep_alive 0, unloads it)."""
        from starlette.responses import JSONResponse

        entry = await self._acquire(model_id)
        self.pool.release(entry, call.keep_alive)
        reply = adapter.reply(call, Meta(model_id, int(time.time()), time.perf_counter()))
        return JSONResponse(reply.whole(Result("", "unload" if call.keep_alive == 0 else "load")))

    def _prepare(self, entry: Loaded, req: Request, asked: int | None,
                 context: int | None = None) -> Any:  # fmt: skip
        """Prepare the request for its slot, or the smaller ``context`` it asks for (in a
        worker thread: templates, tokens, grammar)."""
        from ggrun.errors import ContextOverflow

        slot = min(entry.engine.slot_ctx, context or entry.engine.slot_ctx)
        try:
            return entry.model.prepare(req, slot_ctx=slot)
        except ContextOverflow as e:  # the prompt, or max_tokens past the room it leaves
            param = "max_tokens" if asked is not None and e.n_tokens < e.n_ctx else None
            raise ApiError(400, str(e), param=param, code="context_length_exceeded") from None

    async def _start(self, model_id: str, call: Call) -> flight.Run:
        """Validate and queue a request on its model; nothing queues before it is valid."""
        from starlette.concurrency import run_in_threadpool

        options = dict(call.options)
        asked = options.pop("max_tokens", None)
        try:  # checked before a model is loaded for it
            req = await run_in_threadpool(lambda: Request.build(**options, max_tokens=asked))
        except GgrunError as e:
            raise ApiError.of(e) from None
        t0 = time.perf_counter()
        entry = await self._acquire(model_id)
        run = flight.Run(self.pool, entry, call.keep_alive, time.perf_counter() - t0, t0)
        run.redraw = not call.stream  # a streamed answer cannot take back what it sent
        run.remake = lambda r: self._prepare(entry, r, asked, call.context)
        run.stop_repeats = bool(req.offered_tools) and not (
            call.allow_repeated_calls or self.allow_repeated_calls)  # fmt: skip
        try:
            run.submit(await run_in_threadpool(run.remake, req))
        except GgrunError as e:
            run.done()
            raise ApiError.of(e) from None
        except BaseException:
            run.done()
            raise
        return run

    async def _wait(self, request: Any, run: flight.Run) -> Result:
        """The result; a client that goes away first cancels its request."""

        async def gone() -> None:
            while (await request.receive())["type"] != "http.disconnect":
                pass

        watch = asyncio.ensure_future(gone())
        try:
            while True:
                get = asyncio.ensure_future(run.next())
                await asyncio.wait({get, watch}, return_when=asyncio.FIRST_COMPLETED)
                if not get.done():
                    get.cancel()
                    run.cancel()
                    raise ApiError(499, "the client closed the request")
                item = get.result()
                if isinstance(item, Result):
                    if run.repeats(item.tool_calls):
                        await run.close_tools()
                        continue
                    run.done()
                    return item
        except asyncio.CancelledError:
            run.cancel()
            raise
        finally:
            watch.cancel()

    def _stream(self, runs: list[flight.Run], reply: Reply, adapter: Adapter) -> Any:
        """The reply's events as they come (of each choice, when ``runs`` are several),
        framed as the adapter says; a client that goes away frees its slots at the next
        step."""

        async def events() -> AsyncIterator[Event]:
            try:
                chunk_of, end_of = _renderers(reply, len(runs))
                for e in reply.head():
                    yield e
                async for i, item in flight.merged(runs):
                    if isinstance(item, Chunk) and runs[i].repeats(item.tool_calls):
                        await runs[i].close_tools()  # this call never goes out
                        continue
                    item = flight.served(item) if isinstance(item, Result) else item
                    out = end_of(i, item) if isinstance(item, Result) else chunk_of(i, item)
                    for e in out:
                        yield e
                    if isinstance(item, Result) and item.error is not None:
                        return  # the error ends the stream (and the other choices)
            finally:
                for run in runs:
                    run.cancel()  # no-op when done

        if adapter.framing == "ndjson":
            from starlette.responses import StreamingResponse

            async def lines() -> AsyncIterator[bytes]:
                async for e in events():
                    yield (_json(e.data) + "\n").encode()

            return StreamingResponse(lines(), media_type="application/x-ndjson")
        from sse_starlette.sse import EventSourceResponse, ServerSentEvent

        async def sse() -> AsyncIterator[ServerSentEvent]:
            async for e in events():
                yield ServerSentEvent(data=_json(e.data), event=e.name)

        return EventSourceResponse(sse(), ping=15)

    async def _embed(self, request: Any, adapter: EmbedAdapter) -> Any:
        """Embeddings: the model's own embedding context (generation goes on beside it)."""
        from starlette.concurrency import run_in_threadpool
        from starlette.responses import JSONResponse

        call = adapter.parse(await self._body(request))
        model_id = self._model(call.model)
        t0 = time.perf_counter()
        entry = await self._acquire(model_id)
        meta = Meta(model_id, int(time.time()), t0, time.perf_counter() - t0)
        try:
            done = await run_in_threadpool(lambda: entry.model.embedder.embed(
                list(call.texts), truncate=bool(call.wire.get("truncate"))))  # fmt: skip
            vectors, n_tokens = done.tolist(), done.total_tokens
        except GgrunError as e:
            raise ApiError.of(e) from None
        finally:
            self.pool.release(entry, call.keep_alive)
        return JSONResponse(adapter.render(call, vectors, n_tokens, meta))

    # -- the ollama listings ----------------------------------------------------------
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

        request.state.adapter = ollama.CHAT
        model_id = self._model(ollama.show_request(await self._body(request)))
        info = self._info(model_id)
        return JSONResponse(ollama.show(model_id, self._ollama_model(model_id), info))

    async def ollama_version(self, request: Any) -> Any:
        from starlette.responses import JSONResponse

        return JSONResponse({"version": ollama.VERSION})

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
        return ollama.model_card(model_id, d["path"], d["size"], self._info(model_id))


def _json(data: Any) -> str:
    return data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)


def _many(reply: Reply) -> Choices:
    """The reply of a call of several choices: its adapter read ``n`` and renders it."""
    assert isinstance(reply, Choices), "an adapter that reads n answers with Choices"
    return reply


def _renderers(reply: Reply, n: int) -> tuple[Callable[[int, Chunk], list[Event]],
                                              Callable[[int, Result], list[Event]]]:  # fmt: skip
    """How choice ``i``'s chunks and finish are rendered."""
    if n > 1:
        many = _many(reply)
        return many.chunk_of, many.end_of
    return (lambda i, c: reply.chunk(c)), (lambda i, r: reply.end(r))


def _adapter_of(request: Any) -> Adapter | EmbedAdapter:
    """The adapter whose shape an error takes: the route's, else by the path (a 404)."""
    adapter = getattr(request.state, "adapter", None)
    if adapter is not None:
        return adapter  # type: ignore[no-any-return]
    path = request.url.path
    if path == "/v1/messages" or path.startswith("/v1/messages/"):
        return anthropic.MESSAGES
    return ollama.CHAT if path.startswith("/api/") else openai.CHAT


EMBEDDINGS: dict[str, EmbedAdapter] = {
    "/v1/embeddings": openai.EMBEDDINGS,
    "/api/embed": ollama.EMBED,
    "/api/embeddings": ollama.EMBEDDINGS,
}
GENERATION: dict[str, Adapter] = {
    "/v1/chat/completions": openai.CHAT,
    "/v1/completions": openai.COMPLETIONS,
    "/v1/responses": responses.ADAPTER,
    "/v1/messages": anthropic.MESSAGES,
    "/api/chat": ollama.CHAT,
    "/api/generate": ollama.GENERATE,
}


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
    allow_repeated_calls: bool = False,
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

    server = Server(pool, api_key=api_key, host=host, extra_hosts=extra_hosts,
                    allow_repeated_calls=allow_repeated_calls)  # fmt: skip
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
