"""The per-sequence pipeline's pure parts: stop strings, the tool-call splitter, stats."""

from __future__ import annotations

import dataclasses

from ggrun.textstream import STATS, Chunk, Result, StopMatcher, ToolCallSplitter


def test_a_result_takes_every_stat_of_its_last_chunk() -> None:
    shared = {f.name for f in dataclasses.fields(Chunk)} & {
        f.name for f in dataclasses.fields(Result)
    }
    numeric = {n for n in shared if isinstance(getattr(Chunk(), n), (int, float))}
    assert numeric == set(STATS)  # a new count on Chunk reaches Result, or this fails


def test_tool_calls_are_taken_out_of_the_content() -> None:
    s = ToolCallSplitter()
    content, calls = s.feed("Sure. <tool_")
    assert content == "Sure. " and not calls  # a possible tag is held back
    content, calls = s.feed('call>{"name": "f"}</tool_call>\n<tool_call>{"x": 1}')
    assert content == "" and calls == ['{"name": "f"}']
    assert s.in_call
    assert s.flush() == ("", True)  # cut off inside the second call


def test_a_stop_string_split_across_tokens() -> None:
    m = StopMatcher(("STOP",))
    a, hit_a = m.feed("abc ST")  # what could start the stop string is held back
    b, hit_b = m.feed("OP and more")
    assert (a + b, hit_a, hit_b) == ("abc ", False, True)
