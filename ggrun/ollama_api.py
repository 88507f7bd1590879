"""The ollama adapter: ``/api/chat`` and ``/api/generate`` bodies to request options, and
results back in ollama's shape (NDJSON lines when streaming). No HTTP here.

The subset that clients use (the ``ollama`` Python package, editor plugins, Open WebUI):
``model``, ``messages`` / ``prompt`` and ``system``, ``stream`` (default true), ``format``
(``"json"`` or a JSON schema), ``think``, ``options`` (temperature, top_k, top_p,
min_p, num_predict, num_ctx, seed, stop, repeat_penalty, repeat_last_n,
presence_penalty, frequency_penalty), ``keep_alive``, ``tools``, ``logprobs`` and
``top_logprobs``. Anything else is a 400 that names it, and so is a field of the wrong
type or out of range: every field is checked here, or by the request it becomes, before
a model is loaded. ``keep_alive`` is clamped to :data:`MAX_KEEP_ALIVE`. As in ollama, a
chat without messages or a generate without a prompt only loads the model (or, with
``keep_alive`` 0, unloads it).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from ggrun.openai_api import ApiError
from ggrun.textstream import Chunk, Result, TokenLogprob

VERSION = "0.12.0"  # the ollama API version these endpoints follow
OPTIONS = {
    "temperature": "temperature",
    "top_k": "top_k",
    "top_p": "top_p",
    "min_p": "min_p",
    "seed": "seed",
    "repeat_penalty": "repeat_penalty",
    "repeat_last_n": "repeat_last_n",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
}
INT_OPTIONS = {"top_k", "seed", "repeat_last_n"}  # the others are numbers (checked by the request)
COMMON = {"model", "stream", "format", "options", "keep_alive", "think", "logprobs", "top_logprobs"}
CHAT_KEYS = COMMON | {"messages", "tools"}
GENERATE_KEYS = COMMON | {"prompt", "system", "raw", "images", "suffix", "template", "context"}
MAX_KEEP_ALIVE = 365 * 86400.0  # seconds: a longer keep_alive is this (negative: forever)
MAX_TOKENS = 1 << 30  # num_predict and num_ctx
DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "\u00b5s": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|\u00b5s|ms|s|m|h)")


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
    unknown = sorted(
        k for k in opts if k not in OPTIONS and k not in ("num_predict", "num_ctx", "stop")
    )
    if unknown:
        raise _bad(f"options not supported by ggrun: {', '.join(unknown)[:200]}")
    out = {OPTIONS[k]: v for k, v in opts.items() if k in OPTIONS and v is not None}
    for k, v in list(out.items()):
        if k not in INT_OPTIONS and isinstance(v, int) and not isinstance(v, bool):
            try:
                out[k] = float(v)
            except OverflowError:
                raise _bad(f"options.{k} must be a finite number") from None
    n = opts.get("num_predict")
    if n is not None and _int("options.num_predict", n, -2, MAX_TOKENS) >= 0:
        out["max_tokens"] = n  # -1 (until the end) and -2 (fill the context): the room left
    if opts.get("num_ctx") is not None:  # the server's --ctx holds: checked, not used
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
