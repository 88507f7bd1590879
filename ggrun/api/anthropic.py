"""The Anthropic Messages adapter: ``/v1/messages`` bodies to
:class:`~ggrun.request.Request` options, results and chunks back as Anthropic's message
and its typed server-sent events; ``/v1/messages/count_tokens`` bodies too. No HTTP here
(that is :mod:`ggrun.server`).

What maps to what:

- ``system`` (a string or text blocks) is the first message; ``messages`` hold ``user``
  and ``assistant`` turns (and ``system`` ones), each a string or content blocks.
  Consecutive turns of one role are one turn, as in Anthropic's API. A user's
  ``tool_result`` blocks become ``tool`` messages (before the user's own text), an
  assistant's ``tool_use`` blocks its tool calls; an assistant's ``thinking`` blocks are
  dropped (templates drop earlier thoughts too). Images and documents are refused, and
  so is a conversation that ends with the assistant (prefill).
- ``tools`` (``name``, ``description``, ``input_schema``) and ``tool_choice`` (``auto``,
  ``any``, ``tool``, ``none``; ``disable_parallel_tool_use``) become ggrun's tools;
  ``output_config.format`` (a JSON schema) its schema constraint.
- ``thinking`` ``{"type": "enabled", "budget_tokens": N}`` turns thinking on with a
  budget of N tokens (``adaptive``: on, no budget; ``disabled``: off). The thought comes
  back as a ``thinking`` block (its ``signature`` is empty: nobody signs it).
- ``max_tokens`` is required, as in Anthropic's API; ``stop_sequences``; the sampling
  fields the option table gives Anthropic's name (:func:`ggrun.sampling.wire_fields`).
- ``metadata``, ``service_tier`` and ``cache_control`` are checked and have no effect
  (ggrun reuses a cached prompt prefix by itself).

Every field is checked: a wrong type or value is a 400 in Anthropic's error shape naming
it, and a field ggrun does not implement is a 400 that names it.

Usage follows Anthropic's meaning: ``input_tokens`` are the prompt tokens that were not
read from the cache (``cache_read_input_tokens``); the two add up to what
``count_tokens`` gives for the same body. A stop string that ended the reply is
``stop_reason`` ``stop_sequence``, with the string in ``stop_sequence``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from typing import Any

from ggrun import sampling
from ggrun.api import REPEATS, Call, Event, Framing, Meta, bad, check_fields, flag
from ggrun.errors import ApiError, GgrunError
from ggrun.textstream import Chunk, Result
from ggrun.tools import ToolCall

SAMPLING = sampling.wire_fields("anthropic")  # wire name -> option name
COUNT_KEYS = frozenset(
    {"model", "messages", "system", "tools", "tool_choice", "thinking", "output_config",
     "cache_control"}
)  # fmt: skip
KEYS = COUNT_KEYS | {"max_tokens", "stop_sequences", "stream", "metadata", "service_tier",
                     REPEATS, *SAMPLING}  # fmt: skip
MAX_BLOCKS = 1000  # content blocks in one message
JOIN = "\n\n"  # between text blocks of one turn
BLOCK_KEYS = {
    "text": {"type", "text", "cache_control", "citations"},
    "tool_use": {"type", "id", "name", "input", "cache_control"},
    "tool_result": {"type", "tool_use_id", "content", "is_error", "cache_control"},
    "thinking": {"type", "thinking", "signature"},
    "redacted_thinking": {"type", "data"},
}
ROLE_BLOCKS = {  # the blocks each role may send
    "user": ("text", "tool_result"),
    "assistant": ("text", "tool_use", "thinking", "redacted_thinking"),
    "system": ("text",),
}
TOOL_KEYS = {"name", "description", "input_schema", "cache_control", "type", "strict"}
CHOICE_KEYS = {"type", "name", "disable_parallel_tool_use"}
THINKING_KEYS = {
    "enabled": {"type", "budget_tokens", "display"},
    "adaptive": {"type", "display"},
    "disabled": {"type"},
}
STOP_REASONS = {"length": "max_tokens", "tool_calls": "tool_use"}  # else "end_turn"
ERROR_TYPES = {  # HTTP status -> Anthropic's error type (else invalid_request_error or
    # api_error, by class)
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    504: "timeout_error",
    529: "overloaded_error",
}


# ---------------------------------------------------------------- requests


def _string(v: Any, where: str, param: str) -> str:
    if not isinstance(v, str):
        raise bad(f"{where} must be a string", param)
    return v


def _unknown(d: Mapping[str, Any], allowed: set[str], where: str, param: str) -> None:
    extra = sorted(str(k) for k in d if k not in allowed)
    if extra:
        raise bad(f"{where} has unknown field(s): {', '.join(extra)[:200]}", param)


def _cache_control(v: Any, where: str, param: str) -> None:
    """A caching hint (``{"type": "ephemeral", "ttl": "5m"}``): checked, no effect."""
    if v is None:
        return
    if (
        not isinstance(v, dict)
        or v.get("type") != "ephemeral"
        or set(v) - {"type", "ttl"}
        or v.get("ttl") not in (None, "5m", "1h")
    ):
        raise bad(f'{where}.cache_control must be {{"type": "ephemeral", "ttl": "5m"|"1h"}}',
                  param)  # fmt: skip


def _blocks(content: Any, where: str, allowed: tuple[str, ...], param: str) -> list[dict[str, Any]]:
    """A message's content as checked blocks (a string is one text block)."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list) or len(content) > MAX_BLOCKS:
        raise bad(f"{where} must be a string or a list of up to {MAX_BLOCKS} content blocks",
                  param)  # fmt: skip
    out = []
    for j, b in enumerate(content):
        at = f"{where}[{j}]"
        if not isinstance(b, dict) or not isinstance(b.get("type"), str):
            raise bad(f"{at} must be a content block (an object with a type)", param)
        kind = b["type"]
        if kind not in allowed:
            raise bad(f"{at}: {kind[:40]!r} blocks are not supported by ggrun here (it takes "
                      f"{', '.join(allowed)})", param)  # fmt: skip
        _unknown(b, BLOCK_KEYS[kind], at, param)
        _cache_control(b.get("cache_control"), at, param)
        out.append(_block(b, kind, at, param))
    return out


def _block(b: Mapping[str, Any], kind: str, at: str, param: str) -> dict[str, Any]:
    if kind == "text":
        if b.get("citations"):
            raise bad(f"{at}.citations are not supported by ggrun", param)
        return {"type": kind, "text": _string(b.get("text"), f"{at}.text", param)}
    if kind == "tool_use":
        if not isinstance(b.get("input"), dict):
            raise bad(f"{at}.input must be an object", param)
        name = _string(b.get("name"), f"{at}.name", param)
        return {"type": kind, "id": _string(b.get("id"), f"{at}.id", param), "name": name,
                "input": b["input"]}  # fmt: skip
    if kind == "tool_result":
        body = b.get("content")
        text = "" if body is None else _text(_blocks(body, f"{at}.content", ("text",), param))
        is_error = b.get("is_error")
        if is_error is not None and not isinstance(is_error, bool):
            raise bad(f"{at}.is_error must be true or false", param)
        return {"type": kind, "tool_use_id": _string(b.get("tool_use_id"), f"{at}.tool_use_id",
                param), "text": f"Error: {text}" if is_error else text}  # fmt: skip
    key = "data" if kind == "redacted_thinking" else "thinking"
    _string(b.get(key), f"{at}.{key}", param)
    if kind == "thinking" and not isinstance(b.get("signature", ""), str):
        raise bad(f"{at}.signature must be a string", param)
    return {"type": kind}  # dropped


def _text(blocks: list[dict[str, Any]]) -> str:
    return JOIN.join(b["text"] for b in blocks if b["type"] == "text")


def _system(v: Any) -> list[dict[str, Any]]:
    if v is None:
        return []
    text = _text(_blocks(v, "system", ("text",), "system"))
    return [{"role": "system", "content": text}] if text else []


def _messages(v: Any) -> list[dict[str, Any]]:
    """Anthropic's turns as ggrun's messages (see the module docstring)."""
    if not isinstance(v, list) or not v:
        raise bad("'messages' must be a non-empty list", "messages")
    turns: list[tuple[str, list[dict[str, Any]]]] = []
    for i, m in enumerate(v):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise bad(f"{where} must be an object with role and content", "messages")
        _unknown(m, {"role", "content"}, where, "messages")
        role = m.get("role")
        if role not in ROLE_BLOCKS:
            raise bad(f"{where}.role must be user, assistant or system", "messages")
        blocks = _blocks(m.get("content"), f"{where}.content", ROLE_BLOCKS[role], "messages")
        if turns and turns[-1][0] == role:
            turns[-1][1].extend(blocks)
        else:
            turns.append((role, blocks))
    if turns[-1][0] == "assistant":
        raise bad("the last message is the assistant's: ggrun does not continue a reply "
                  "(prefill is not supported)", "messages")  # fmt: skip
    out: list[dict[str, Any]] = []
    for role, blocks in turns:
        out += _turn(role, blocks)
    return out


def _turn(role: str, blocks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    text = _text(blocks)
    if role == "assistant":
        calls = [{"id": b["id"], "type": "function",
                  "function": {"name": b["name"], "arguments": b["input"]}}
                 for b in blocks if b["type"] == "tool_use"]  # fmt: skip
        return [{"role": role, "content": text, **({"tool_calls": calls} if calls else {})}]
    results = [{"role": "tool", "tool_call_id": b["tool_use_id"], "content": b["text"]}
               for b in blocks if b["type"] == "tool_result"]  # fmt: skip
    has_text = any(b["type"] == "text" for b in blocks)
    return results + ([{"role": role, "content": text}] if has_text or not results else [])


def _tool(t: Any, i: int) -> dict[str, Any]:
    where = f"tools[{i}]"
    if not isinstance(t, dict):
        raise bad(f"{where} must be a tool definition object", "tools")
    if t.get("type") not in (None, "custom"):
        raise bad(f"{where}: {str(t['type'])[:60]!r} tools are not supported by ggrun (only "
                  "custom tools: name, description, input_schema)", "tools")  # fmt: skip
    _unknown(t, TOOL_KEYS, where, "tools")
    _cache_control(t.get("cache_control"), where, "tools")
    schema = t.get("input_schema")
    if not isinstance(schema, dict) or schema.get("type") != "object":
        raise bad(f'{where}.input_schema must be a JSON schema of {{"type": "object"}}', "tools")
    desc = t.get("description")
    if desc is not None:
        _string(desc, f"{where}.description", "tools")
    if t.get("strict") is not None and not isinstance(t["strict"], bool):
        raise bad(f"{where}.strict must be true or false", "tools")  # calls always match
    fn = {"name": _string(t.get("name"), f"{where}.name", "tools"), "description": desc or "",
          "parameters": schema}  # fmt: skip
    return {"type": "function", "function": fn}


def _tool_choice(v: Any) -> dict[str, Any]:
    kinds = {"auto": "auto", "any": "required", "none": "none"}
    if not isinstance(v, dict) or v.get("type") not in (*kinds, "tool"):
        raise bad("tool_choice must be an object of type auto, any, tool or none", "tool_choice")
    _unknown(v, {"type"} if v["type"] == "none" else CHOICE_KEYS, "tool_choice", "tool_choice")
    if v["type"] == "tool":
        name = _string(v.get("name"), "tool_choice.name", "tool_choice")
        out: dict[str, Any] = {"tool_choice": {"type": "function", "function": {"name": name}}}
    else:
        if "name" in v:
            raise bad("tool_choice.name goes with type tool", "tool_choice")
        out = {"tool_choice": kinds[v["type"]]}
    serial = v.get("disable_parallel_tool_use")
    if serial is not None:
        if not isinstance(serial, bool):
            raise bad("tool_choice.disable_parallel_tool_use must be true or false", "tool_choice")
        out["parallel_tool_calls"] = not serial
    return out


def _tools(body: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise bad("'tools' must be a list of tool definitions", "tools")
        out["tools"] = [_tool(t, i) for i, t in enumerate(tools)]
    if body.get("tool_choice") is not None:
        out |= _tool_choice(body["tool_choice"])
    return out


def _thinking(v: Any, max_tokens: int | None) -> tuple[dict[str, Any], bool]:
    """``thinking`` as request options, and whether the thought is to be left out of the
    reply (``display: "omitted"``)."""
    if v is None:
        return {}, False
    if not isinstance(v, dict) or v.get("type") not in THINKING_KEYS:
        raise bad("thinking must be an object of type enabled, adaptive or disabled", "thinking")
    _unknown(v, THINKING_KEYS[v["type"]], "thinking", "thinking")
    display = v.get("display")
    if display not in (None, "summarized", "omitted"):
        raise bad("thinking.display must be summarized or omitted", "thinking")
    if v["type"] == "disabled":
        return {"think": False}, False
    if v["type"] == "adaptive":
        return {"think": True}, display == "omitted"
    budget = v.get("budget_tokens")
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 0:
        raise bad("thinking.budget_tokens must be a non-negative integer", "thinking")
    if max_tokens is not None and budget >= max_tokens:
        raise bad("thinking.budget_tokens must be less than max_tokens", "thinking")
    return {"think": True, "think_budget": budget}, display == "omitted"


def _output(v: Any) -> dict[str, Any]:
    """``output_config``: a JSON schema the answer follows (``format``)."""
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise bad("output_config must be an object", "output_config")
    _unknown(v, {"format", "effort"}, "output_config", "output_config")
    if v.get("effort") is not None:
        raise bad("output_config.effort is not supported by ggrun", "output_config")
    fmt = v.get("format")
    if fmt is None:
        return {}
    if (
        not isinstance(fmt, dict)
        or fmt.get("type") != "json_schema"
        or set(fmt) - {"type", "schema"}
        or not isinstance(fmt.get("schema"), dict)
    ):
        raise bad('output_config.format must be {"type": "json_schema", "schema": {...}}',
                  "output_config")  # fmt: skip
    return {"schema": fmt["schema"]}


def _max_tokens(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise bad("'max_tokens' is required: a positive integer", "max_tokens")
    return v


def _stops(v: Any) -> list[str] | None:
    if v is None:
        return None
    if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
        raise bad("'stop_sequences' must be a list of strings", "stop_sequences")
    return v


def _no_effect(body: Mapping[str, Any]) -> None:
    """``metadata`` and ``service_tier``: checked, with nothing for ggrun to do."""
    meta = body.get("metadata")
    if meta is not None and (
        not isinstance(meta, dict)
        or set(meta) - {"user_id"}
        or not isinstance(meta.get("user_id", ""), (str, type(None)))
    ):
        raise bad("metadata may only hold user_id (a string)", "metadata")
    if body.get("service_tier") not in (None, "auto", "standard_only"):
        raise bad("service_tier must be auto or standard_only", "service_tier")


def _parse(body: Mapping[str, Any], counting: bool) -> tuple[dict[str, Any], bool]:
    """A body's request options, and whether the thought is omitted from the reply."""
    check_fields(body, COUNT_KEYS if counting else KEYS)
    _cache_control(body.get("cache_control"), "the body", "cache_control")
    options: dict[str, Any] = {}
    if not counting:
        _no_effect(body)
        options["max_tokens"] = _max_tokens(body.get("max_tokens"))
        options["stop"] = _stops(body.get("stop_sequences"))
        try:
            options |= sampling.from_wire("anthropic", body)
        except GgrunError as e:
            raise ApiError.of(e) from None
    think, omit = _thinking(body.get("thinking"), options.get("max_tokens"))
    options |= {
        "messages": _system(body.get("system")) + _messages(body.get("messages")),
        **think,
        **_tools(body),
        **_output(body.get("output_config")),
    }
    return options, omit


def count_call(body: Mapping[str, Any]) -> Call:
    """A ``/v1/messages/count_tokens`` body (a message's, without ``max_tokens``,
    ``stream`` or sampling) as a call: its options make the prompt to count."""
    options, _ = _parse(body, counting=True)
    return Call(options, body.get("model"))


def count_body(n: int) -> dict[str, Any]:
    return {"input_tokens": n}


# ---------------------------------------------------------------- responses


def error_body(e: ApiError) -> dict[str, Any]:
    """Anthropic's error shape; the type follows the HTTP status."""
    default = "api_error" if e.status >= 500 else "invalid_request_error"
    kind = ERROR_TYPES.get(e.status, default)
    return {"type": "error", "error": {"type": kind, "message": str(e)}}


def usage(r: Result | Chunk) -> dict[str, Any]:
    return {
        "input_tokens": r.prompt_tokens - r.cached_tokens,
        "output_tokens": r.completion_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": r.cached_tokens,
    }


def stop_reason(r: Result) -> str:
    if r.stop_sequence is not None:
        return "stop_sequence"
    return STOP_REASONS.get(r.finish_reason, "end_turn")


def tool_use(c: ToolCall) -> dict[str, Any]:
    """A call as a ``tool_use`` block (its id is ggrun's, with Anthropic's prefix)."""
    return {"type": "tool_use", "id": "toolu_" + c.id.removeprefix("call_"), "name": c.name,
            "input": c.arguments}  # fmt: skip


def _event(data: dict[str, Any]) -> Event:
    return Event(data, data["type"])  # the SSE event's name is its type


class _Reply:
    """One message: its content blocks are opened, filled and closed in order as the
    chunks come (a thought, then the answer's text, then each tool call)."""

    def __init__(self, meta: Meta, omit_thinking: bool) -> None:
        self.meta, self.omit = meta, omit_thinking
        self.id = "msg_" + uuid.uuid4().hex[:24]
        self.started = False
        self.open: str | None = None  # the type of the block being filled
        self.index = -1  # its index

    def _message(self, content: list[dict[str, Any]], r: Result | Chunk,
                 reason: str | None) -> dict[str, Any]:  # fmt: skip
        return {"id": self.id, "type": "message", "role": "assistant", "model": self.meta.model,
                "content": content, "stop_reason": reason, "stop_sequence": r.stop_sequence,
                "usage": usage(r)}  # fmt: skip

    def _start(self, first: Chunk | Result) -> list[Event]:
        """``message_start``, sent with the first chunk: it knows the prompt's tokens."""
        if self.started:
            return []
        self.started = True
        message = {**self._message([], first, None), "stop_sequence": None}
        message["usage"]["output_tokens"] = 0
        return [_event({"type": "message_start", "message": message})]

    def _close(self) -> list[Event]:
        out = []
        if self.open == "thinking":
            delta = {"type": "signature_delta", "signature": ""}
            out.append(_event({"type": "content_block_delta", "index": self.index,
                               "delta": delta}))  # fmt: skip
        if self.open is not None:
            out.append(_event({"type": "content_block_stop", "index": self.index}))
        self.open = None
        return out

    def _block(self, block: dict[str, Any]) -> list[Event]:
        out = self._close()
        self.index += 1
        self.open = block["type"]
        return out + [_event({"type": "content_block_start", "index": self.index,
                              "content_block": block})]  # fmt: skip

    def _delta(self, delta: dict[str, Any]) -> Event:
        return _event({"type": "content_block_delta", "index": self.index, "delta": delta})

    def head(self) -> list[Event]:
        return []

    def chunk(self, c: Chunk) -> list[Event]:
        out = self._start(c)
        if c.reasoning:
            if self.open != "thinking":
                out += self._block({"type": "thinking", "thinking": "", "signature": ""})
            if not self.omit:
                out.append(self._delta({"type": "thinking_delta", "thinking": c.reasoning}))
        if c.text:
            if self.open != "text":
                out += self._block({"type": "text", "text": ""})
            out.append(self._delta({"type": "text_delta", "text": c.text}))
        for call in c.tool_calls:
            block = tool_use(call)
            args = json.dumps(block["input"], ensure_ascii=False)
            out += self._block({**block, "input": {}})
            out.append(self._delta({"type": "input_json_delta", "partial_json": args}))
            out += self._close()
        return out

    def end(self, r: Result) -> list[Event]:
        if r.error is not None:
            status = 400 if r.finish_reason == "error" else 422
            return [_event(error_body(ApiError(status, r.error)))]
        delta = {"stop_reason": stop_reason(r), "stop_sequence": r.stop_sequence}
        return [
            *self._start(r),
            *self._close(),
            _event({"type": "message_delta", "delta": delta, "usage": usage(r)}),
            _event({"type": "message_stop"}),
        ]

    def whole(self, r: Result) -> dict[str, Any]:
        content: list[dict[str, Any]] = []
        if r.reasoning:
            thought = "" if self.omit else r.reasoning
            content.append({"type": "thinking", "thinking": thought, "signature": ""})
        if r.text:
            content.append({"type": "text", "text": r.text})
        content += [tool_use(c) for c in r.tool_calls]
        return self._message(content, r, stop_reason(r))


class _Adapter:
    framing: Framing = "sse"

    def parse(self, body: Mapping[str, Any]) -> Call:
        options, omit = _parse(body, counting=False)
        stream = flag(body, "stream", False)
        return Call(options, body.get("model"), stream, wire={"omit_thinking": omit},
                    allow_repeated_calls=flag(body, REPEATS, False))  # fmt: skip

    def reply(self, call: Call, meta: Meta) -> _Reply:
        return _Reply(meta, bool(call.wire.get("omit_thinking")))

    def error(self, e: ApiError) -> dict[str, Any]:
        return error_body(e)


MESSAGES = _Adapter()
