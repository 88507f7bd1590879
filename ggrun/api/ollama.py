"""The ollama adapter: ``/api/chat`` and ``/api/generate`` bodies to request options, and
results back in ollama's shape (NDJSON lines when streaming). No HTTP here.

The subset that clients use (the ``ollama`` Python package, editor plugins, Open WebUI):
``model``, ``messages`` / ``prompt`` and ``system``, ``stream`` (default true), ``format``
(``"json"`` or a JSON schema), ``think``, ``options`` (the sampling options of
:data:`ggrun.sampling.OPTIONS` by their ollama names, ``num_predict``, ``num_ctx`` and
``stop``), ``keep_alive``, ``tools``, ``logprobs`` and
``top_logprobs``. The options of :data:`IGNORED_OPTIONS` set up ollama's own runner and
mean nothing to a server that has loaded its model: they are accepted and ignored, named
in one warning log line and the :data:`IGNORED_HEADER` header. Anything else is a 400 that
names it, and so is a field of the wrong type or out of range: every field is checked
here, or by the request it becomes, before a model is loaded. ``keep_alive`` is clamped
to :data:`MAX_KEEP_ALIVE`. As in ollama, a chat without messages or a generate without a
prompt only loads the model (or, with ``keep_alive`` 0, unloads it).
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from ggrun import sampling
from ggrun.api import REPEATS, Call, EmbedCall, Event, Framing, Meta, flag, texts
from ggrun.errors import ApiError, GgrunError
from ggrun.textstream import Chunk, Result, TokenLogprob

VERSION = "0.12.0"  # the ollama API version these endpoints follow
OPTIONS = sampling.wire_fields("ollama")  # options.NAME -> the option (the option table)
# ollama's runner options (api/types.go Runner, and older ones clients still send): they
# do not apply to a server; accepted (a number or a boolean), named in a warning, ignored.
IGNORED_OPTIONS = ("num_thread", "num_gpu", "num_batch", "use_mmap", "num_keep", "numa",
                   "low_vram", "main_gpu", "use_mlock", "vocab_only", "f16_kv")  # fmt: skip
IGNORED_HEADER = "X-Ggrun-Ignored-Options"  # the ignored options a request gave, by name
COMMON = {"model", "stream", "format", "options", "keep_alive", "think", "logprobs", "top_logprobs"}
CHAT_KEYS = COMMON | {"messages", "tools", REPEATS}
GENERATE_KEYS = COMMON | {"prompt", "system", "raw", "images", "suffix", "template", "context"}
MAX_KEEP_ALIVE = 365 * 86400.0  # seconds: a longer keep_alive is this (negative: forever)
MAX_TOKENS = 1 << 30  # num_predict and num_ctx
DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "\u00b5s": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|\u00b5s|ms|s|m|h)")
logger = logging.getLogger(__name__)


def _bad(message: str) -> ApiError:
    return ApiError(400, message)


def _check(body: Mapping[str, Any], allowed: set[str]) -> None:
    unknown = sorted(k for k in body if k not in allowed)
    if unknown:
        raise _bad(f"unknown field(s): {', '.join(unknown)[:200]}")
    for key in ("images", "suffix", "template", "context"):
        if body.get(key):
            raise _bad(f"not supported by ggrun: {key}")
    if not isinstance(body.get("stream", True), bool):
        raise _bad("'stream' must be true or false")


def keep_alive(value: Any) -> float | None:
    """ollama's ``keep_alive`` in seconds: a number of seconds or a Go duration ("5m",
    "1h30m", "-1", "0"); negative: forever (-1.0); at most :data:`MAX_KEEP_ALIVE`.
    None when absent."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise _bad("keep_alive must be a number of seconds or a duration such as 5m")
    seconds = value if not isinstance(value, str) else _duration(value)
    if isinstance(seconds, float) and math.isnan(seconds):
        raise _bad("keep_alive must be a number")
    return -1.0 if seconds < 0 else float(min(seconds, MAX_KEEP_ALIVE))


def _duration(value: str) -> float:
    text = value.strip()
    sign = -1.0 if text.startswith("-") else 1.0
    rest = text[1:] if text[:1] in ("+", "-") else text
    if len(text) <= 64 and re.fullmatch(r"\d+(?:\.\d*)?|\.\d+", rest):
        return sign * float(rest)  # a number of seconds, as ollama's OLLAMA_KEEP_ALIVE
    if len(text) > 64 or not rest or _DURATION.sub("", rest):
        raise _bad(f"keep_alive {value[:40]!r} is not a duration such as 5m or 30s")
    return sign * sum(float(n) * DURATION_UNITS[u] for n, u in _DURATION.findall(rest))


def _int(name: str, v: Any, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise _bad(f"{name} must be an integer from {lo} to {hi}")
    return v


def _options(body: Mapping[str, Any]) -> dict[str, Any]:
    opts = body.get("options")
    if opts is None:
        return {}
    if not isinstance(opts, dict):
        raise _bad("'options' must be an object")
    known = {*OPTIONS, *IGNORED_OPTIONS, "num_predict", "num_ctx", "stop"}
    unknown = sorted(k for k in opts if k not in known)
    if unknown:
        raise _bad(f"options not supported by ggrun: {', '.join(unknown)[:200]}")
    for k in IGNORED_OPTIONS:
        if not isinstance(opts.get(k, 0), (int, float, bool, type(None))):
            raise _bad(f"options.{k} must be a number or a boolean")
    try:
        out = sampling.from_wire("ollama", opts, prefix="options.")
    except GgrunError as e:
        raise ApiError.of(e) from None
    n = opts.get("num_predict")
    if n is not None and _int("options.num_predict", n, -2, MAX_TOKENS) >= 0:
        out["max_tokens"] = n  # -1 (until the end) and -2 (fill the context): the room left
    if opts.get("num_ctx") is not None:  # the request's context (Call.context)
        _int("options.num_ctx", opts["num_ctx"], 1, MAX_TOKENS)
    if opts.get("stop") is not None:
        out["stop"] = opts["stop"]
    return out


def _format(value: Any) -> dict[str, Any]:
    if value in (None, ""):
        return {}
    if value == "json":
        return {"json": True}
    if isinstance(value, dict):
        return {"schema": value}
    raise _bad('format must be "json" or a JSON schema object')


def _think(value: Any) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    if value in ("low", "medium", "high"):
        return True
    raise _bad('think must be true, false, or "low", "medium", "high"')


def _common(body: Mapping[str, Any]) -> dict[str, Any]:
    out = {**_options(body), **_format(body.get("format")), "think": _think(body.get("think"))}
    lp, top = body.get("logprobs"), body.get("top_logprobs")
    if lp is not None and not isinstance(lp, bool):
        raise _bad("'logprobs' must be true or false")
    if top is not None:
        _int("top_logprobs", top, 0, 20)
    if lp:
        out["logprobs"] = top or 0
    return out


def _messages(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    msgs = body.get("messages", [])
    if not isinstance(msgs, list):
        raise _bad("'messages' must be a list")  # empty: load the model, as ollama
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise _bad(f"messages[{i}] must be an object")
        if m.get("images"):
            raise _bad(f"messages[{i}]: not supported by ggrun: images")
        msg = {"role": m.get("role"), "content": m.get("content", "")}
        calls = m.get("tool_calls")
        if calls is not None and not isinstance(calls, list):
            raise _bad(f"messages[{i}].tool_calls must be a list")
        if calls:
            msg["tool_calls"] = [
                {"type": "function", "function": c.get("function")} if isinstance(c, dict) else c
                for c in calls
            ]  # checked by the request
        out.append(msg)
    return out


def chat_options(body: Mapping[str, Any]) -> dict[str, Any]:
    """``/api/chat`` -> request options."""
    _check(body, CHAT_KEYS)
    out = {"messages": _messages(body), **_common(body)}
    tools = body.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise _bad("'tools' must be a list of tool definitions")
    if tools:
        out["tools"] = tools
    return out


def generate_options(body: Mapping[str, Any]) -> dict[str, Any]:
    """``/api/generate`` -> request options (``raw`` skips the chat template)."""
    _check(body, GENERATE_KEYS)
    prompt, system = body.get("prompt", ""), body.get("system")
    if not isinstance(prompt, str):
        raise _bad("'prompt' must be a string")
    if system is not None and not isinstance(system, str):
        raise _bad("'system' must be a string")
    if not isinstance(body.get("raw", False), bool):
        raise _bad("'raw' must be true or false")
    if body.get("raw") or not prompt:  # an empty prompt loads the model, as ollama
        return {"prompt": prompt, **_common(body)}
    msgs = [{"role": "system", "content": system}] if system else []
    return {"messages": [*msgs, {"role": "user", "content": prompt}], **_common(body)}


# ---------------------------------------------------------------- responses


def now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


def _logprobs(lps: list[TokenLogprob]) -> list[dict[str, Any]]:
    return [
        {
            "token": lp.token,
            "logprob": lp.logprob,
            "top_logprobs": [{"token": t, "logprob": v} for t, v, _ in lp.top],
        }  # fmt: skip
        for lp in lps
    ]


def stats(r: Result | Chunk, started: float, load_s: float) -> dict[str, Any]:
    """ollama's counts and durations (nanoseconds)."""
    total = time.perf_counter() - started
    gen = r.completion_tokens / r.generation_tps if r.generation_tps else 0.0
    prompt = (r.prompt_tokens - r.cached_tokens) / r.prompt_tps if r.prompt_tps else 0.0
    return {
        "total_duration": _ns(total),
        "load_duration": _ns(load_s),
        "prompt_eval_count": r.prompt_tokens,
        "prompt_eval_duration": _ns(prompt),
        "eval_count": r.completion_tokens,
        "eval_duration": _ns(gen),
    }


def chat_piece(model: str, c: Chunk | Result, done: bool) -> dict[str, Any]:
    msg: dict[str, Any] = {"role": "assistant", "content": c.text}
    if c.reasoning:
        msg["thinking"] = c.reasoning
    if c.tool_calls:
        msg["tool_calls"] = [
            {"function": {"name": t.name, "arguments": t.arguments}} for t in c.tool_calls
        ]
    out: dict[str, Any] = {"model": model, "created_at": now(), "message": msg, "done": done}
    if c.logprobs:
        out["logprobs"] = _logprobs(c.logprobs)
    return out


def generate_piece(model: str, c: Chunk | Result, done: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"model": model, "created_at": now(), "response": c.text, "done": done}
    if c.reasoning:
        out["thinking"] = c.reasoning
    if c.logprobs:
        out["logprobs"] = _logprobs(c.logprobs)
    return out


def final(piece: dict[str, Any], r: Result, started: float, load_s: float) -> dict[str, Any]:
    """The last line (or the whole answer): done, done_reason and the stats."""
    reason = "stop" if r.finish_reason in ("stop", "tool_calls") else r.finish_reason
    return {**piece, "done": True, "done_reason": reason, **stats(r, started, load_s)}


# ---------------------------------------------------------------- the adapters


def error_body(e: ApiError) -> dict[str, Any]:
    return {"error": str(e)}


class _Reply:
    def __init__(self, meta: Meta, piece: Any) -> None:
        self.meta, self.piece = meta, piece

    def head(self) -> list[Event]:
        return []

    def chunk(self, c: Chunk) -> list[Event]:
        if c.text or c.reasoning or c.tool_calls or c.logprobs:
            return [Event(self.piece(self.meta.model, c, False))]
        return []

    def end(self, r: Result) -> list[Event]:
        if r.error is not None:
            return [Event({"error": r.error})]
        last = self.piece(self.meta.model, Chunk(), True)
        return [Event(final(last, r, self.meta.t0, self.meta.load_s))]

    def whole(self, r: Result) -> dict[str, Any]:
        return final(self.piece(self.meta.model, r, True), r, self.meta.t0, self.meta.load_s)


class _Adapter:
    framing: Framing = "ndjson"

    def __init__(self, chat: bool) -> None:
        self.chat = chat
        self.piece = chat_piece if chat else generate_piece

    def parse(self, body: Mapping[str, Any]) -> Call:
        options = chat_options(body) if self.chat else generate_options(body)
        ka = keep_alive(body.get("keep_alive"))
        load_only = not (options.get("messages") or options.get("prompt"))
        if load_only:  # load or unload only: its options are checked all the same
            from ggrun.request import Request

            check = {**options, "prompt": None, "messages": [{"role": "user", "content": ""}]}
            try:
                Request.build(**check)
            except GgrunError as e:
                raise ApiError.of(e) from None
        opts = body.get("options") or {}  # checked by _options
        ignored = ",".join(k for k in IGNORED_OPTIONS if k in opts)
        if ignored:
            logger.warning("options ignored (they do not apply to a server): %s", ignored)
        return Call(options, body.get("model"), body.get("stream", True), ka, load_only,
                    context=opts.get("num_ctx"),
                    headers={IGNORED_HEADER: ignored} if ignored else {},
                    allow_repeated_calls=flag(body, REPEATS, False))  # fmt: skip

    def reply(self, call: Call, meta: Meta) -> _Reply:
        return _Reply(meta, self.piece)

    def error(self, e: ApiError) -> dict[str, Any]:
        return error_body(e)


CHAT = _Adapter(chat=True)
GENERATE = _Adapter(chat=False)


# ---------------------------------------------------------------- listings


def model_card(model_id: str, path: Any, size: int, info: Any) -> dict[str, Any]:
    """One model of ``/api/tags`` (``path``: its file or None; ``info``: its GGUF
    metadata or None)."""
    try:
        mtime = path.stat().st_mtime if path is not None else time.time()
    except OSError:
        mtime = time.time()
    return {
        "name": model_id,
        "model": model_id,
        "modified_at": datetime.fromtimestamp(mtime, timezone.utc).isoformat(),
        "size": size,
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


def show_request(body: Mapping[str, Any]) -> str:
    """The model an ``/api/show`` body names."""
    unknown = sorted(k for k in body if k not in ("model", "name", "verbose"))
    if unknown:
        raise _bad(f"unknown field(s): {', '.join(unknown)[:200]}")
    model_id = body.get("model") if body.get("model") is not None else body.get("name")
    if not isinstance(model_id, str) or not model_id:
        raise ApiError(400, "'model' must be the name of a model", param="model")
    if not isinstance(body.get("verbose", False), bool):
        raise ApiError(400, "'verbose' must be true or false", param="verbose")
    return model_id


def show(model_id: str, card: dict[str, Any], info: Any) -> dict[str, Any]:
    """``/api/show``'s answer: the template, details and capabilities."""
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
    return {
        "modelfile": f"FROM {model_id}", "parameters": "", "template": template,
        "details": card["details"], "model_info": model_info,
        "capabilities": caps, "modified_at": card["modified_at"],
    }  # fmt: skip


class _Embed:
    """``POST /api/embed`` (``input``: a string or a list; ``embeddings`` back) and the
    older ``/api/embeddings`` (``prompt``: one string; ``embedding`` back)."""

    def __init__(self, legacy: bool) -> None:
        self.legacy = legacy
        self.field = "prompt" if legacy else "input"

    def parse(self, body: Mapping[str, Any]) -> EmbedCall:
        extra = set() if self.legacy else {"truncate", "dimensions"}
        unknown = sorted(k for k in body if k not in {"model", self.field, "options",
                                                      "keep_alive", *extra})  # fmt: skip
        if unknown:
            raise _bad(f"unknown field(s): {', '.join(unknown)[:200]}")
        if body.get("dimensions") is not None:
            raise _bad("not supported by ggrun: dimensions (vectors have the model's size)")
        if not isinstance(body.get("truncate", True), bool):
            raise _bad("'truncate' must be true or false")
        if body.get("options") is not None and not isinstance(body["options"], dict):
            raise _bad("'options' must be an object")
        value = body.get(self.field)
        if self.legacy and not isinstance(value, str):
            raise _bad("'prompt' must be a string")
        cut = not self.legacy and body.get("truncate", True)  # ollama's default: cut
        return EmbedCall(texts(value, self.field), body.get("model"),
                         keep_alive(body.get("keep_alive")), wire={"truncate": cut})  # fmt: skip

    def render(self, call: EmbedCall, vectors: list[list[float]], n_tokens: int,
               meta: Meta) -> dict[str, Any]:  # fmt: skip
        if self.legacy:
            return {"embedding": vectors[0]}
        return {"model": meta.model, "embeddings": vectors,
                "total_duration": _ns(time.perf_counter() - meta.t0),
                "load_duration": _ns(meta.load_s), "prompt_eval_count": n_tokens}  # fmt: skip

    def error(self, e: ApiError) -> dict[str, Any]:
        return error_body(e)


EMBED = _Embed(legacy=False)
EMBEDDINGS = _Embed(legacy=True)
