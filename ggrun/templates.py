"""Chat templates and the thinking split.

A GGUF carries its chat template as Jinja (``tokenizer.chat_template``). Templates
come from strangers, so they render only in jinja2's ``ImmutableSandboxedEnvironment``
(no attribute access to internals, no mutation of passed objects), with a time limit
and an output-size limit enforced while rendering. A template that breaks any of that,
or fails to render, raises :class:`~ggrun.errors.TemplateError`. Without a template,
ggrun uses ChatML.

Thinking: ``think=True/False`` is passed to the template as ``enable_thinking`` (Qwen3's
switch), never as a prompt trick; :class:`ggrun.textstream.ThinkSplitter` separates
``<think>…</think>`` from the answer.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

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

MAX_RENDER_SECONDS = 2.0
MAX_RENDER_CHARS = 4 << 20
ROLES = ("system", "user", "assistant", "tool")


@dataclass(frozen=True)
class Message:
    role: str
    content: str

    def as_dict(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


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


class _Budget:
    """A tracer that stops a render running past its time budget (catches silent loops)."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds
        self.count = 0

    def __call__(self, frame: Any, event: str, arg: Any) -> Any:
        self.count += 1
        if self.count & 1023 == 0 and time.monotonic() > self.deadline:
            raise TemplateError(
                f"the chat template took longer than {MAX_RENDER_SECONDS:g} s "
                "to render; refusing it"
            )
        return self


@lru_cache(maxsize=8)
def _compile(source: str) -> Any:
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise TemplateError(f"the chat template refused the conversation: {message}")

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, undefined=jinja2.Undefined
    )
    env.policies["json.dumps_kwargs"] = {"ensure_ascii": False}
    env.filters["tojson"] = lambda v, indent=None: json.dumps(v, ensure_ascii=False, indent=indent)
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(source)
    except jinja2.TemplateError as e:
        raise TemplateError(f"the chat template is invalid Jinja: {e}") from None


def render(
    template: str | None,
    messages: Sequence[Message],
    *,
    add_generation_prompt: bool = True,
    think: bool | None = None,
    bos_token: str = "",
    eos_token: str = "",
) -> str:
    """Render ``messages`` with ``template`` (ChatML when None) in the sandbox."""
    import jinja2
    from jinja2.sandbox import SecurityError

    tmpl = _compile(template or CHATML)
    variables: dict[str, Any] = {
        "messages": [m.as_dict() for m in messages],
        "add_generation_prompt": add_generation_prompt,
        "bos_token": bos_token,
        "eos_token": eos_token,
    }
    if think is not None:
        variables["enable_thinking"] = think
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


def starts_in_thinking(prompt: str) -> bool:
    """True when the rendered prompt leaves a ``<think>`` block open for the model."""
    return prompt.rfind(THINK_OPEN) > prompt.rfind(THINK_CLOSE)
