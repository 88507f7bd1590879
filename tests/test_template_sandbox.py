"""Hostile chat templates: refused as one TemplateError before they allocate, in bounded
time; real models' templates render exactly as in a plain jinja2 sandbox."""

from __future__ import annotations

import json
import subprocess
import sys
import tracemalloc
from datetime import datetime
from pathlib import Path

import pytest

from ggrun import templates
from ggrun.errors import TemplateError
from ggrun.gguffile import read_gguf
from ggrun.templates import CHATML, Message, render
from tests.helpers import QWEN3_TEMPLATE, rewrite_gguf

MSGS = [Message("system", "S"), Message("user", "U")]
DAG = (  # a list of shared references that prints to ~10^8 characters
    "{% set a = ['xxxxxxxxxx'] * 100 %}{% set b = [a,a,a,a,a,a,a,a,a,a] %}"
    "{% set c = [b,b,b,b,b,b,b,b,b,b] %}{% set d = [c,c,c,c,c,c,c,c,c,c] %}"
    "{% set e = [d,d,d,d,d,d,d,d,d,d] %}{% set f = [e,e,e,e,e,e,e,e,e,e] %}"
)
DOUBLING = "{% set ns = namespace(s=X) %}{% for i in range(64) %}{% set ns.s = OP %}{% endfor %}"
BIG = "{% set s = 'x' * 1000000 %}"

HOSTILE = {
    # operators, intercepted before they allocate
    "power": "{{ 2**99999999 }}",
    "string times a power": "{{ 'a' * 10**9 }}",
    "string times a literal": "{{ 'a' * 1000000000 }}",
    "list times": "{{ [1, 2] * 1000000000 }}",
    "int squared in a loop": DOUBLING.replace("X", "3").replace("OP", "ns.s * ns.s"),
    "string doubled with ~": DOUBLING.replace("X", "'ab'").replace("OP", "ns.s ~ ns.s"),
    "string doubled with +": DOUBLING.replace("X", "'ab'").replace("OP", "ns.s + ns.s"),
    "list doubled": DOUBLING.replace("X", "[1]").replace("OP", "ns.s + ns.s"),
    "percent width": "{{ '%1000000000d' % 1 }}",
    "percent star": "{{ '%*d' % (1000000000, 1) }}",
    # filters and str methods, estimated before they run
    "tojson indent": "{{ messages|tojson(indent=1000000000) }}",
    "tojson string indent": "{{ messages|tojson(indent=' ' * 1000) }}",
    "center filter": "{{ ' '|center(1000000000) }}",
    "center method": "{{ 'x'.center(1000000000) }}",
    "ljust": "{{ 'x'.ljust(10**9) }}",
    "format method": "{{ '{:>1000000000}'.format(1) }}",
    "format nested width": "{{ '{:>{}}'.format(1, 1000000000) }}",
    "format filter": "{{ '%1000000000s'|format('x') }}",
    "indent": "{{ ('x\\n' * 1000)|indent(1000000) }}",
    "replace method": BIG + "{{ s.replace('x', s)|length }}",
    "replace filter": BIG + "{{ (s|replace('x', s))|length }}",
    "wordwrap": "{{ ('x ' * 1000000)|wordwrap(1, wrapstring='y' * 1000) }}",
    "batch": "{{ range(10)|batch(1000000000, 'x')|list|length }}",
    "slice": "{{ range(10)|slice(1000000000)|list|length }}",
    "expandtabs": "{{ ('\\t' * 1000000).expandtabs(1000)|length }}",
    "translate": "{{ ('a' * 1000).translate({97: 'b' * 1000000})|length }}",
    "join method": BIG + "{{ ' '.join([s, s, s, s, s, s])|length }}",
    "join filter": BIG + "{{ [s, s, s, s, s, s]|join('-')|length }}",
    "lipsum": "{{ lipsum(n=100000) }}",
    # shared references printed: output, ~, %, str.format, filters, namespace
    "shared refs printed": DAG + "{{ f }}",
    "shared refs tojson": DAG + "{{ f|tojson }}",
    "shared refs concat": DAG + "{{ f ~ '' }}",
    "shared refs percent": DAG + "{{ '%s' % (f,) }}",
    "shared refs string": DAG + "{{ f|string|length }}",
    "shared refs format": DAG + "{{ '{}'.format(f)|length }}",
    "shared refs namespace": DAG + "{% set ns = namespace(v=f) %}{{ ns }}",
    "shared refs multiplied": "{% set a = ['x' * 10] * 1000 %}{% set b = [a] * 1000 %}{{ b }}",
    # buffers: {% set %} blocks and macros
    "set block": "{% set s = 'x' * 4000000 %}{% set o %}{% for i in range(1000) %}{{ s }}"
    "{% endfor %}{% endset %}{{ o|length }}",
    "macro": "{% set s = 'x' * 4000000 %}{% macro m() %}{% for i in range(1000) %}{{ s }}"
    "{% endfor %}{% endmacro %}{{ m()|length }}",
    # nesting, at parse and compile time
    "deep parentheses": "{{ " + "(" * 10000 + "1" + ")" * 10000 + " }}",
    "deep lists": "{{ " + "[" * 10000 + "]" * 10000 + " }}",
    "deep ifs": "{% if true %}" * 500 + "x" + "{% endif %}" * 500,
    "deep fors": "{% for i in [1] %}" * 30 + "x" + "{% endfor %}" * 30,
    "long operator chain": "{{ " + " + ".join(["1"] * 5000) + " }}",
    "recursive macro": "{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}",
    # time
    "nested loops": "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}"
    "{% endfor %}",
    "a huge template": "x" * (300 << 10),
}


# refused by their nesting or by the clock: tracing every allocation would only slow them
NOT_TRACED = {"deep ifs", "deep fors", "long operator chain", "list doubled", "nested loops"}


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_templates_are_refused_with_bounded_memory(name: str) -> None:
    templates._compile.cache_clear()
    if name not in NOT_TRACED:
        tracemalloc.start()
    try:
        with pytest.raises(TemplateError) as err:
            render(HOSTILE[name], MSGS)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "\n" not in str(err.value)
    assert peak < 64 << 20, f"{name}: peak {peak / 1e6:.0f} MB"


def _reference(template: str, messages: list[Message], **variables: object) -> str:
    """What a plain jinja2 sandbox (ggrun's before the bounds) renders."""
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, undefined=jinja2.Undefined
    )
    env.filters["tojson"] = lambda v, indent=None: json.dumps(v, ensure_ascii=False, indent=indent)
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(template).render(
        messages=[m.as_dict() for m in messages], bos_token="", eos_token="", **variables
    )


CONVERSATIONS = [
    MSGS,
    [Message("user", "hi")],
    [
        Message("system", "Be brief. {{ not a template }} <|im_end|>"),
        Message("user", "What is 2+2? ünïcödé ☃ " + "long " * 2000),
        Message("assistant", "<think>\nadd\n</think>\n\n4"),
        Message("user", "And 3+3? /no_think"),
    ],
]


@pytest.mark.parametrize("think", [None, True, False])
@pytest.mark.parametrize("gen", [True, False])
def test_real_templates_render_identically(
    smol_path: Path, qwen_path: Path, think: bool | None, gen: bool
) -> None:
    sources = [CHATML, QWEN3_TEMPLATE]
    sources += [read_gguf(p).chat_template or "" for p in (smol_path, qwen_path)]
    extra = {} if think is None else {"enable_thinking": think}
    for source in sources:
        for conv in CONVERSATIONS:
            want = _reference(source, conv, add_generation_prompt=gen, **extra)
            assert render(source, conv, add_generation_prompt=gen, think=think) == want


def test_compiling_has_a_time_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    templates._compile.cache_clear()
    monkeypatch.setattr(templates, "MAX_COMPILE_SECONDS", 0.0)
    with pytest.raises(TemplateError, match="to compile"):
        render(QWEN3_TEMPLATE, MSGS)
    templates._compile.cache_clear()


def test_cli_refuses_a_hostile_template_in_one_line(smol_path: Path, tmp_path: Path) -> None:
    path = rewrite_gguf(smol_path, tmp_path / "t.gguf", template=HOSTILE["string doubled with ~"])
    cmd = [sys.executable, "-m", "ggrun", "generate", str(path), "hi", "--max-tokens", "2"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, r.stderr
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("ggrun: error"), r.stderr
    assert "Traceback" not in r.stderr
