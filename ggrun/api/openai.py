"""The OpenAI adapters: ``/v1/chat/completions`` and ``/v1/completions`` bodies to
:class:`~ggrun.request.Request` options, results and chunks back to OpenAI's JSON (server-
sent events when streaming, ending with ``[DONE]``). No HTTP here (that is
:mod:`ggrun.server`).

Every field is checked: a wrong type or value is an :class:`ApiError` (a 400 with
OpenAI's error body) naming it, and a field ggrun does not implement is a 400 that
names it. The fields of :data:`IGNORED_KEYS` mean nothing to a local server: they are
checked, then ignored on purpose (``store: true`` too: it only keeps the completion in
OpenAI's dashboard). ``reasoning_effort`` maps to thinking by :data:`REASONING_EFFORT`.
``n`` (up to :data:`MAX_CHOICES`) draws that many choices, each with its own seed; the
sampling fields, ``logit_bias`` among them, are the option table's.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from ggrun import sampling
from ggrun.api import (
    REPEATS,
    Call,
    EmbedCall,
    Event,
    Framing,
    Meta,
    bad,
    check_fields,
    flag,
    texts,
)
from ggrun.errors import ApiError, GgrunError
from ggrun.textstream import Chunk, Result, TokenLogprob

SAMPLING_KEYS = tuple(sampling.wire_fields("openai"))  # read off the option table
# Fields that mean nothing to a local server: type-checked, then ignored on purpose.
IGNORED_KEYS = ("store", "metadata", "service_tier", "user", "safety_identifier",
                "prompt_cache_key")  # fmt: skip
MAX_METADATA = 16  # metadata's keys (OpenAI's limit)
MAX_CHOICES = 16  # n: choices one request may draw (OpenAI allows 128)
# reasoning_effort -> (think, thinking budget in tokens; None: no budget). An explicit
# think, chat_template_kwargs or reasoning_budget wins over it.
REASONING_EFFORT: Mapping[str, tuple[bool, int | None]] = {
    "none": (False, None),
    "minimal": (False, None),
    "low": (True, 512),
    "medium": (True, 2048),
    "high": (True, None),
}
COMMON_KEYS = {
    "model",
    "stream",
    "stream_options",
    "max_tokens",
    "stop",
    "response_format",
    "n",
    "logprobs",
    *SAMPLING_KEYS,
    *IGNORED_KEYS,
}
CHAT_KEYS = COMMON_KEYS | {
    "messages",
    "max_completion_tokens",
    "chat_template_kwargs",
    "think",
    "reasoning_budget",
    "reasoning_effort",
    "top_logprobs",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    REPEATS,
}
COMPLETION_KEYS = COMMON_KEYS | {"prompt", "echo", "suffix", "best_of"}
MAX_CONTENT_PARTS = 1000


def _check_fields(body: Mapping[str, Any], allowed: set[str]) -> None:
    check_fields(body, allowed)
    unsupported = [
        name
        for name, ok in (
            ("best_of", body.get("best_of") in (None, 1)),
            ("echo", body.get("echo") in (None, False)),
            ("suffix", body.get("suffix") in (None, "")),
        )
        if not ok
    ]
    if unsupported:
        raise bad(f"not supported by ggrun: {', '.join(unsupported)}", unsupported[0])
    if not isinstance(body.get("stream", False), bool):
        raise bad("'stream' must be true or false", "stream")
    _ignored(body)
    so = body.get("stream_options")
    if so is not None and (
        not isinstance(so, dict)
        or set(so) - {"include_usage"}
        or not isinstance(so.get("include_usage", False), bool)
    ):
        raise bad("'stream_options' may only hold include_usage (a boolean)", "stream_options")


def _user(body: Mapping[str, Any]) -> None:
    """``user``: an end user's id for abuse monitoring; checked, with no effect here."""
    if not isinstance(body.get("user", ""), (str, type(None))):
        raise bad("'user' must be a string", "user")


def _ignored(body: Mapping[str, Any]) -> None:
    """The fields of :data:`IGNORED_KEYS`: checked, with no effect here."""
    _user(body)
    for name in ("service_tier", "safety_identifier", "prompt_cache_key"):
        if not isinstance(body.get(name, ""), (str, type(None))):
            raise bad(f"'{name}' must be a string", name)
    if not isinstance(body.get("store", False), (bool, type(None))):
        raise bad("'store' must be true or false", "store")
    meta = body.get("metadata")
    if meta is not None and (
        not isinstance(meta, dict)
        or len(meta) > MAX_METADATA
        or not all(isinstance(v, str) for v in meta.values())
    ):
        raise bad(f"'metadata' must map up to {MAX_METADATA} keys to strings", "metadata")


def _sampling(body: Mapping[str, Any]) -> dict[str, Any]:
    try:
        return sampling.from_wire("openai", body)
    except GgrunError as e:  # the message starts with the field's name
        name = re.match(r"\w*", str(e))
        field = name.group() if name and name.group() in SAMPLING_KEYS else None
        raise ApiError(400, str(e), param=field) from None


def _choices(body: Mapping[str, Any]) -> int:
    """``n``: how many choices to draw (absent or null: one)."""
    n = body.get("n")
    if n is None:
        return 1
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_CHOICES:
        raise bad(f"'n' must be an integer from 1 to {MAX_CHOICES}", "n")
    return n


def _max_tokens(body: Mapping[str, Any], *names: str) -> Any:
    for name in names:
        if body.get(name) is not None:
            v = body[name]
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise bad(f"'{name}' must be a positive integer", name)
            return v
    return None


def _structured(rf: Any) -> dict[str, Any]:
    """``response_format`` as request options (OpenAI's shape, mapped here only)."""
    if rf is None:
        return {}
    if not isinstance(rf, dict) or rf.get("type") not in ("text", "json_object", "json_schema"):
        raise bad(
            "response_format.type must be text, json_object or json_schema", "response_format"
        )
    if rf["type"] == "text":
        return {}
    if rf["type"] == "json_object":
        inner = rf.get("schema")  # llama.cpp's extension: a schema inside json_object
        return {"json": True} if inner is None else {"schema": _schema(inner)}
    spec = rf.get("json_schema")
    if not isinstance(spec, dict) or "schema" not in spec:
        raise bad("response_format json_schema needs json_schema.schema", "response_format")
    return {"schema": _schema(spec["schema"])}


def _schema(schema: Any) -> dict[str, Any]:
    if not isinstance(schema, dict):
        raise bad("a JSON schema must be a JSON object", "response_format")
    return schema


def _effort(body: Mapping[str, Any]) -> tuple[bool | None, int | None]:
    """``reasoning_effort`` as (think, budget) by :data:`REASONING_EFFORT`; (None, None)
    when absent."""
    v = body.get("reasoning_effort")
    if v is None:
        return None, None
    if not isinstance(v, str) or v not in REASONING_EFFORT:
        raise bad(f"'reasoning_effort' must be one of {', '.join(REASONING_EFFORT)}",
                  "reasoning_effort")  # fmt: skip
    return REASONING_EFFORT[v]


def _budget(body: Mapping[str, Any]) -> Any:
    """``reasoning_budget`` (llama.cpp's server) or ``chat_template_kwargs.thinking_budget``,
    else ``reasoning_effort``'s; -1 means no budget."""
    kw = body.get("chat_template_kwargs")
    v = body.get("reasoning_budget")
    if v is None and isinstance(kw, dict):
        v = kw.get("thinking_budget")
    if v is None:  # reasoning_effort's budget, when thinking is on
        return _effort(body)[1] if _think(body) else None
    return None if v == -1 else v


def _think(body: Mapping[str, Any]) -> bool | None:
    kw = body.get("chat_template_kwargs")
    if kw is not None:
        if not isinstance(kw, dict) or set(kw) - {"enable_thinking", "thinking_budget"}:
            raise bad(
                "chat_template_kwargs may only hold enable_thinking and thinking_budget",
                "chat_template_kwargs",
            )
        v = kw.get("enable_thinking")
        if v is not None and not isinstance(v, bool):
            raise bad("enable_thinking must be true or false", "chat_template_kwargs")
        if v is not None:
            return bool(v)
    think = body.get("think")
    if think is not None and not isinstance(think, bool):
        raise bad("'think' must be true or false", "think")
    return _effort(body)[0] if think is None else think


def _content(m: Mapping[str, Any], i: int) -> str:
    content = m.get("content")
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and len(content) <= MAX_CONTENT_PARTS:
        parts = []
        for j, p in enumerate(content):
            if not isinstance(p, dict) or p.get("type") != "text":
                raise bad(f"messages[{i}].content[{j}]: only text parts are supported", "messages")
            if not isinstance(p.get("text"), str):
                raise bad(f"messages[{i}].content[{j}].text must be a string", "messages")
            parts.append(p["text"])
        return "".join(parts)
    raise bad(f"messages[{i}].content must be a string or a list of text parts", "messages")


def _messages(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise bad("'messages' must be a non-empty list", "messages")
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise bad(f"messages[{i}] must be an object", "messages")
        role = m.get("role")
        if role not in ("system", "user", "assistant", "developer", "tool"):
            raise bad(
                f"messages[{i}].role must be system, user, assistant, developer or tool",
                "messages",
            )
        msg: dict[str, Any] = {"role": "system" if role == "developer" else role}
        msg["content"] = _content(m, i)
        for key in ("tool_calls", "tool_call_id"):
            if m.get(key) is not None:
                msg[key] = m[key]  # checked by the request
        out.append(msg)
    return out


def _chat_logprobs(body: Mapping[str, Any]) -> dict[str, Any]:
    lp, top = body.get("logprobs"), body.get("top_logprobs")
    if lp is not None and not isinstance(lp, bool):
        raise bad("'logprobs' must be true or false", "logprobs")
    if top is not None and (
        isinstance(top, bool) or not isinstance(top, int) or not 0 <= top <= 20
    ):
        raise bad("'top_logprobs' must be an integer from 0 to 20", "top_logprobs")
    if top and not lp:
        raise bad("'top_logprobs' needs 'logprobs': true", "top_logprobs")
    return {"logprobs": top or 0} if lp else {}


def chat_options(body: Mapping[str, Any]) -> dict[str, Any]:
    """``/v1/chat/completions`` body -> request options."""
    _check_fields(body, CHAT_KEYS)
    return {
        **_chat_logprobs(body),
        "messages": _messages(body),
        "think": _think(body),
        "think_budget": _budget(body),
        "stop": body.get("stop"),
        "max_tokens": _max_tokens(body, "max_completion_tokens", "max_tokens"),
        **_sampling(body),
        **_structured(body.get("response_format")),
        **_tools(body),
    }


def _tools(body: Mapping[str, Any]) -> dict[str, Any]:
    """``tools``, ``tool_choice`` and ``parallel_tool_calls`` (checked by the request)."""
    out = {k: body[k] for k in ("tools", "tool_choice", "parallel_tool_calls") if k in body}
    if "tools" in out and not isinstance(out["tools"], list):
        raise bad("'tools' must be a list of tool definitions", "tools")
    return out


def completion_options(body: Mapping[str, Any]) -> dict[str, Any]:
    """``/v1/completions`` body -> request options."""
    _check_fields(body, COMPLETION_KEYS)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise bad("'prompt' must be a non-empty string", "prompt")
    lp = body.get("logprobs")
    if lp is not None and (isinstance(lp, bool) or not isinstance(lp, int) or not 0 <= lp <= 20):
        raise bad("'logprobs' must be an integer from 0 to 20", "logprobs")
    return {
        **({"logprobs": lp} if lp is not None else {}),
        "prompt": prompt,
        "stop": body.get("stop"),
        "max_tokens": _max_tokens(body, "max_tokens"),
        **_sampling(body),
        **_structured(body.get("response_format")),
    }


# ---------------------------------------------------------------- responses


def usage(r: Result | Chunk, *more: Result) -> dict[str, Any]:
    """OpenAI's ``usage`` of ``r``; ``more``: the other choices drawn from the same prompt,
    whose completion tokens add up (the prompt counts once, as OpenAI counts it)."""
    completion = r.completion_tokens + sum(m.completion_tokens for m in more)
    reasoning = r.reasoning_tokens + sum(m.reasoning_tokens for m in more)
    u: dict[str, Any] = {
        "prompt_tokens": r.prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": r.prompt_tokens + completion,
    }
    if reasoning:
        u["completion_tokens_details"] = {"reasoning_tokens": reasoning}
    if r.cached_tokens:
        u["prompt_tokens_details"] = {"cached_tokens": r.cached_tokens}
    return u


def final_body(rid: str, model_id: str, results: Sequence[Result], chat: bool) -> dict[str, Any]:
    """A whole (non-streamed) response: choice ``i`` is ``results[i]``."""
    return {
        "id": rid,
        "object": "chat.completion" if chat else "text_completion",
        "created": int(time.time()),
        "model": model_id,
        "choices": [_choice(i, r, chat) for i, r in enumerate(results)],
        "usage": usage(*results),
    }


def _choice(i: int, r: Result, chat: bool) -> dict[str, Any]:
    if not chat:
        lp = completion_logprobs(r.logprobs) if r.logprobs else None
        return {"index": i, "text": r.text, "finish_reason": r.finish_reason, "logprobs": lp}
    msg: dict[str, Any] = {"role": "assistant", "content": r.text}
    if r.reasoning:
        msg["reasoning_content"] = r.reasoning
    if r.tool_calls:
        msg["tool_calls"] = [c.as_openai() for c in r.tool_calls]
        msg["content"] = r.text or None
    choice: dict[str, Any] = {"index": i, "message": msg, "finish_reason": r.finish_reason}
    choice["logprobs"] = chat_logprobs(r.logprobs) if r.logprobs else None
    return choice


def chunk_body(rid: str, model_id: str, created: int, chat: bool, c: Chunk | None,
               finish: str | None = None, index: int = 0) -> dict[str, Any]:  # fmt: skip
    """One streamed event of choice ``index``: a delta, or (``c`` None) the first or the
    last event."""
    if chat:
        delta: dict[str, Any] = {}
        if c is None and finish is None:
            delta = {"role": "assistant", "content": ""}
        elif c is not None:
            if c.text:
                delta["content"] = c.text
            if c.reasoning:
                delta["reasoning_content"] = c.reasoning
        choice: dict[str, Any] = {"index": index, "delta": delta, "finish_reason": finish}
        if c is not None and c.logprobs:
            choice["logprobs"] = chat_logprobs(c.logprobs)
        obj = "chat.completion.chunk"
    else:
        choice = {"index": index, "text": c.text if c else "", "finish_reason": finish}
        if c is not None and c.logprobs:
            choice["logprobs"] = completion_logprobs(c.logprobs)
        obj = "text_completion"
    return {"id": rid, "object": obj, "created": created, "model": model_id, "choices": [choice]}


def tool_call_deltas(calls: list[Any], first_index: int) -> list[dict[str, Any]]:
    """OpenAI's streamed pieces of finished calls: the index, id and name first, then
    the arguments."""
    out = []
    for k, c in enumerate(calls):
        d = c.as_openai()
        i = first_index + k
        head = {"index": i, "id": d["id"], "type": "function"}
        out.append({**head, "function": {"name": d["function"]["name"], "arguments": ""}})
        out.append({"index": i, "function": {"arguments": d["function"]["arguments"]}})
    return out


def chat_logprobs(lps: list[TokenLogprob]) -> dict[str, Any]:
    """OpenAI's chat ``logprobs``: each token with its bytes and its top alternatives."""

    def one(token: str, lp: float, raw: tuple[int, ...]) -> dict[str, Any]:
        return {"token": token, "logprob": lp, "bytes": list(raw)}

    return {
        "content": [
            {**one(t.token, t.logprob, t.bytes), "top_logprobs": [one(*x) for x in t.top]}
            for t in lps
        ]
    }


def completion_logprobs(lps: list[TokenLogprob]) -> dict[str, Any]:
    """The completions API's older shape: parallel lists."""
    offsets, at = [], 0
    for t in lps:
        offsets.append(at)
        at += len(t.token)
    return {
        "tokens": [t.token for t in lps],
        "token_logprobs": [t.logprob for t in lps],
        "top_logprobs": [{tok: lp for tok, lp, _ in t.top} for t in lps],
        "text_offset": offsets,
    }


# ---------------------------------------------------------------- the adapters


def error_body(e: ApiError) -> dict[str, Any]:
    """OpenAI's error shape (also the server's for routes of no API)."""
    return {"error": {"message": str(e), "type": e.kind, "param": e.param, "code": e.code}}


def model_card(model_id: str, created: int) -> dict[str, Any]:
    """One entry of ``/v1/models`` (and ``/v1/models/{id}``)."""
    return {"id": model_id, "object": "model", "created": created, "owned_by": "ggrun"}


class _Reply:
    """One answer of ``call.n`` choices (a :class:`~ggrun.api.Choices`); a plain reply's
    methods are choice 0's."""

    def __init__(self, call: Call, meta: Meta, chat: bool) -> None:
        self.chat, self.meta, self.n = chat, meta, call.n
        self.rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        self.include_usage = bool(call.wire.get("include_usage"))
        self.n_calls = [0] * call.n  # each choice's tool calls sent so far
        self.ended: dict[int, Result] = {}  # the choices that have finished

    def _chunk(self, c: Chunk | None, finish: str | None = None, i: int = 0) -> dict[str, Any]:
        d = chunk_body(self.rid, self.meta.model, self.meta.created, self.chat, c, finish, i)
        return {**d, **self._fingerprint()}

    def _fingerprint(self) -> dict[str, Any]:
        run = self.meta.run
        return {"system_fingerprint": run.fingerprint} if run is not None else {}

    def head(self) -> list[Event]:
        return [Event(self._chunk(None, i=i)) for i in range(self.n)] if self.chat else []

    def chunk(self, c: Chunk) -> list[Event]:
        return self.chunk_of(0, c)

    def end(self, r: Result) -> list[Event]:
        return self.end_of(0, r)

    def whole(self, r: Result) -> dict[str, Any]:
        return self.whole_of([r])

    def chunk_of(self, i: int, c: Chunk) -> list[Event]:
        out = [Event(self._chunk(c, i=i))] if c.text or c.reasoning or c.logprobs else []
        for piece in tool_call_deltas(c.tool_calls, self.n_calls[i]):
            d = self._chunk(None, i=i)
            d["choices"][0]["delta"] = {"tool_calls": [piece]}
            out.append(Event(d))
        self.n_calls[i] += len(c.tool_calls)
        return out

    def end_of(self, i: int, r: Result) -> list[Event]:
        if r.error is not None:
            return [Event(error_body(ApiError(400, r.error))), Event("[DONE]")]
        self.ended[i] = r
        out = [Event(self._chunk(None, r.finish_reason, i))]
        if len(self.ended) < self.n:
            return out
        if self.include_usage:  # as OpenAI: usage in a last chunk of its own, no choices
            total = usage(*(self.ended[k] for k in range(self.n)))
            out.append(Event({**self._chunk(None), "choices": [], "usage": total}))
        return [*out, Event("[DONE]")]

    def whole_of(self, results: Sequence[Result]) -> dict[str, Any]:
        body = final_body(self.rid, self.meta.model, results, self.chat)
        return {**body, "created": self.meta.created, **self._fingerprint()}


class _Adapter:
    framing: Framing = "sse"

    def __init__(self, chat: bool) -> None:
        self.chat = chat

    def parse(self, body: Mapping[str, Any]) -> Call:
        options = chat_options(body) if self.chat else completion_options(body)
        so = body.get("stream_options") or {}
        return Call(options, body.get("model"), bool(body.get("stream")),
                    wire={"include_usage": bool(so.get("include_usage"))},
                    allow_repeated_calls=flag(body, REPEATS, False), n=_choices(body))  # fmt: skip

    def reply(self, call: Call, meta: Meta) -> _Reply:
        return _Reply(call, meta, self.chat)

    def error(self, e: ApiError) -> dict[str, Any]:
        return error_body(e)


CHAT = _Adapter(chat=True)
COMPLETIONS = _Adapter(chat=False)


class _Embeddings:
    """``POST /v1/embeddings``: ``input`` a string or a list, ``encoding_format`` float or
    base64 (little-endian float32, what the openai SDK asks for by default); the vectors
    are the model's, mean-pooled and normalized: ``dimensions`` is refused."""

    def parse(self, body: Mapping[str, Any]) -> EmbedCall:
        check_fields(body, {"input", "model", "encoding_format", "dimensions", "user"})
        _user(body)
        if body.get("dimensions") is not None:
            raise bad("not supported by ggrun: dimensions (vectors have the model's size)",
                      "dimensions")  # fmt: skip
        fmt = body.get("encoding_format") or "float"
        if fmt not in ("float", "base64"):
            raise bad("'encoding_format' must be float or base64", "encoding_format")
        if "input" not in body:
            raise bad("'input' is required", "input")
        return EmbedCall(texts(body["input"], "input"), body.get("model"), wire={"format": fmt})

    def render(self, call: EmbedCall, vectors: list[list[float]], n_tokens: int,
               meta: Meta) -> dict[str, Any]:  # fmt: skip
        def encode(v: list[float]) -> Any:
            if call.wire.get("format") != "base64":
                return v
            import base64
            import struct

            return base64.b64encode(struct.pack(f"<{len(v)}f", *v)).decode("ascii")

        data = [{"object": "embedding", "index": i, "embedding": encode(v)}
                for i, v in enumerate(vectors)]  # fmt: skip
        return {"object": "list", "data": data, "model": meta.model,
                "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens}}  # fmt: skip

    def error(self, e: ApiError) -> dict[str, Any]:
        return error_body(e)


EMBEDDINGS = _Embeddings()
