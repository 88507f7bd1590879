"""Terminal rendering of a token stream: answer to one stream, reasoning dimmed."""

from __future__ import annotations

from collections.abc import Iterator
from typing import IO

from ggrun.engine import Chunk

DIM, RESET = "\033[2m", "\033[0m"


def dim(text: str) -> str:
    """``text`` dimmed on a terminal."""
    import sys

    return f"{DIM}{text}{RESET}" if sys.stdout.isatty() else text


def write_stream(
    chunks: Iterator[Chunk],
    out: IO[str],
    *,
    show_thinking: bool = False,
    thinking_out: IO[str] | None = None,
) -> Chunk:
    """Write answer text to ``out`` as it arrives; return the last chunk.

    Reasoning goes to ``thinking_out`` (default ``out``), dimmed on a terminal, only when
    ``show_thinking``. The stream is closed on the way out, also on Ctrl-C, so a
    :class:`~ggrun.Chat` records the partial reply.
    """
    tout = thinking_out or out
    dim = tout.isatty()
    last = Chunk()
    in_thought = False
    try:
        for chunk in chunks:
            if chunk.reasoning and show_thinking:
                if not in_thought and dim:
                    tout.write(DIM)
                in_thought = True
                tout.write(chunk.reasoning)
                tout.flush()
            if chunk.text:
                if in_thought:
                    tout.write((RESET if dim else "") + "\n")
                    tout.flush()
                    in_thought = False
                out.write(chunk.text)
                out.flush()
            last = chunk
    finally:
        if in_thought and dim:
            tout.write(RESET)
        close = getattr(chunks, "close", None)
        if close:
            close()
    return last
