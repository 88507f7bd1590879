"""The one request type: everything a caller can ask of a generation, validated once.

:meth:`Request.build` is the single place where options are read, whether they come
from Python keywords, CLI flags, a batch line or an HTTP body (after the server's
OpenAI/ollama adapters map their field names). A wrong type or value is an
:class:`~ggrun.errors.InvalidArgument` that names the field; the layers below trust
the frozen value they get.

Fields: the ``prompt`` (raw completion, text or token ids) or the ``messages`` (a chat
reply); sampling overrides and a ``preset``; ``max_tokens`` (``None``: as many as the
context holds); ``stop`` strings; ``think`` (Qwen3's switch); one structured-output
``constraint`` (from ``json``, ``schema``, ``grammar``, ``format``/``columns`` or a
few-shot ``task``); an ``id`` that results carry back; ``parse_special`` (whether a raw
prompt's control-token text is markup: True, except for batch lines).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

from ggrun import sampling, structured
from ggrun.errors import GgrunError, InvalidArgument
from ggrun.templates import ROLES, Message
from ggrun.tools import Choice, Tool, ToolCall, to_tools

DEFAULT_MAX_TOKENS = 256
MAX_STOPS = 16
MAX_STOP_CHARS = 1000
MAX_MESSAGES = 10_000


@dataclass(frozen=True)
class Request:
    """A validated generation request; build it with :meth:`build`."""

    prompt: str | tuple[int, ...] | None = None
    messages: tuple[Message, ...] | None = None
    id: Any = None
    max_tokens: int | None = DEFAULT_MAX_TOKENS
    sampling: tuple[tuple[str, Any], ...] = ()  # explicit overrides, validated
    preset: str | None = None
    stop: tuple[str, ...] = ()
    think: bool | None = None
    constraint: structured.Constraint | None = field(default=None, compare=False)
    tools: tuple[Tool, ...] = ()
    tool_choice: Choice = Choice()
    parallel_tool_calls: bool = True
    speculative: str | None = None  # off, lookup, draft, auto; None: the model's default
    memory: bool = True  # guess from the model's earlier replies, and teach them this one
    think_budget: int | None = None  # most tokens of reasoning (then the thought is closed)
    default_max: bool = False  # max_tokens was not given: a thinking reply gets the room left
    logprobs: int | None = None  # log probabilities of the answer's tokens, and this many
    # alternatives for each (0-20); None: none
    parse_special: bool = True  # a raw prompt's control-token text (<|im_start|>) makes
    # control tokens: its writer wrote the markup. False for text from outside (a batch
    # line). Messages never parse: only their template makes control tokens.

    @property
    def is_chat(self) -> bool:
        return self.messages is not None

    @property
    def overrides(self) -> dict[str, Any]:
        return dict(self.sampling)

    @property
    def offered_tools(self) -> tuple[Tool, ...]:
        """The tools the model is shown (none with ``tool_choice="none"``)."""
        return () if self.tool_choice.mode == "none" else self.tools

    def with_options(self, **options: Any) -> Request:
        """A copy with more options, validated as :meth:`build` does."""
        return Request.build(**{**self.as_options(), **options})

    def as_options(self) -> dict[str, Any]:
        """The keywords that :meth:`build` turns back into this request."""
        out: dict[str, Any] = {
            "prompt": list(self.prompt) if isinstance(self.prompt, tuple) else self.prompt,
            "messages": list(self.messages) if self.messages is not None else None,
            "id": self.id,
            **({} if self.default_max else {"max_tokens": self.max_tokens}),
            "preset": self.preset,
            "stop": list(self.stop),
            "think": self.think,
            "speculative": self.speculative,
            **({} if self.memory else {"memory": False}),
            "think_budget": self.think_budget,
            "logprobs": self.logprobs,
            **({} if self.parse_special else {"parse_special": False}),
            **self.overrides,
        }
        if self.constraint is not None:
            out["constraint"] = self.constraint
        if self.tools:
            out["tools"] = list(self.tools)
            out["tool_choice"] = self.tool_choice
            out["parallel_tool_calls"] = self.parallel_tool_calls
        return out

    @classmethod
    def build(cls, **options: Any) -> Request:
        """Validate ``options`` into a request. See the module docstring for the fields."""
        return _build(dict(options))


# ---------------------------------------------------------------- field checks


def _int(name: str, v: Any, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise InvalidArgument(f"{name} must be an integer, got {_kind(v)}")
    if not lo <= v <= hi:
        shown = v if abs(v) < 10**40 else f"a number of {len(str(abs(v)))} digits"
        raise InvalidArgument(f"{name} must be in [{lo}, {hi}], got {shown}")
    return v


def _bool_or_none(name: str, v: Any) -> bool | None:
    if v is not None and not isinstance(v, bool):
        raise InvalidArgument(f"{name} must be true, false or null, got {_kind(v)}")
    return v


def text(name: str, v: Any) -> str:
    """A string that can be encoded as UTF-8 (no lone surrogates)."""
    if not isinstance(v, str):
        raise InvalidArgument(f"{name} must be a string, got {_kind(v)}")
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidArgument(f"{name} is not valid text (it holds a lone surrogate)") from None
    return v


def _kind(v: Any) -> str:
    return "null" if v is None else type(v).__name__


def _stop(v: Any) -> tuple[str, ...]:
    if v is None:
        return ()
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, (list, tuple)) or len(v) > MAX_STOPS:
        raise InvalidArgument(f"stop must be a string or a list of up to {MAX_STOPS} strings")
    out = []
    for i, s in enumerate(v):
        s = text(f"stop[{i}]", s)
        if len(s) > MAX_STOP_CHARS:
            raise InvalidArgument(f"stop[{i}] is longer than {MAX_STOP_CHARS} characters")
        if s:
            out.append(s)
    return tuple(out)


def _prompt(v: Any) -> str | tuple[int, ...]:
    if isinstance(v, str):
        return text("prompt", v)
    if isinstance(v, (list, tuple)) and v:
        return tuple(_int(f"prompt[{i}]", t, 0, 2**31 - 1) for i, t in enumerate(v))
    raise InvalidArgument(f"prompt must be a string or a list of token ids, got {_kind(v)}")


def messages(v: Any) -> tuple[Message, ...]:
    """Chat messages: ``{"role", "content"}`` mappings (or :class:`Message` objects); an
    assistant's may carry ``tool_calls`` (content then may be empty), a ``tool`` message
    answers one (``tool_call_id``)."""
    if not isinstance(v, (list, tuple)) or not v:
        raise InvalidArgument("messages must be a non-empty list")
    if len(v) > MAX_MESSAGES:
        raise InvalidArgument(f"messages holds more than {MAX_MESSAGES} messages")
    out = []
    for i, m in enumerate(v):
        if isinstance(m, Message):
            out.append(m)
            continue
        if not isinstance(m, Mapping):
            raise InvalidArgument(f"messages[{i}] must be an object with role and content")
        role = m.get("role")
        if role not in ROLES:
            raise InvalidArgument(
                f"messages[{i}].role must be one of {', '.join(ROLES)}, got {role!r}"[:200]
            )
        calls = _tool_calls(m.get("tool_calls"), i) if role == "assistant" else ()
        content = m.get("content")
        if content is None and calls:
            content = ""
        content = text(f"messages[{i}].content", content)
        call_id = m.get("tool_call_id")
        if call_id is not None:
            call_id = text(f"messages[{i}].tool_call_id", call_id)[:200]
        out.append(Message(role, content, calls, call_id))
    return tuple(out)


def _tool_calls(v: Any, i: int) -> tuple[dict[str, Any], ...]:
    """An assistant's earlier calls, as the chat templates read them (arguments a dict)."""
    if v is None:
        return ()
    if not isinstance(v, (list, tuple)) or len(v) > MAX_STOPS * 8:
        raise InvalidArgument(f"messages[{i}].tool_calls must be a list")
    out = []
    for j, c in enumerate(v):
        where = f"messages[{i}].tool_calls[{j}]"
        if isinstance(c, ToolCall):
            c = c.as_openai()
        fn = c.get("function") if isinstance(c, Mapping) else None
        if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str):
            raise InvalidArgument(f"{where} must be {{'function': {{'name', 'arguments'}}}}")
        args = fn.get("arguments", {})
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except (ValueError, RecursionError):
                raise InvalidArgument(f"{where}.function.arguments is not JSON") from None
        if not isinstance(args, dict):
            raise InvalidArgument(f"{where}.function.arguments must be an object")
        call = {"type": "function", "function": {"name": text(f"{where} name", fn["name"]),
                                                 "arguments": args}}  # fmt: skip
        if isinstance(c.get("id"), str):
            call["id"] = c["id"][:200]
        out.append(call)
    return tuple(out)


def _sampling(opts: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    """The explicit sampling values, type- and range-checked by the option table."""
    values: dict[str, Any] = {}
    for name in sampling.SAMPLING_FIELDS:
        v = opts.pop(name, None)
        if v is not None:
            values[name] = sampling.check(name, v)  # InvalidArgument naming the field
    return tuple(sorted(values.items()))


# ---------------------------------------------------------------- building

STRUCTURED = ("json", "schema", "grammar", "format", "columns")


def _build(opts: dict[str, Any]) -> Request:
    task = opts.pop("task", None)
    if task is not None:
        opts = _with_task(task, opts)
    constraint = opts.pop("constraint", None)
    if constraint is not None and not isinstance(constraint, structured.Constraint):
        raise InvalidArgument("constraint must be a Constraint object; use json/schema/grammar")
    asked = {k: opts.pop(k, None) for k in STRUCTURED}
    if constraint is None:
        constraint = _constraint(asked)
    elif any(v not in (None, False) for v in asked.values()):
        raise InvalidArgument("give a constraint or json/schema/grammar/format, not both")
    tools = to_tools(opts.pop("tools")) if opts.get("tools") else ()
    opts.pop("tools", None)
    choice = opts.pop("tool_choice", None)
    choice = choice if isinstance(choice, Choice) else Choice.parse(choice, tools)
    parallel = opts.pop("parallel_tool_calls", True)
    if not isinstance(parallel, bool):
        raise InvalidArgument("parallel_tool_calls must be true or false")
    if choice.mode in ("required", "named") and not tools:
        raise InvalidArgument(f"tool_choice {choice.mode!r} needs tools")
    if tools and constraint is not None:
        raise InvalidArgument("tools cannot be combined with json, schema, grammar or format")
    prompt, msgs = opts.pop("prompt", None), opts.pop("messages", None)
    if (prompt is None) == (msgs is None):
        raise InvalidArgument("a request needs a prompt or messages (one of them)")
    default_max = "max_tokens" not in opts
    max_tokens = opts.pop("max_tokens", DEFAULT_MAX_TOKENS)
    preset = opts.pop("preset", None)
    if preset is not None:
        preset = text("preset", preset)
        if preset not in sampling.load_presets():
            known = ", ".join(sorted(sampling.load_presets()))
            raise InvalidArgument(f"unknown sampling preset {preset!r} (known: {known})")
    req = Request(
        prompt=_prompt(prompt) if prompt is not None else None,
        messages=messages(msgs) if msgs is not None else None,
        id=opts.pop("id", None),
        max_tokens=None if max_tokens is None else _int("max_tokens", max_tokens, 0, 1 << 30),
        sampling=_sampling(opts),
        preset=preset,
        stop=_stop(opts.pop("stop", None)),
        think=_bool_or_none("think", opts.pop("think", None)),
        constraint=constraint,
        tools=tools,
        tool_choice=choice,
        parallel_tool_calls=parallel,
        speculative=_speculative(opts.pop("speculative", None)),
        memory=_bool_or_none("memory", opts.pop("memory", True)) is not False,
        think_budget=_budget(opts.pop("think_budget", None)),
        default_max=default_max,
        logprobs=None
        if (lp := opts.pop("logprobs", None)) is None
        else _int("logprobs", lp, 0, 20),
        parse_special=_bool_or_none("parse_special", opts.pop("parse_special", True)) is not False,
    )
    if tools and req.messages is None:
        raise InvalidArgument("tools need messages (a chat), not a raw prompt")
    if opts:
        raise InvalidArgument(f"unknown option(s): {', '.join(sorted(map(str, opts)))}")
    return req


def _budget(v: Any) -> int | None:
    return None if v is None else _int("think_budget", v, 0, 1 << 30)


def _speculative(v: Any) -> str | None:
    from ggrun.speculative import mode_of

    return None if v is None else mode_of(v)


def _constraint(asked: dict[str, Any]) -> structured.Constraint | None:
    given = [k for k, v in asked.items() if v not in (None, False) and k != "columns"]
    if len(given) > 1:
        raise InvalidArgument(f"give only one of {', '.join(given)}")
    if asked["columns"] is not None and asked["format"] != "csv":
        raise InvalidArgument("columns only applies to format csv")
    try:
        if asked["json"] not in (None, False):
            if asked["json"] is not True:
                raise InvalidArgument(f"json must be true or false, got {_kind(asked['json'])}")
            return structured.json_constraint()
        if asked["schema"] is not None:
            return structured.schema_constraint(asked["schema"])
        if asked["grammar"] is not None:
            return structured.Constraint(text("grammar", asked["grammar"]), "grammar")
        if asked["format"] is not None:
            cols = asked["columns"]
            if cols is not None and (
                not isinstance(cols, (list, tuple)) or not all(isinstance(c, str) for c in cols)
            ):
                raise InvalidArgument("columns must be a list of strings")
            fmt = text("format", asked["format"])
            return structured.format_constraint(fmt, list(cols) if cols else None)
    except RecursionError:
        raise InvalidArgument("the schema is nested too deeply") from None
    return None


def _with_task(name: Any, opts: dict[str, Any]) -> dict[str, Any]:
    """A few-shot task brings its messages, constraint and defaults; explicit values win."""
    from ggrun.tasks import resolve

    task = resolve(name, files=True)  # a Task, a preset or a file (the caller's own)
    if opts.get("messages") is not None:
        raise InvalidArgument("a task builds its own messages: give its input as the prompt")
    prompt = opts.pop("prompt", None)
    if not isinstance(prompt, str):
        raise InvalidArgument("a task needs its input text as the prompt")
    explicit = {k: v for k, v in opts.items() if v is not None and v is not False}
    merged = {**task.options(), **explicit}
    given = [k for k in ("json", "schema", "grammar", "format") if k in explicit]
    if given:  # an explicit constraint replaces the task's own
        for k in ("json", "schema", "format"):
            if k not in given:
                merged.pop(k, None)
    merged["messages"] = task.messages(prompt)
    return merged


def build_many(items: Sequence[Any], **common: Any) -> list[Request | GgrunError]:
    """Requests from prompts, message lists, dicts or Requests; ``common`` fills the gaps.

    A dict's own fields win over ``common``; an item that cannot be built comes back as
    its error (with the item's ``id`` or position), so one bad item never stops the rest.
    """
    out: list[Request | GgrunError] = []
    for i, item in enumerate(items):
        try:
            out.append(one(item, i, **common))
        except GgrunError as e:
            e.request_id = item.get("id", i) if isinstance(item, dict) else i  # type: ignore[attr-defined]
            out.append(e)
    return out


def one(item: Any, index: int, **common: Any) -> Request:
    """One request from a prompt string, a message list, a dict or a Request."""
    if isinstance(item, Request):
        return item if item.id is not None else replace(item, id=index)
    base = {"id": index, **{k: v for k, v in common.items() if v is not None}}
    if isinstance(item, str):
        return Request.build(**base, prompt=item)
    if isinstance(item, list):
        return Request.build(**base, messages=item)
    if isinstance(item, dict):
        own = {str(k): v for k, v in item.items()}
        if own.get("task") is not None:  # a line names a task preset, never a file
            from ggrun.tasks import resolve

            own["task"] = resolve(own["task"], files=False)
        if "prompt" in own or "messages" in own:
            base.pop("prompt", None)
            base.pop("messages", None)
        return Request.build(**{**base, **own})
    raise InvalidArgument(f"item {index}: expected a prompt, a message list or a dict")


REQUEST_FIELDS = tuple(f.name for f in fields(Request))
