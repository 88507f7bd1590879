"""The per-sequence pipeline's pure parts: stop strings, the tool-call splitter, stats."""

from __future__ import annotations

import dataclasses

from ggrun.textstream import STATS, Chunk, Result, StopMatcher, TextStream, ToolCallSplitter
from ggrun.tools import Tool


def test_a_result_takes_every_stat_of_its_last_chunk() -> None:
    shared = {f.name for f in dataclasses.fields(Chunk)} & {
        f.name for f in dataclasses.fields(Result)
    }
    values = {n: getattr(Chunk(), n) for n in shared}
    numeric = {n for n, v in values.items() if type(v) in (int, float)}  # a flag is no count
    assert numeric == set(STATS)  # a new count on Chunk reaches Result, or this fails


def test_tool_calls_are_taken_out_of_the_content() -> None:
    s = ToolCallSplitter()
    content, calls = s.feed("Sure. <tool_")
    assert content == "Sure. " and not calls  # a possible tag is held back
    content, calls = s.feed('call>{"name": "f"}</tool_call>\n<tool_call>{"x": 1}')
    assert content == "" and calls == ['{"name": "f"}']
    assert s.in_call
    assert s.flush() == ("", True)  # cut off inside the second call


def _cut_in_the_opening_tag(must_call: bool) -> Chunk:
    pieces = [b"<", b"tool", b"_"]  # max_tokens ran out inside "<tool_call>"
    s = TextStream(lambda t: pieces[t], n_prompt=1, tools=(Tool("f", "", {}),),
                   must_call=must_call)  # fmt: skip
    for t in range(3):
        s.feed(t)
    return s.finish("length")


def test_a_forced_call_cut_off_in_its_opening_tag_is_an_error() -> None:
    """tool_choice required, cut off after "<tool_": the partial tag came back as the
    reply's text with no call and no error (a 200 whose content is "<tool_")."""
    last = _cut_in_the_opening_tag(must_call=True)
    assert last.error is not None and "cut off inside a tool call" in last.error
    assert last.cut and last.text == ""  # max_tokens cut it; the partial tag is no text
    last = _cut_in_the_opening_tag(must_call=False)  # auto: the model may have meant text
    assert last.error is None


def test_a_call_left_open_at_the_end_of_the_text_is_no_cut() -> None:
    """Only max_tokens cuts (finish_reason length): the server answers that with a 200;
    a call the model left open when it stopped is a failure of the output."""
    pieces = [b"<tool_call>", b'{"name": "f"']
    s = TextStream(lambda t: pieces[t], n_prompt=1, tools=(Tool("f", "", {}),))
    for t in range(2):
        s.feed(t)
    last = s.finish("stop")
    assert last.error is not None and not last.cut


def test_a_stop_string_split_across_tokens() -> None:
    m = StopMatcher(("STOP",))
    a, hit_a = m.feed("abc ST")  # what could start the stop string is held back
    b, hit_b = m.feed("OP and more")
    assert (a + b, hit_a, hit_b) == ("abc ", False, True)
    assert m.matched == "STOP"


def test_the_first_stop_string_in_the_text_is_the_one_matched() -> None:
    m = StopMatcher(("later", "soon", "never"))
    assert m.matched is None and m.feed("x soon later")[1] and m.matched == "soon"
