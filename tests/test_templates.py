"""Chat templates: ChatML fallback, the sandbox, the thinking splitter."""

from __future__ import annotations

import pytest

from ggrun.errors import TemplateError
from ggrun.templates import CHATML, Message, render, starts_in_thinking
from ggrun.textstream import ThinkSplitter

MSGS = [Message("system", "S"), Message("user", "U")]


def test_chatml_fallback() -> None:
    out = render(None, MSGS)
    assert (
        out == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert render(CHATML, MSGS, add_generation_prompt=False).endswith("U<|im_end|>\n")


@pytest.mark.parametrize(
    "template",
    [
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
        "{{ lipsum.__globals__['os'].popen('id').read() }}",
        "{{ self._TemplateReference__context.cycler.__init__.__globals__.os }}",
        "{% for i in range(10**9) %}{% endfor %}",
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        "{{ 'x' * 100000000 }}",
        "{{ messages.append(1) }}",
        "{% for m in messages %}",
        "{{ raise_exception('no system role') }}",
    ],
)
def test_hostile_or_broken_templates_are_refused(template: str) -> None:
    with pytest.raises(TemplateError):
        render(template, MSGS)


def test_enable_thinking_variable() -> None:
    t = "{% if enable_thinking is defined and not enable_thinking %}OFF{% else %}ON{% endif %}"
    assert render(t, MSGS, think=False) == "OFF"
    assert render(t, MSGS, think=True) == "ON"
    assert render(t, MSGS) == "ON"


def _split(pieces: list[str], in_think: bool = False) -> tuple[str, str]:
    s = ThinkSplitter(in_think)
    answer, reasoning = "", ""
    for p in pieces:
        a, r = s.feed(p)
        answer, reasoning = answer + a, reasoning + r
    a, r = s.flush()
    return answer + a, reasoning + r


@pytest.mark.parametrize(
    "pieces",
    [
        ["<think>\nhmm\n</think>\n\nHello"],
        ["<", "think", ">", "\nhmm\n", "</", "think", ">", "\n\n", "Hello"],
        ["<thi", "nk>\nhm", "m\n</th", "ink>\n", "\nHel", "lo"],
    ],
)
def test_splitter_across_token_boundaries(pieces: list[str]) -> None:
    answer, reasoning = _split(pieces)
    assert answer == "Hello"
    assert reasoning.strip() == "hmm"


def test_splitter_without_thinking_and_late_tags() -> None:
    assert _split(["Hello ", "world"]) == ("Hello world", "")
    # a tag after the answer started is text, not reasoning
    assert _split(["Use the ", "<think>", " tag"]) == ("Use the <think> tag", "")
    # templates that open the block themselves (R1 style)
    assert _split(["plan", "</think>", "Answer"], in_think=True) == ("Answer", "plan")
    assert _split(["<"]) == ("<", "")


def test_starts_in_thinking() -> None:
    assert starts_in_thinking("<|im_start|>assistant\n<think>\n")
    assert not starts_in_thinking("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert not starts_in_thinking("<|im_start|>assistant\n")
