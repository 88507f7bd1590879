"""The OpenAI Responses adapter: ``POST /v1/responses`` bodies to
:class:`~ggrun.request.Request` options, and results back as a Response object or, when
streaming, as its typed server-sent events (``response.created``,
``response.output_item.added``, ``response.output_text.delta``, ...,
``response.completed``; no ``[DONE]``). No HTTP here (that is :mod:`ggrun.server`).

The request: ``input`` as a string or a list of items (messages with text parts, earlier
``function_call`` items and their ``function_call_output``; ``reasoning`` items are
accepted and dropped, as the chat template renders a model's thoughts itself);
``instructions`` (the first system message); ``max_output_tokens``; the sampling fields
of the option table (:func:`ggrun.sampling.wire_fields`); function ``tools`` in the
Responses' flat shape, ``tool_choice`` (also ``allowed_tools``) and
``parallel_tool_calls``; ``text.format`` (``text``, ``json_object``, or ``json_schema``,
which is always enforced, strict or not); ``reasoning.effort`` (Qwen3's switch:
``none`` and ``minimal`` turn thinking off, any other effort turns it on, absent or null
leaves the model's default; no thinking budget is derived from it);
``include: ["message.output_text.logprobs"]`` and ``top_logprobs``. ``metadata``,
``user``, ``safety_identifier``, ``prompt_cache_key``, ``service_tier`` and a few hints
are checked and echoed, with no effect on a local run.

ggrun keeps no responses: ``store: true``, a ``previous_response_id``, a
``conversation``, ``background: true`` and ``item_reference`` items are 400s that say
so (the openai SDK and openai-agents leave ``store`` unset; the reply says false). Any
other field ggrun does not know, or of the wrong type, is a 400 naming it, in OpenAI's
error shape.

The output: a ``reasoning`` item when the model thought (its text as one
``reasoning_text`` part, no summary), one ``message`` item with one ``output_text`` part
(left out when the reply is only tool calls), and a ``function_call`` item per call.
``finish_reason`` "length" makes the response ``incomplete`` (``max_output_tokens``). An
error in a stream is an ``error`` event.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from ggrun import sampling
from ggrun.api import REPEATS, Call, Event, Framing, Meta, bad, check_fields, flag
from ggrun.api.openai import error_body
from ggrun.errors import ApiError, GgrunError
from ggrun.textstream import Chunk, Result, TokenLogprob
from ggrun.tools import ToolCall

SAMPLING = sampling.wire_fields("responses")  # wire name -> option name
KEYS = frozenset({
    "model", "input", "instructions", "max_output_tokens", "stream", "stream_options",
    "tools", "tool_choice", "parallel_tool_calls", "text", "reasoning", "include",
    "top_logprobs", "metadata", "user", "safety_identifier", "prompt_cache_key",
    "prompt_cache_retention", "service_tier", "truncation", "max_tool_calls",
    "store", "previous_response_id", "conversation", "background", "prompt", REPEATS,
    *SAMPLING,
})  # fmt: skip
STATELESS = "ggrun keeps no responses"
EFFORTS = {"none": False, "minimal": False, "low": True, "medium": True, "high": True,
           "xhigh": True, "max": True}  # fmt: skip
INCLUDES = {
    "message.output_text.logprobs",  # log probabilities of the answer's tokens
    "reasoning.encrypted_content",  # ggrun's reasoning comes in clear text: nothing to add
}
SERVICE_TIERS = ("auto", "default", "flex", "scale", "priority")
NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
MAX_ITEMS = 10_000
MAX_PARTS = 1000
MAX_METADATA = 16
TEXT_PARTS = ("input_text", "output_text")

# the fields of each input item (as the openai SDK's types have them)
MESSAGE_KEYS = {"type", "role", "content", "id", "status", "phase"}
PART_KEYS = {"type", "text", "annotations", "logprobs", "prompt_cache_breakpoint"}
CALL_KEYS = {"type", "call_id", "name", "arguments", "id", "status", "caller", "namespace"}
OUTPUT_KEYS = {"type", "call_id", "output", "id", "status", "caller", "name", "namespace"}
REASONING_KEYS = {"type", "id", "summary", "content", "encrypted_content", "status"}
TOOL_KEYS = {"type", "name", "description", "parameters", "strict"}


# ---------------------------------------------------------------- field checks


def _str(body: Mapping[str, Any], name: str, limit: int = 1 << 20) -> str | None:
    v = body.get(name)
    if v is not None and (not isinstance(v, str) or len(v) > limit):
        raise bad(f"'{name}' must be a string of at most {limit} characters", name)
    return v


def _int(body: Mapping[str, Any], name: str, lo: int, hi: int) -> int | None:
    v = body.get(name)
    if v is not None and (isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi):
        raise bad(f"'{name}' must be an integer from {lo} to {hi}", name)
    return v


def _one_of(body: Mapping[str, Any], name: str, allowed: tuple[str, ...]) -> str | None:
    v = body.get(name)
    if v is not None and v not in allowed:
        raise bad(f"'{name}' must be one of {', '.join(allowed)} (or null)", name)
    return v


def _obj(v: Any, where: str, allowed: set[str], param: str) -> Mapping[str, Any]:
    if not isinstance(v, dict):
        raise bad(f"{where} must be an object", param)
    unknown = sorted(set(v) - allowed)
    if unknown:
        raise bad(f"{where}: unknown field(s): {', '.join(unknown)[:200]}", param)
    return v


def _stateless(body: Mapping[str, Any]) -> None:
    """What needs a store of responses: refused with a 400 that says so."""
    if flag(body, "store", False):
        raise bad(f"{STATELESS}: 'store' must be false or left out", "store")
    if _str(body, "previous_response_id", 200) is not None:
        raise bad(f"{STATELESS}: previous_response_id cannot be used; send the whole "
                  "conversation as input", "previous_response_id")  # fmt: skip
    if body.get("conversation") is not None:
        raise bad(f"{STATELESS}: conversation cannot be used; send the whole conversation "
                  "as input", "conversation")  # fmt: skip
    if flag(body, "background", False):
        raise bad(f"{STATELESS}: background responses are not supported", "background")
    if body.get("prompt") is not None:
        raise bad("saved prompts are not supported by ggrun: send instructions and input",
                  "prompt")  # fmt: skip
    if _one_of(body, "truncation", ("auto", "disabled")) == "auto":
        raise bad("truncation 'auto' is not supported: ggrun never drops input "
                  "(an input too long for the context is a 400)", "truncation")  # fmt: skip


def _hints(body: Mapping[str, Any]) -> dict[str, Any]:
    """Fields checked and echoed that change nothing in a local run."""
    for name in ("user", "safety_identifier", "prompt_cache_key"):
        _str(body, name, 512)
    _one_of(body, "service_tier", SERVICE_TIERS)
    _one_of(body, "prompt_cache_retention", ("in_memory", "24h"))
    _int(body, "max_tool_calls", 1, 1 << 20)  # built-in tools only: ggrun has none
    so = body.get("stream_options")
    if so is not None:
        _obj(so, "stream_options", {"include_obfuscation"}, "stream_options")
        flag(so, "include_obfuscation", False)
    meta = body.get("metadata")
    if meta is not None and (
        not isinstance(meta, dict)
        or len(meta) > MAX_METADATA
        or not all(isinstance(k, str) and len(k) <= 64 for k in meta)
        or not all(isinstance(v, str) and len(v) <= 512 for v in meta.values())
    ):
        raise bad(f"'metadata' must map up to {MAX_METADATA} keys (at most 64 characters) "
                  "to strings (at most 512)", "metadata")  # fmt: skip
    return {
        "metadata": meta or {},
        "user": body.get("user"),
        "safety_identifier": body.get("safety_identifier"),
        "prompt_cache_key": body.get("prompt_cache_key"),
        "service_tier": "default",
        "max_tool_calls": body.get("max_tool_calls"),
        "store": False,
        "background": False,
        "previous_response_id": None,
        "truncation": "disabled",
    }


def _sampling(body: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for wire, name in SAMPLING.items():
        if body.get(wire) is not None:
            try:
                out[name] = sampling.check(name, body[wire], wire)
            except GgrunError as e:
                raise bad(str(e), wire) from None
    return out


# ---------------------------------------------------------------- input items


def _text_of(content: Any, where: str) -> str:
    """A message's content (or a call's output): a string or a list of text parts."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list) or len(content) > MAX_PARTS:
        raise bad(f"{where} must be a string or a list of up to {MAX_PARTS} text parts",
                  "input")  # fmt: skip
    out = []
    for j, p in enumerate(content):
        at = f"{where}[{j}]"
        kind = p.get("type") if isinstance(p, dict) else None
        if kind == "refusal":
            p = _obj(p, at, {"type", "refusal"}, "input")
            text = p.get("refusal")
        elif kind in TEXT_PARTS:
            text = _obj(p, at, PART_KEYS, "input").get("text")
        else:
            raise bad(f"{at}: only text parts (input_text, output_text) are supported, "
                      f"got {str(kind)[:40]!r}", "input")  # fmt: skip
        if not isinstance(text, str):
            raise bad(f"{at}: its text must be a string", "input")
        out.append(text)
    return "".join(out)


def _message(item: Mapping[str, Any], where: str, out: list[dict[str, Any]]) -> None:
    _obj(item, where, MESSAGE_KEYS, "input")
    role = item.get("role")
    if role not in ("user", "system", "developer", "assistant"):
        raise bad(f"{where}.role must be user, system, developer or assistant", "input")
    text = _text_of(item.get("content"), f"{where}.content")
    out.append({"role": "system" if role == "developer" else role, "content": text})


def _function_call(item: Mapping[str, Any], where: str, out: list[dict[str, Any]]) -> None:
    """An earlier call: joins the assistant message just before it, or starts one."""
    _obj(item, where, CALL_KEYS, "input")
    for key in ("call_id", "name", "arguments"):
        if not isinstance(item.get(key), str):
            raise bad(f"{where}.{key} must be a string", "input")
    call = {"id": item["call_id"][:200], "type": "function",
            "function": {"name": item["name"], "arguments": item["arguments"]}}  # fmt: skip
    if out and out[-1]["role"] == "assistant":
        out[-1].setdefault("tool_calls", []).append(call)
    else:
        out.append({"role": "assistant", "content": "", "tool_calls": [call]})


def _function_call_output(item: Mapping[str, Any], where: str,
                          out: list[dict[str, Any]]) -> None:  # fmt: skip
    _obj(item, where, OUTPUT_KEYS, "input")
    if not isinstance(item.get("call_id"), str):
        raise bad(f"{where}.call_id must be a string", "input")
    output = _text_of(item.get("output"), f"{where}.output")
    out.append({"role": "tool", "content": output, "tool_call_id": item["call_id"][:200]})


def _reasoning_item(item: Mapping[str, Any], where: str, out: list[dict[str, Any]]) -> None:
    """An earlier thought: checked and dropped (the template re-renders thoughts)."""
    _obj(item, where, REASONING_KEYS, "input")
    for key in ("summary", "content"):
        if item.get(key) is not None and not isinstance(item[key], list):
            raise bad(f"{where}.{key} must be a list", "input")


def _item_reference(item: Mapping[str, Any], where: str, out: list[dict[str, Any]]) -> None:
    raise bad(f"{STATELESS}: {where} is an item_reference; send the item itself", "input")


ITEMS: dict[str, Callable[[Mapping[str, Any], str, list[dict[str, Any]]], None]] = {
    "message": _message,
    "function_call": _function_call,
    "function_call_output": _function_call_output,
    "reasoning": _reasoning_item,
    "item_reference": _item_reference,
}


def _input(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``instructions`` and ``input`` as chat messages."""
    out: list[dict[str, Any]] = []
    instructions = _str(body, "instructions")
    if instructions:
        out.append({"role": "system", "content": instructions})
    v = body.get("input")
    if isinstance(v, str):
        return [*out, {"role": "user", "content": v}]
    if not isinstance(v, list) or not v or len(v) > MAX_ITEMS:
        raise bad(f"'input' must be a string or a list of 1 to {MAX_ITEMS} items", "input")
    for i, item in enumerate(v):
        where = f"input[{i}]"
        kind = item.get("type", "message") if isinstance(item, dict) else None
        if kind not in ITEMS:
            raise bad(f"{where}: items of type {str(kind)[:40]!r} are not supported (ggrun "
                      f"takes {', '.join(ITEMS)})", "input")  # fmt: skip
        ITEMS[kind](item, where, out)
    return out


# ---------------------------------------------------------------- tools, text, reasoning


def _tools(body: Mapping[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Responses' flat function tools -> (chat-shaped tools for the request, the echo)."""
    v = body.get("tools")
    if v is None:
        return [], []
    if not isinstance(v, list):
        raise bad("'tools' must be a list of function tools", "tools")
    chat, echo = [], []
    for i, t in enumerate(v):
        where = f"tools[{i}]"
        if isinstance(t, dict) and t.get("type") != "function":
            raise bad(f"{where}: only function tools are supported (ggrun has no built-in "
                      f"tools), got {str(t.get('type'))[:40]!r}", "tools")  # fmt: skip
        _obj(t, where, TOOL_KEYS, "tools")
        if not isinstance(t.get("name"), str) or not NAME.fullmatch(t["name"]):
            raise bad(f"{where}.name must be 1-64 letters, digits, _ or -", "tools")
        for key, kind in (("description", str), ("parameters", dict), ("strict", bool)):
            if t.get(key) is not None and not isinstance(t[key], kind):
                raise bad(f"{where}.{key} must be a {kind.__name__} (or null)", "tools")
        fn = {k: t[k] for k in ("name", "description", "parameters") if t.get(k) is not None}
        chat.append({"type": "function", "function": fn})
        echo.append({"type": "function", "name": t["name"], "description": t.get("description"),
                     "parameters": t.get("parameters"), "strict": t.get("strict")})  # fmt: skip
    return chat, echo


def _tool_choice(body: Mapping[str, Any], tools: list[dict[str, Any]]) -> tuple[Any, Any]:
    """``tool_choice`` -> (the request's, the echo); ``allowed_tools`` narrows ``tools``."""
    v = body.get("tool_choice")
    if v is None:
        return None, "auto"
    if v in ("auto", "none", "required"):
        return v, v
    kind = v.get("type") if isinstance(v, dict) else None
    if kind == "function":
        _obj(v, "tool_choice", {"type", "name"}, "tool_choice")
        if not isinstance(v.get("name"), str):
            raise bad("tool_choice.name must be a string", "tool_choice")
        return {"type": "function", "function": {"name": v["name"]}}, dict(v)
    if kind == "allowed_tools":
        _obj(v, "tool_choice", {"type", "mode", "tools"}, "tool_choice")
        allowed = v.get("tools")
        if v.get("mode") not in ("auto", "required") or not isinstance(allowed, list):
            raise bad("tool_choice allowed_tools needs mode auto or required and a list of "
                      "tools", "tool_choice")  # fmt: skip
        names = set()
        for a in allowed:
            if not isinstance(a, dict) or a.get("type") != "function" or set(a) - {"type", "name"}:
                raise bad("tool_choice allowed_tools holds only {type: function, name}",
                          "tool_choice")  # fmt: skip
            names.add(a.get("name"))
        tools[:] = [t for t in tools if t["function"]["name"] in names]
        return v["mode"], dict(v)
    raise bad('tool_choice must be "auto", "none", "required", {"type": "function", '
              '"name": ...} or allowed_tools', "tool_choice")  # fmt: skip


def _text(body: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``text`` -> (the request's structured-output options, the echo)."""
    v = body.get("text")
    if v is None:
        return {}, {"format": {"type": "text"}, "verbosity": "medium"}
    _obj(v, "text", {"format", "verbosity"}, "text")
    verbosity = _one_of(v, "verbosity", ("low", "medium", "high")) or "medium"
    fmt = v.get("format")
    echo = {"format": fmt or {"type": "text"}, "verbosity": verbosity}
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if fmt is None or kind == "text":
        _obj(fmt or {}, "text.format", {"type"}, "text")
        return {}, echo
    if kind == "json_object":
        _obj(fmt, "text.format", {"type"}, "text")
        return {"json": True}, echo
    if kind == "json_schema":
        _obj(fmt, "text.format", {"type", "name", "schema", "description", "strict"}, "text")
        if not isinstance(fmt.get("name"), str) or not NAME.fullmatch(fmt["name"]):
            raise bad("text.format.name must be 1-64 letters, digits, _ or -", "text")
        if not isinstance(fmt.get("schema"), dict):
            raise bad("text.format.schema must be a JSON schema object", "text")
        if fmt.get("description") is not None and not isinstance(fmt["description"], str):
            raise bad("text.format.description must be a string", "text")
        if fmt.get("strict") is not None and not isinstance(fmt["strict"], bool):
            raise bad("text.format.strict must be true or false", "text")
        return {"schema": fmt["schema"]}, echo
    raise bad("text.format.type must be text, json_object or json_schema", "text")


def _think(body: Mapping[str, Any]) -> tuple[bool | None, dict[str, Any]]:
    """``reasoning`` -> (the request's ``think``, the echo)."""
    v = body.get("reasoning")
    if v is None:
        return None, {"effort": None, "summary": None}
    _obj(v, "reasoning", {"effort", "summary", "generate_summary"}, "reasoning")
    effort = v.get("effort")
    if effort is not None and effort not in EFFORTS:
        raise bad(f"reasoning.effort must be one of {', '.join(EFFORTS)} (or null)", "reasoning")
    for key in ("summary", "generate_summary"):  # ggrun gives the thought, not a summary
        _one_of(v, key, ("auto", "concise", "detailed"))
    return (None if effort is None else EFFORTS[effort]), {
        "effort": effort,
        "summary": v.get("summary"),
    }


def _logprobs(body: Mapping[str, Any]) -> int | None:
    """Log probabilities (with ``top_logprobs`` alternatives) of the answer's tokens."""
    include = body.get("include")
    if include is not None and (
        not isinstance(include, list) or not all(isinstance(x, str) for x in include)
    ):
        raise bad("'include' must be a list of strings", "include")
    unknown = sorted(set(include or ()) - INCLUDES)
    if unknown:
        raise bad(f"include: ggrun has no {', '.join(unknown)[:200]} (it can include "
                  f"{', '.join(sorted(INCLUDES))})", "include")  # fmt: skip
    top = _int(body, "top_logprobs", 0, 20)
    if "message.output_text.logprobs" in (include or ()) or top is not None:
        return top or 0
    return None


def options(body: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A ``/v1/responses`` body -> (request options, what the Response echoes of it)."""
    check_fields(body, KEYS)
    _stateless(body)
    echo = _hints(body)
    tools, echo["tools"] = _tools(body)
    choice, echo["tool_choice"] = _tool_choice(body, tools)
    structured, echo["text"] = _text(body)
    think, echo["reasoning"] = _think(body)
    parallel = flag(body, "parallel_tool_calls", True)
    lp = _logprobs(body)
    opts: dict[str, Any] = {
        "messages": _input(body),
        "max_tokens": _int(body, "max_output_tokens", 1, 1 << 30),
        "think": think,
        **_sampling(body),
        **structured,
        **({"logprobs": lp} if lp is not None else {}),
    }
    if tools:
        opts |= {"tools": tools, "tool_choice": choice, "parallel_tool_calls": parallel}
    elif choice in ("required", "none") or isinstance(choice, dict):
        opts["tool_choice"] = choice  # "required" without tools: the request says why
    echo |= {
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "parallel_tool_calls": parallel,
        **{wire: body.get(wire) for wire in SAMPLING},  # null: the model's preset decides
        "top_logprobs": body.get("top_logprobs") or 0,
    }
    return opts, echo


# ---------------------------------------------------------------- output


def usage(r: Result) -> dict[str, Any]:
    return {
        "input_tokens": r.prompt_tokens,
        "input_tokens_details": {"cached_tokens": r.cached_tokens, "cache_write_tokens": 0},
        "output_tokens": r.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": r.reasoning_tokens},
        "total_tokens": r.prompt_tokens + r.completion_tokens,
    }


def _lp_part(lps: list[TokenLogprob]) -> list[dict[str, Any]]:
    """Log probabilities as an ``output_text`` part has them."""

    def one(token: str, lp: float, raw: tuple[int, ...]) -> dict[str, Any]:
        return {"token": token, "bytes": list(raw), "logprob": lp}

    return [{**one(t.token, t.logprob, t.bytes), "top_logprobs": [one(*x) for x in t.top]}
            for t in lps]  # fmt: skip


def _lp_delta(lps: list[TokenLogprob]) -> list[dict[str, Any]]:
    """Log probabilities as a text delta event has them."""
    return [{"token": t.token, "logprob": t.logprob,
             "top_logprobs": [{"token": x[0], "logprob": x[1]} for x in t.top]}
            for t in lps]  # fmt: skip


def _id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def _text_part(text: str, lps: list[TokenLogprob]) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": _lp_part(lps)}


def _reasoning_out(item_id: str, text: str, status: str) -> dict[str, Any]:
    return {"type": "reasoning", "id": item_id, "summary": [], "status": status,
            "content": [{"type": "reasoning_text", "text": text}] if text else []}  # fmt: skip


def _message_out(item_id: str, text: str, lps: list[TokenLogprob], status: str,
                 parts: bool = True) -> dict[str, Any]:  # fmt: skip
    return {"type": "message", "id": item_id, "role": "assistant", "status": status,
            "content": [_text_part(text, lps)] if parts else []}  # fmt: skip


def _call_out(call: ToolCall, status: str = "completed", args: str | None = None) -> dict[str, Any]:
    arguments = json.dumps(call.arguments, ensure_ascii=False) if args is None else args
    return {"type": "function_call", "id": "fc_" + call.id.removeprefix("call_"),
            "call_id": call.id, "name": call.name, "arguments": arguments,
            "status": status}  # fmt: skip


class _Open:
    """The output item being streamed: a reasoning item or a message."""

    def __init__(self, kind: str, index: int) -> None:
        self.kind, self.index = kind, index
        self.id = _id("rs" if kind == "reasoning" else "msg")
        self.text: list[str] = []
        self.lps: list[TokenLogprob] = []

    def item(self, status: str) -> dict[str, Any]:
        text = "".join(self.text)
        if self.kind == "reasoning":
            return _reasoning_out(self.id, text, status)
        return _message_out(self.id, text, self.lps, status)


class _Reply:
    """One response: its body, or its events, numbered in order."""

    def __init__(self, call: Call, meta: Meta) -> None:
        self.meta, self.echo = meta, dict(call.wire.get("echo", {}))
        self.id = _id("resp")
        self.seq = 0
        self.output: list[dict[str, Any]] = []  # items done, in order
        self.open: _Open | None = None
        self.held = ""  # answer text held back while it is only blanks
        self.held_lps: list[TokenLogprob] = []
        self.calls = 0

    def response(self, status: str, output: list[dict[str, Any]],
                 r: Result | None = None) -> dict[str, Any]:  # fmt: skip
        incomplete = r is not None and r.finish_reason == "length"
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.meta.created,
            "status": status,
            "completed_at": int(time.time()) if r is not None and not incomplete else None,
            "error": None,
            "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
            "model": self.meta.model,
            "output": output,
            "usage": usage(r) if r is not None else None,
            **self.echo,
        }

    def _event(self, kind: str, **fields: Any) -> Event:
        data = {"type": kind, "sequence_number": self.seq, **fields}
        self.seq += 1
        return Event(data, kind)

    # -- streaming ------------------------------------------------------------------
    def head(self) -> list[Event]:
        body = self.response("in_progress", [])
        return [self._event("response.created", response=body),
                self._event("response.in_progress", response=body)]  # fmt: skip

    def chunk(self, c: Chunk) -> list[Event]:
        out = self._reasoning(c.reasoning) if c.reasoning else []
        if c.text:
            out += self._answer(c.text, c.logprobs)
        for call in c.tool_calls:
            out += self._call(call)
        return out

    def end(self, r: Result) -> list[Event]:
        if r.error is not None:
            code = "invalid_output" if r.finish_reason != "error" else None  # as the 422 / 400
            return [self._event("error", code=code, message=r.error, param=None)]
        out = []
        if self.open is None or self.open.kind != "message":
            has_message = any(i["type"] == "message" for i in self.output)
            if not has_message and not self.calls:  # a reply of blanks, or of nothing
                out += [*self._close("completed"), *self._start("message")]
                out += self._delta(self.held, self.held_lps) if self.held else []
        status = "incomplete" if r.finish_reason == "length" else "completed"
        out += self._close(status)
        kind = "response.incomplete" if status == "incomplete" else "response.completed"
        return [*out, self._event(kind, response=self.response(status, self.output, r))]

    def _reasoning(self, text: str) -> list[Event]:
        out = [] if self.open is not None and self.open.kind == "reasoning" else [
            *self._close("completed"), *self._start("reasoning")]  # fmt: skip
        assert self.open is not None
        self.open.text.append(text)
        return [
            *out,
            self._event(
                "response.reasoning_text.delta",
                item_id=self.open.id,
                output_index=self.open.index,
                content_index=0,
                delta=text,
            ),
        ]

    def _answer(self, text: str, lps: list[TokenLogprob]) -> list[Event]:
        if self.open is not None and self.open.kind == "message":
            return self._delta(text, lps)
        self.held += text
        self.held_lps += lps
        if not self.held.strip():
            return []  # blanks before a tool call are no message
        out = [*self._close("completed"), *self._start("message")]
        return [*out, *self._delta(self.held, self.held_lps)]

    def _delta(self, text: str, lps: list[TokenLogprob]) -> list[Event]:
        assert self.open is not None
        self.open.text.append(text)
        self.open.lps += lps
        self.held, self.held_lps = "", []
        return [self._event("response.output_text.delta", item_id=self.open.id,
                            output_index=self.open.index, content_index=0, delta=text,
                            logprobs=_lp_delta(lps))]  # fmt: skip

    def _start(self, kind: str) -> list[Event]:
        self.open = o = _Open(kind, len(self.output))
        if kind == "reasoning":
            item, part = (
                _reasoning_out(o.id, "", "in_progress"),
                {"type": "reasoning_text", "text": ""},
            )
        else:
            item, part = _message_out(o.id, "", [], "in_progress", parts=False), _text_part("", [])
        where = {"item_id": o.id, "output_index": o.index, "content_index": 0}
        return [self._event("response.output_item.added", output_index=o.index, item=item),
                self._event("response.content_part.added", **where, part=part)]  # fmt: skip

    def _close(self, status: str) -> list[Event]:
        o, self.open = self.open, None
        if o is None:
            return []
        item = o.item(status)
        text = "".join(o.text)
        where = {"item_id": o.id, "output_index": o.index, "content_index": 0}
        if o.kind == "reasoning":
            part: dict[str, Any] = {"type": "reasoning_text", "text": text}
            done = self._event("response.reasoning_text.done", **where, text=text)
        else:
            part = item["content"][0]
            done = self._event("response.output_text.done", **where, text=text,
                               logprobs=_lp_delta(o.lps))  # fmt: skip
        self.output.append(item)
        return [
            done,
            self._event("response.content_part.done", **where, part=part),
            self._event("response.output_item.done", output_index=o.index, item=item),
        ]

    def _call(self, call: ToolCall) -> list[Event]:
        out = self._close("completed")
        self.held, self.held_lps = "", []
        index, item = len(self.output), _call_out(call)
        self.output.append(item)
        self.calls += 1
        where, args = {"item_id": item["id"], "output_index": index}, item["arguments"]
        added = _call_out(call, "in_progress", "")
        return [
            *out,
            self._event("response.output_item.added", output_index=index, item=added),
            self._event("response.function_call_arguments.delta", **where, delta=args),
            self._event("response.function_call_arguments.done", **where, arguments=args),
            self._event("response.output_item.done", output_index=index, item=item),
        ]

    # -- one body -------------------------------------------------------------------
    def whole(self, r: Result) -> dict[str, Any]:
        status = "incomplete" if r.finish_reason == "length" else "completed"
        output: list[dict[str, Any]] = []
        if r.reasoning:
            output.append(_reasoning_out(_id("rs"), r.reasoning, "completed"))
        if r.text.strip() or not r.tool_calls:
            output.append(_message_out(_id("msg"), r.text, r.logprobs, "completed"))
        if output and status == "incomplete":  # the item the limit cut
            output[-1]["status"] = status
        output += [_call_out(c) for c in r.tool_calls]
        return self.response(status, output, r)


class _Adapter:
    framing: Framing = "sse"

    def parse(self, body: Mapping[str, Any]) -> Call:
        try:
            opts, echo = options(body)
        except GgrunError as e:
            raise ApiError.of(e) from None
        stream = flag(body, "stream", False)
        return Call(opts, body.get("model"), stream, wire={"echo": echo},
                    allow_repeated_calls=flag(body, REPEATS, False))  # fmt: skip

    def reply(self, call: Call, meta: Meta) -> _Reply:
        return _Reply(call, meta)

    def error(self, e: ApiError) -> dict[str, Any]:
        return error_body(e)


ADAPTER = _Adapter()
