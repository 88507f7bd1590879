"""A multi-turn conversation over one :class:`~ggrun.engine.Model`.

:class:`Chat` keeps the history and reuses the model's KV cache across turns: each turn
re-renders the whole conversation with the chat template, and the engine decodes only
the tokens after the longest prefix it already holds, so turn N does not re-process
turns 1..N-1. Reasoning (``<think>…</think>``) is returned with each reply but never
kept in the history. When the history no longer fits, the oldest turns are dropped
(never the system prompt) and :attr:`Chat.trimmed` says how many messages went.
An interrupted reply (Ctrl-C) is kept, as far as it got.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ggrun.engine import Chunk, Model, Result
from ggrun.errors import GgrunError, InvalidArgument
from ggrun.templates import Message, to_messages

logger = logging.getLogger(__name__)

SAVE_VERSION = 1


class Chat:
    """A conversation: ``chat.send("hi").text`` or ``for c in chat.stream("hi"): ...``."""

    def __init__(
        self,
        model: Model,
        system: str | None = None,
        *,
        think: bool | None = None,
        max_tokens: int | None = 1024,
        **options: Any,
    ) -> None:
        self.model = model
        self.system = system
        self.think = think
        self.max_tokens = max_tokens
        self.options = options  # sampling overrides, preset, stop ...
        self.history: list[Message] = []
        self.trimmed = 0  # messages dropped by the last turn to fit the context
        self.last: Result | None = None
        self.interrupted = False

    # -- history --------------------------------------------------------------------
    @property
    def messages(self) -> list[Message]:
        head = [Message("system", self.system)] if self.system else []
        return head + self.history

    def reset(self) -> None:
        self.history.clear()
        self.last = None

    def set_system(self, text: str | None) -> None:
        self.system = text or None

    def context_used(self) -> int:
        """Tokens the current conversation occupies (without a new turn)."""
        if not self.messages:
            return 0
        prompt = self.model.format_chat(
            self.messages, think=self.think, add_generation_prompt=False
        )
        return self.model.count_tokens(prompt)

    def _fit(
        self, pending: list[Message], reserve: int, think: bool | None
    ) -> tuple[str, list[int]]:
        """Drop the oldest turns until prompt + reserve fits; return the prompt and its tokens."""
        history = list(self.history)
        dropped = 0
        while True:
            head = [Message("system", self.system)] if self.system else []
            msgs = head + history + pending
            prompt = self.model.format_chat(msgs, think=think)
            tokens = self._tokens_for(prompt)
            n = len(tokens)
            if n + reserve <= self.model.n_ctx or not history:
                break
            # drop the oldest user turn and everything up to the next user turn
            cut = 1
            while cut < len(history) and history[cut].role != "user":
                cut += 1
            dropped += cut
            history = history[cut:]
        if dropped:
            logger.warning(
                "the conversation no longer fits in %d tokens: dropped the %d oldest message(s)",
                self.model.n_ctx,
                dropped,
            )
            self.history = history
        self.trimmed = dropped
        return prompt, tokens

    def _tokens_for(self, prompt: str) -> list[int]:
        """Tokens for ``prompt`` that keep what the KV cache already holds.

        Re-tokenizing a reply does not always give back the tokens that were generated
        (and never does for noise), which would send the whole history through the model
        again. When the prompt extends the text the cache holds, only the new suffix is
        tokenized.
        """
        held = self.model.kv_tokens
        if held:
            text = self.model.detokenize(held)
            if prompt.startswith(text) and len(prompt) > len(text):
                return [*held, *self.model.tokenize(prompt[len(text) :])]
        return self.model.tokenize_prompt(prompt)

    # -- turns ----------------------------------------------------------------------
    def stream(self, content: str, **kwargs: Any) -> Iterator[Chunk]:
        """Send a user message and stream the reply; the reply joins the history."""
        if not isinstance(content, str):
            raise InvalidArgument("a chat message must be a string")
        opts = {**self.options, **kwargs}
        max_tokens = opts.pop("max_tokens", self.max_tokens)
        think = opts.pop("think", self.think)
        reserve = min(max_tokens or self.model.n_ctx // 4, self.model.n_ctx // 2)
        user = Message("user", content)
        prompt, tokens = self._fit([user], reserve, think)
        inner = self.model.reply_stream(
            prompt, tokens=tokens, think=think, max_tokens=max_tokens, keep_cache=True, **opts
        )
        return self._record(user, inner)

    def _record(self, user: Message, inner: Iterator[Chunk]) -> Iterator[Chunk]:
        parts: list[str] = []
        reasoning: list[str] = []
        last = Chunk()
        self.interrupted = True
        try:
            for chunk in inner:
                parts.append(chunk.text)
                reasoning.append(chunk.reasoning)
                last = chunk
                yield chunk
            self.interrupted = False
        finally:
            text = "".join(parts)
            self.history += [user, Message("assistant", text)]
            self.last = Result.from_last(last, text, "".join(reasoning), "interrupted")

    def send(self, content: str, **kwargs: Any) -> Result:
        """Send a user message and return the whole reply."""
        for _ in self.stream(content, **kwargs):
            pass
        assert self.last is not None
        return self.last

    # -- persistence ----------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the conversation as JSON, atomically."""
        p = Path(path)
        data = {"version": SAVE_VERSION, "messages": [m.as_dict() for m in self.messages]}
        tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
        try:
            tmp.write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
            os.replace(tmp, p)
        except OSError as e:
            raise GgrunError(f"cannot save the conversation to {p}: {e.strerror or e}") from None
        finally:
            tmp.unlink(missing_ok=True)
        return p

    def load(self, path: str | os.PathLike[str]) -> None:
        """Replace the conversation with one saved by :meth:`save`."""
        p = Path(path)
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise GgrunError(f"{p}: no such file") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise GgrunError(f"{p}: not a saved conversation: {e}") from None
        if not isinstance(data, dict) or not isinstance(data.get("messages"), list):
            raise GgrunError(f"{p}: not a saved conversation (no 'messages' list)")
        try:
            msgs = to_messages(data["messages"])
        except GgrunError as e:
            raise GgrunError(f"{p}: {e}") from None
        self.system = msgs[0].content if msgs and msgs[0].role == "system" else None
        self.history = [m for m in msgs if m.role != "system"]
        self.last = None
