"""Chat templates and the thinking split.

A GGUF carries its chat template as Jinja (``tokenizer.chat_template``). Templates
come from strangers, so they render only in jinja2's ``ImmutableSandboxedEnvironment``
(no attribute access to internals, no mutation of passed objects) with every size
bounded before it is allocated (:mod:`ggrun.template_sandbox`), a time limit on
compiling and on rendering, and an output-size limit. A template that breaks any of
that, or fails to compile or render, raises :class:`~ggrun.errors.TemplateError`.
Without a template, ggrun uses ChatML.

Text is data: :func:`render_prompt` renders with every control token's text that a
message, a tool result or a tool definition holds swapped for a marker no one can guess,
and puts the text back as a *literal* span of the :class:`Prompt`; the llama layer
tokenizes those spans as text, so only the template's own markup makes control tokens.

Thinking: ``think=True/False`` is passed to the template as ``enable_thinking`` (Qwen3's
switch), never as a prompt trick; :class:`ggrun.textstream.ThinkSplitter` separates
``<think>…</think>`` from the answer.
"""

from __future__ import annotations

import re
import secrets
import sys
import time
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from ggrun import template_sandbox
from ggrun.errors import TemplateError

CHATML = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# End-of-turn markers used by common templates; each that the template mentions and the
# vocabulary has as one token becomes a stop token.
END_OF_TURN_MARKERS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "<|endoftext|>")

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
# How Qwen3 ends a thought that ran out of budget (Qwen3 technical report, section 4.3;
# llama.cpp's --reasoning-budget-message does the same).
THINK_BUDGET_MESSAGE = (
    "Considering the limited time by the user, I have to give the solution based on the "
    "thinking directly now.\n</think>\n\n"
)

MAX_RENDER_SECONDS = 2.0
MAX_COMPILE_SECONDS = 5.0  # a 30 KB template compiles in about 0.5 s on a slow core
MAX_TEMPLATE_CHARS = 256 << 10  # real templates are a few KB; the largest about 30 KB
MAX_RENDER_CHARS = 4 << 20
ROLES = ("system", "user", "assistant", "tool")


@dataclass(frozen=True)
class Message:
    """A chat message; an assistant's may carry tool calls, a tool's answers one."""

    role: str
    content: str
    tool_calls: tuple[dict[str, Any], ...] = ()  # {"id", "type": "function", "function"}
    tool_call_id: str | None = None

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            d["tool_calls"] = [dict(c) for c in self.tool_calls]
        if self.tool_call_id is not None:
            d["tool_call_id"] = self.tool_call_id
        return d


def to_messages(messages: Sequence[Any]) -> list[Message]:
    """Accept ``{"role":..., "content":...}`` dicts or :class:`Message` objects."""
    out = []
    for i, m in enumerate(messages):
        if isinstance(m, Message):
            out.append(m)
            continue
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise TemplateError(f"message #{i} must be a mapping with 'role' and 'content'")
        if m["role"] not in ROLES:
            raise TemplateError(
                f"message #{i} has unknown role {m['role']!r} (expected one of {', '.join(ROLES)})"
            )
        if not isinstance(m["content"], str):
            raise TemplateError(f"message #{i}: content must be a string")
        out.append(Message(m["role"], m["content"]))
    return out


_SANDBOX_FILE = template_sandbox.printed_size.__code__.co_filename


class _Budget:
    """A tracer that stops a render running past its time budget (catches silent loops)."""

    def __init__(self, seconds: float = MAX_RENDER_SECONDS, what: str = "render") -> None:
        self.seconds = seconds
        self.what = what
        self.deadline = time.monotonic() + seconds
        self.count = 0

    def __call__(self, frame: Any, event: str, arg: Any) -> Any:
        if event == "call" and frame.f_code.co_filename == _SANDBOX_FILE:
            return None  # its loops are bounded by size; tracing them only slows them down
        self.count += 1
        if self.count & 1023 == 0 and time.monotonic() > self.deadline:
            raise TemplateError(
                f"the chat template took longer than {self.seconds:g} s to {self.what}; refusing it"
            )
        return self


@lru_cache(maxsize=8)
def _compile(source: str) -> Any:
    """Parse and compile in the bounded sandbox, under a time limit."""
    import jinja2

    if len(source) > MAX_TEMPLATE_CHARS:
        raise TemplateError(
            f"the chat template is {len(source):,} characters long "
            f"(limit {MAX_TEMPLATE_CHARS:,}); refusing it"
        )
    old = sys.gettrace()
    sys.settrace(_Budget(MAX_COMPILE_SECONDS, "compile"))
    try:
        return template_sandbox.compile_template(source)
    except TemplateError:
        raise
    except jinja2.TemplateError as e:
        raise TemplateError(f"the chat template is invalid Jinja: {e}") from None
    except RecursionError:
        raise TemplateError("the chat template nests too deeply to compile") from None
    except (SyntaxError, MemoryError, ValueError, TypeError, OverflowError) as e:
        raise TemplateError(f"the chat template cannot be compiled: {e}") from None
    finally:
        sys.settrace(old)


def render(
    template: str | None,
    messages: Sequence[Message | dict[str, Any]],
    *,
    add_generation_prompt: bool = True,
    think: bool | None = None,
    bos_token: str = "",
    eos_token: str = "",
    tools: Sequence[dict[str, Any]] = (),
) -> str:
    """Render ``messages`` with ``template`` (ChatML when None) in the sandbox;
    ``tools`` are OpenAI-style definitions for the template's own tool section."""
    import jinja2
    from jinja2.sandbox import SecurityError

    tmpl = _compile(template or CHATML)
    variables: dict[str, Any] = {
        "messages": [m if isinstance(m, dict) else m.as_dict() for m in messages],
        "add_generation_prompt": add_generation_prompt,
        "bos_token": bos_token,
        "eos_token": eos_token,
    }
    if think is not None:
        variables["enable_thinking"] = think
    if tools:
        variables["tools"] = [dict(t) for t in tools]
    parts: list[str] = []
    size = 0
    old = sys.gettrace()
    sys.settrace(_Budget(MAX_RENDER_SECONDS))
    try:
        for piece in tmpl.generate(**variables):
            size += len(piece)
            if size > MAX_RENDER_CHARS:
                raise TemplateError(
                    "the chat template produced more than "
                    f"{MAX_RENDER_CHARS} characters; refusing it"
                )
            parts.append(piece)
    except TemplateError:
        raise
    except SecurityError as e:
        raise TemplateError(
            f"the chat template tried something unsafe and was stopped: {e}"
        ) from None
    except (
        jinja2.TemplateError,
        TypeError,
        ValueError,
        KeyError,
        IndexError,
        AttributeError,
        OverflowError,
        RecursionError,
        MemoryError,
    ) as e:
        raise TemplateError(f"the chat template failed to render: {e}") from None
    finally:
        sys.settrace(old)
    return "".join(parts)


@dataclass(frozen=True)
class Prompt:
    """A rendered chat prompt: its text, and the spans of it that came from messages and
    spell a control token's text (``<|im_start|>`` typed by a user). Those are text, never
    control tokens; everything else is the template's markup, parsed as the model's own."""

    text: str
    literal: tuple[tuple[int, int], ...] = ()  # (start, end), sorted, not overlapping
    reply_start: int = 0  # where the template's opening of the reply begins

    @property
    def opening(self) -> str:
        """What the template wrote to open the reply (``<|im_start|>assistant\n``,
        maybe a ``<think>``): never a message's text, so a ``<think>`` a user typed
        cannot make ggrun read the answer as a thought."""
        return self.text[self.reply_start :]

    def __str__(self) -> str:
        return self.text

    def is_literal(self, start: int, end: int) -> bool:
        """Whether ``text[start:end]`` overlaps a literal span."""
        i = bisect_right(self.literal, (start, len(self.text) + 1)) - 1
        if i >= 0 and self.literal[i][1] > start:
            return True
        return i + 1 < len(self.literal) and self.literal[i + 1][0] < end

    def rfind_markup(self, marker: str) -> int:
        """The last place the template itself wrote ``marker`` (-1: nowhere)."""
        end = len(self.text)
        while (i := self.text.rfind(marker, 0, end)) >= 0:
            if not self.is_literal(i, i + len(marker)):
                return i
            end = i + len(marker) - 1
        return -1

    def tail(self, start: int) -> Prompt:
        """The prompt from ``start`` on (its literal spans shifted, a cut one kept)."""
        spans = tuple((max(a, start) - start, b - start) for a, b in self.literal if b > start)
        return Prompt(self.text[start:], spans)


# Template code that can rebuild a control token's text out of a message's pieces
# (``content|lower`` on ``<|IM_START|>``, ``replace``, ``join``, ``reverse``, slices): a
# template that uses any is rendered again with the messages' text defused, and the two
# must hold the same markup.
_REWRITES = re.compile(
    r"\b(lower|replace|striptags|join|reverse|format|wordwrap|truncate|center|title"
    r"|capitalize|swapcase|translate|casefold|zfill|ljust|rjust)\b|\[[^\]]*:"
)


def _walk(v: Any, fn: Any) -> Any:
    """``v`` with ``fn`` applied to every string in it, keys too."""
    if isinstance(v, str):
        return fn(v)
    if isinstance(v, dict):
        return {_walk(k, fn): _walk(x, fn) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_walk(x, fn) for x in v]
    return v


def render_prompt(
    template: str | None,
    messages: Sequence[Message],
    *,
    controls: Sequence[str] = (),
    tools: Sequence[dict[str, Any]] = (),
    **options: Any,
) -> Prompt:
    """Render as :func:`render` does; a ``controls`` text (a control token's) that comes
    from ``messages`` or ``tools`` becomes a literal span of the prompt, never markup."""
    texts = sorted({c for c in controls if c}, key=len, reverse=True)
    dicts: list[Any] = [m.as_dict() for m in messages]
    tool_dicts = [dict(t) for t in tools]
    if not texts:
        return Prompt(render(template, dicts, tools=tool_dicts, **options))
    found = re.compile("|".join(map(re.escape, texts)))
    nonce = secrets.token_hex(8)
    index = {t: i for i, t in enumerate(texts)}

    def marker(m: re.Match[str]) -> str:
        return f"GGRUNLIT{nonce}N{index[m.group()]}Z"

    try:
        marked = _walk(dicts, lambda v: found.sub(marker, v))
        marked_tools = _walk(tool_dicts, lambda v: found.sub(marker, v))
    except RecursionError:
        raise TemplateError("a message or tool nests too deeply to render") from None
    rendered = render(template, marked, tools=marked_tools, **options)
    prompt = _unmark(rendered, texts, nonce)
    if _REWRITES.search(template or ""):
        defuse = str.maketrans({t[0]: "\u2039" for t in texts})
        plain = render(
            template,
            _walk(dicts, lambda v: v.translate(defuse)),
            tools=_walk(tool_dicts, lambda v: v.translate(defuse)),
            **options,
        )
        ours = [m for m in found.finditer(prompt.text) if not prompt.is_literal(*m.span())]
        if len(ours) != len(found.findall(plain)):
            raise TemplateError(
                "the chat template rebuilt a control token out of a message's text; refusing it"
            )
    return prompt


def _unmark(rendered: str, texts: Sequence[str], nonce: str) -> Prompt:
    """The rendered text with each marker back as its control text, a literal span."""
    pattern = re.compile(f"GGRUNLIT{nonce}N(\\d+)Z", re.IGNORECASE)
    parts: list[str] = []
    spans: list[tuple[int, int]] = []
    pos = size = 0
    for m in pattern.finditer(rendered):
        parts.append(rendered[pos : m.start()])
        size += m.start() - pos
        k = int(m.group(1))
        if k >= len(texts):
            raise TemplateError("the chat template changed a message's text past recognition")
        parts.append(texts[k])
        spans.append((size, size + len(texts[k])))
        size += len(texts[k])
        pos = m.end()
    parts.append(rendered[pos:])
    text = "".join(parts)
    if nonce in text.lower():
        raise TemplateError("the chat template cut a message's text apart; refusing it")
    return Prompt(text, tuple(spans))


def starts_in_thinking(prompt: str) -> bool:
    """True when the rendered prompt leaves a ``<think>`` block open for the model."""
    return prompt.rfind(THINK_OPEN) > prompt.rfind(THINK_CLOSE)
