"""``ggrun serve``: an OpenAI-compatible HTTP server over the batch engine.

One engine thread owns the model and a :class:`~ggrun.batch.Batcher`: it admits queued
requests into free slots and decodes every active sequence in one ``llama_decode`` per
step, so concurrent clients share the model (dynamic batching) up to ``parallel`` at
once; the rest wait in the queue. HTTP handlers (Starlette on uvicorn) render and
tokenize a request first, so a malformed one gets a 400 before it takes a slot, then
hand it to the engine and await its chunks. A client that disconnects mid-stream
cancels its request, which frees its slot at the next step.

This module is the only place where ggrun speaks OpenAI's JSON: thinking comes back as
``reasoning_content``, never inside ``content``. Errors use OpenAI's error body.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from ggrun.batch import Batcher, BatchResult, Prepared, Request, prepare
from ggrun.engine import Chunk, Model
from ggrun.errors import ContextOverflow, GgrunError

logger = logging.getLogger(__name__)

MAX_BODY = 1 << 20  # bytes
SAMPLING_KEYS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "seed": "seed",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "repeat_penalty": "repeat_penalty",
}


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> None:  # fmt: skip
        super().__init__(message)
        self.status, self.kind, self.param, self.code = status, kind, param, code

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": str(self),
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        }


# ---------------------------------------------------------------- the engine thread


@dataclass
class _Waiter:
    on_chunk: Callable[[Chunk], Any]
    on_done: Callable[[BatchResult], Any]


@dataclass
class Stats:
    requests: int = 0
    finished: int = 0
    cancelled: int = 0
    started: float = field(default_factory=time.time)
    recent: collections.deque[tuple[float, int]] = field(
        default_factory=lambda: collections.deque(maxlen=256)
    )


class Engine:
    """Runs the batcher in its own thread; everything else talks to it through queues."""

    def __init__(self, model: Model, *, parallel: int, slot_ctx: int) -> None:
        self.model = model
        self.batcher = Batcher(model, parallel=parallel, slot_ctx=slot_ctx)
        self.slot_ctx = slot_ctx
        self.parallel = parallel
        self._pending: collections.deque[tuple[int, Prepared]] = collections.deque()
        self._cancel: set[int] = set()
        self._waiters: dict[int, _Waiter] = {}
        self._cv = threading.Condition()
        self._ids = itertools.count()
        self._stop = False
        self.stats = Stats()
        self._thread = threading.Thread(target=self._loop, name="ggrun-engine", daemon=True)
        self._thread.start()

    def next_index(self) -> int:
        return next(self._ids)

    def submit(self, index: int, job: Prepared, waiter: _Waiter) -> None:
        job.req.on_chunk = waiter.on_chunk
        with self._cv:
            self._waiters[index] = waiter
            self._pending.append((index, job))
            self.stats.requests += 1
            self._cv.notify()

    def cancel(self, index: int) -> None:
        with self._cv:
            self._cancel.add(index)
            self._cv.notify()

    @property
    def queued(self) -> int:
        return len(self._pending)

    @property
    def active(self) -> int:
        return self.batcher.active

    def close(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify()
        self._thread.join(timeout=30)
        self.batcher.close()

    def _loop(self) -> None:
        while True:
            with self._cv:
                while (
                    not self._stop
                    and not self._pending
                    and not self._cancel
                    and not self.batcher.active
                ):
                    self._cv.wait()
                if self._stop:
                    return
                cancels, self._cancel = self._cancel, set()
                self._pending = collections.deque(
                    (i, j) for i, j in self._pending if i not in cancels
                )
                admit: list[tuple[int, Prepared]] = []
                while self._pending and len(admit) < self.batcher.free_slots:
                    admit.append(self._pending.popleft())
            for index in cancels:
                self.batcher.cancel(index)
                self.stats.cancelled += 1
                self._waiters.pop(index, None)
            for index, job in admit:
                failed = self.batcher.admit(index, job)
                if failed is not None:
                    self._done(*failed)
            if self.batcher.active:
                try:
                    done = self.batcher.step()
                except GgrunError as e:  # a failed decode fails the requests in flight
                    logger.error("%s", e)
                    for index in list(self._waiters):
                        if self.batcher.cancel(index):
                            self._done(index, BatchResult("", "error", error=str(e)))
                    continue
                for index, result in done:
                    self._done(index, result)
                self.stats.recent.append((time.monotonic(), self.batcher.tokens_generated))

    def _done(self, index: int, result: BatchResult) -> None:
        waiter = self._waiters.pop(index, None)
        self.stats.finished += 1
        if waiter is not None:
            waiter.on_done(result)

    def tokens_per_second(self) -> float:
        r = self.stats.recent
        if len(r) < 2 or time.monotonic() - r[-1][0] > 10:
            return 0.0
        (t0, n0), (t1, n1) = r[0], r[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0


# ---------------------------------------------------------------- requests


def _int(body: dict[str, Any], key: str, lo: int, hi: int) -> int | None:
    v = body.get(key)
    if v is None:
        return None
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise ApiError(400, f"'{key}' must be an integer in [{lo}, {hi}]", param=key)
    return v


def _options(body: dict[str, Any]) -> dict[str, Any]:
    opts: dict[str, Any] = {}
    for key, name in SAMPLING_KEYS.items():
        v = body.get(key)
        if v is None:
            continue
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            raise ApiError(400, f"'{key}' must be a number", param=key)
        opts[name] = int(v) if key in ("top_k", "seed") else float(v)
    rf = body.get("response_format")
    if rf is not None:
        if not isinstance(rf, dict) or rf.get("type") not in ("text", "json_object", "json_schema"):
            raise ApiError(400, "response_format.type must be text, json_object or json_schema",
                           param="response_format")  # fmt: skip
        if rf["type"] != "text":
            opts["response_format"] = rf
    return opts


def _stop(body: dict[str, Any]) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    if isinstance(stop, str):
        return (stop,)
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop) and len(stop) <= 16:
        return tuple(stop)
    raise ApiError(400, "'stop' must be a string or a list of up to 16 strings", param="stop")


def _think(body: dict[str, Any]) -> bool | None:
    kw = body.get("chat_template_kwargs")
    if isinstance(kw, dict) and isinstance(kw.get("enable_thinking"), bool):
        return bool(kw["enable_thinking"])
    think = body.get("think")
    return think if isinstance(think, bool) else None


def _messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise ApiError(400, "'messages' must be a non-empty list", param="messages")
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant",
                                                           "developer", "tool"):  # fmt: skip
            raise ApiError(400, f"messages[{i}] needs a role (system, user, assistant)",
                           param="messages")  # fmt: skip
        content = m.get("content", "")
        if isinstance(content, list):  # content parts: keep the text ones
            content = "".join(
                p.get("text", "")
                for p in content
                if isinstance(p, dict) and p.get("type") == "text"
            )
        if not isinstance(content, str):
            raise ApiError(400, f"messages[{i}].content must be a string", param="messages")
        role = "system" if m["role"] == "developer" else m["role"]
        out.append({"role": role, "content": content})
    return out


class Server:
    """The Starlette application around one model and its engine."""

    def __init__(
        self, model: Model, *, model_id: str, parallel: int = 4, slot_ctx: int | None = None,
        api_key: str | None = None, max_body: int = MAX_BODY,
    ) -> None:  # fmt: skip
        self.model = model
        self.model_id = model_id
        self.api_key = api_key
        self.max_body = max_body
        self.engine = Engine(model, parallel=parallel, slot_ctx=slot_ctx or model.n_ctx)
        self.created = int(time.time())
        self.app = self._build()

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
        return Starlette(routes=routes, exception_handlers={ApiError: self._api_error,
                                                              404: self._not_found,
                                                              405: self._not_allowed})  # fmt: skip

    async def _api_error(self, request: Any, exc: Exception) -> Any:
        from starlette.responses import JSONResponse

        assert isinstance(exc, ApiError)
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse(exc.body(), status_code=exc.status, headers=headers)

    async def _not_found(self, request: Any, exc: Exception) -> Any:
        return await self._api_error(request, ApiError(404, f"no route {request.url.path}",
                                                       code="not_found"))  # fmt: skip

    async def _not_allowed(self, request: Any, exc: Exception) -> Any:
        return await self._api_error(
            request, ApiError(405, f"{request.method} is not allowed on {request.url.path}")
        )

    def _auth(self, request: Any) -> None:
        if self.api_key is None:
            return
        if request.headers.get("authorization", "") != f"Bearer {self.api_key}":
            raise ApiError(401, "invalid or missing API key (Authorization: Bearer KEY)",
                           kind="authentication_error", code="invalid_api_key")  # fmt: skip

    async def _body(self, request: Any) -> dict[str, Any]:
        self._auth(request)
        size = request.headers.get("content-length")
        if size is not None and size.isdigit() and int(size) > self.max_body:
            raise ApiError(413, f"the request body is larger than {self.max_body} bytes")
        raw = b""
        async for part in request.stream():
            raw += part
            if len(raw) > self.max_body:
                raise ApiError(413, f"the request body is larger than {self.max_body} bytes")
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ApiError(400, f"the body is not valid JSON: {e}") from None
        if not isinstance(body, dict):
            raise ApiError(400, "the body must be a JSON object")
        model = body.get("model")
        if model not in (None, "", self.model_id):
            raise ApiError(404, f"the model {model!r} does not exist; this server has "
                           f"{self.model_id!r}", param="model", code="model_not_found")  # fmt: skip
        return body

    # -- endpoints --------------------------------------------------------------
    async def health(self, request: Any) -> Any:
        from starlette.responses import JSONResponse

        return JSONResponse({"status": "ok", "model": self.model_id})

    async def models(self, request: Any) -> Any:
        from starlette.responses import JSONResponse

        self._auth(request)
        card = {"id": self.model_id, "object": "model", "created": self.created,
                "owned_by": "ggrun"}  # fmt: skip
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
            ("ggrun_tokens_per_second", "gauge", round(e.tokens_per_second(), 2)),
            ("ggrun_requests_active", "gauge", e.active),
            ("ggrun_queue_length", "gauge", e.queued),
            ("ggrun_slots", "gauge", e.parallel),
        ]
        text = "".join(f"# TYPE {n} {t}\n{n} {v}\n" for n, t, v in lines)
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    async def chat(self, request: Any) -> Any:
        body = await self._body(request)
        req = Request(messages=_messages(body), think=_think(body), stop=_stop(body),
                      options=_options(body))  # fmt: skip
        return await self._run(body, req, chat=True)

    async def completions(self, request: Any) -> Any:
        body = await self._body(request)
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str) or not prompt:
            raise ApiError(400, "'prompt' must be a non-empty string", param="prompt")
        req = Request(prompt=prompt, stop=_stop(body), options=_options(body))
        return await self._run(body, req, chat=False)

    async def _run(self, body: dict[str, Any], req: Request, *, chat: bool) -> Any:
        from starlette.concurrency import run_in_threadpool

        slot = self.engine.slot_ctx
        asked = _int(body, "max_completion_tokens", 1, 1 << 30)
        if asked is None:
            asked = _int(body, "max_tokens", 1, 1 << 30)
        index = self.engine.next_index()
        req.max_tokens = None
        try:
            job = await run_in_threadpool(prepare, self.model, index, req)
        except ContextOverflow as e:
            raise ApiError(400, str(e), code="context_length_exceeded") from None
        except GgrunError as e:
            raise ApiError(400, str(e)) from None
        room = slot - len(job.tokens)
        if room < 1:
            raise ApiError(400, f"the prompt has {len(job.tokens)} tokens; the context holds "
                           f"{slot}", code="context_length_exceeded")  # fmt: skip
        if asked is not None and asked > room:
            raise ApiError(400, f"max_tokens {asked} is more than the {room} tokens left in the "
                           f"{slot}-token context after the prompt ({len(job.tokens)} tokens)",
                           param="max_tokens", code="context_length_exceeded")  # fmt: skip
        job.req.max_tokens = asked if asked is not None else room
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        queue: asyncio.Queue[Chunk | BatchResult] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        waiter = _Waiter(
            on_chunk=lambda c: loop.call_soon_threadsafe(queue.put_nowait, c),
            on_done=lambda r: loop.call_soon_threadsafe(queue.put_nowait, r),
        )
        self.engine.submit(index, job, waiter)
        if body.get("stream"):
            return self._stream(index, rid, queue, chat, body)
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BatchResult):
                    break
        except asyncio.CancelledError:
            self.engine.cancel(index)
            raise
        return self._final(rid, item, chat)

    def _final(self, rid: str, r: BatchResult, chat: bool) -> Any:
        from starlette.responses import JSONResponse

        if r.error is not None and r.finish_reason == "error":
            raise ApiError(400, r.error)
        usage = {"prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens,
                 "total_tokens": r.prompt_tokens + r.completion_tokens}  # fmt: skip
        if chat:
            msg: dict[str, Any] = {"role": "assistant", "content": r.text}
            if r.reasoning:
                msg["reasoning_content"] = r.reasoning
            choice: dict[str, Any] = {"index": 0, "message": msg,
                                      "finish_reason": r.finish_reason}  # fmt: skip
            obj = "chat.completion"
        else:
            choice = {"index": 0, "text": r.text, "finish_reason": r.finish_reason,
                      "logprobs": None}  # fmt: skip
            obj = "text_completion"
        if r.error is not None:  # parsed output that did not validate, or was cut off
            choice["ggrun_error"] = r.error
        return JSONResponse(
            {
                "id": rid,
                "object": obj,
                "created": int(time.time()),
                "model": self.model_id,
                "choices": [choice],
                "usage": usage,
            }
        )

    def _stream(
        self, index: int, rid: str, queue: asyncio.Queue[Any], chat: bool, body: dict[str, Any]
    ) -> Any:
        from sse_starlette.sse import EventSourceResponse

        created = int(time.time())
        obj = "chat.completion.chunk" if chat else "text_completion"
        with_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        def event(choice: dict[str, Any], usage: dict[str, Any] | None = None) -> str:
            d: dict[str, Any] = {"id": rid, "object": obj, "created": created,
                                 "model": self.model_id, "choices": [choice]}  # fmt: skip
            if usage is not None:
                d["usage"] = usage
            return json.dumps(d, ensure_ascii=False)

        async def events() -> AsyncIterator[str]:
            finished = False
            try:
                if chat:
                    yield event({"index": 0, "delta": {"role": "assistant", "content": ""},
                                 "finish_reason": None})  # fmt: skip
                while True:
                    item = await queue.get()
                    if isinstance(item, BatchResult):
                        finished = True
                        if item.finish_reason == "error":
                            yield json.dumps(ApiError(400, item.error or "error").body())
                            break
                        usage = {
                            "prompt_tokens": item.prompt_tokens,
                            "completion_tokens": item.completion_tokens,
                            "total_tokens": item.prompt_tokens + item.completion_tokens,
                        }
                        end = ({"index": 0, "delta": {}, "finish_reason": item.finish_reason}
                               if chat else {"index": 0, "text": "",
                                             "finish_reason": item.finish_reason})  # fmt: skip
                        yield event(end, usage if with_usage else None)
                        break
                    if item.finish_reason is not None:
                        continue  # the engine's last chunk; the result follows
                    if chat:
                        delta: dict[str, Any] = {}
                        if item.text:
                            delta["content"] = item.text
                        if item.reasoning:
                            delta["reasoning_content"] = item.reasoning
                        yield event({"index": 0, "delta": delta, "finish_reason": None})
                    else:
                        yield event({"index": 0, "text": item.text, "finish_reason": None})
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
    model: Model, *, model_id: str, host: str = "127.0.0.1", port: int = 8080,
    parallel: int = 4, slot_ctx: int | None = None, api_key: str | None = None,
) -> None:  # fmt: skip
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

    server = Server(model, model_id=model_id, parallel=parallel, slot_ctx=slot_ctx,
                    api_key=api_key)  # fmt: skip
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        uvicorn.run(server.app, host=host, port=port, log_level="warning",
                    timeout_graceful_shutdown=5)  # fmt: skip
    except _Stop as e:
        if e.signum == signal.SIGINT:
            raise KeyboardInterrupt from None  # the CLI's one line and exit code 130
        logger.warning("stopped (SIGTERM)")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        server.close()
