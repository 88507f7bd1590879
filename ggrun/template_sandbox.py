"""The Jinja sandbox chat templates run in, with every size bounded.

jinja2's ``ImmutableSandboxedEnvironment`` stops attribute tricks and mutation, not a
template that asks for ``'a' * 10**9``, ``2 ** 99999999``, ``x|tojson(indent=10**9)``, a
string doubled in a loop, or a small list of shared references printed a billion
times. A single such request allocates before any time limit can act, so here sizes are
checked *before* the work is done:

- the intercepted binary operators (``*``, ``**``, ``+``, ``%``) estimate their result;
- every filter, and every call of a ``str`` method, estimates what it will produce
  (:data:`FILTER_SIZES`, :data:`METHOD_SIZES`), and its result is checked after;
- ``~`` concatenation, joined buffers (macros, ``{% set %}`` and filter blocks) and every
  printed ``{{ value }}`` are bounded too, a container counted at its printed size;
- the parsed template's nesting depth is bounded before it is compiled (deep nesting
  otherwise exhausts Python's stack in the compiler).

Any value is at most :data:`MAX_VALUE` characters (or items), any integer
:data:`MAX_INT_BITS` bits. A refusal is a :class:`~ggrun.errors.TemplateError`.
"""

from __future__ import annotations

import functools
import json
import re
import string
import weakref
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from ggrun.errors import TemplateError

MAX_VALUE = 4 << 20  # characters of a string, items of a list, a printed value
MAX_INT_BITS = 1 << 16
MAX_DEPTH = 100  # nodes of the parsed template, root to leaf (real templates: ~12)
MAX_JSON_INDENT = 16
MAX_LIPSUM_WORDS = 10_000

Estimate = Callable[[Any, tuple[Any, ...], dict[str, Any]], int]


def refuse(what: str) -> TemplateError:
    return TemplateError(f"the chat template {what}; refusing it")


_CONTAINERS = (dict, list, tuple, set, frozenset)


def _scalar_size(v: Any) -> int:
    if isinstance(v, str | bytes):
        return len(v) + 3
    if isinstance(v, int) and not isinstance(v, bool):
        return v.bit_length() // 3 + 2
    return 24  # floats, None, booleans, other objects


# the values of each namespace() a template made (a namespace prints them all)
_NAMESPACES: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()


def _namespace_values(v: Any) -> dict[str, Any] | None:
    if isinstance(v, str | bytes | int | float) or v is None:
        return None
    try:
        return _NAMESPACES.get(v)
    except TypeError:  # not weakly referenceable: not a namespace
        return None


def printed_size(value: Any, indent: int = 0, limit: int = MAX_VALUE) -> int:
    """About how long ``str(value)`` or its JSON is, with ``indent`` spaces per level.

    Shared items count every time they appear, as printing repeats them; the walk
    stops as soon as the total passes ``limit``.
    """
    total, stack = 0, [(value, 0)]
    while stack and total <= limit:
        v, depth = stack.pop()
        v = _namespace_values(v) or v
        if not isinstance(v, _CONTAINERS):
            total += _scalar_size(v) + depth * indent
            continue
        items = [x for kv in v.items() for x in kv] if isinstance(v, dict) else v
        total += 2 + (4 + (depth + 1) * indent) * len(items)
        for item in items:  # scalars here, containers later: no tuple per item
            if total > limit:
                break
            if isinstance(item, _CONTAINERS) or _namespace_values(item) is not None:
                stack.append((item, depth + 1))
            else:
                total += _scalar_size(item)
    return total


def _check(size: int, what: str) -> None:
    if size > MAX_VALUE:
        raise refuse(f"would make {what} of about {size:,} characters (limit {MAX_VALUE:,})")


def _check_result(value: Any) -> Any:
    if isinstance(value, str | bytes | list | tuple | dict) and len(value) > MAX_VALUE:
        raise refuse(f"made a value of {len(value):,} items (limit {MAX_VALUE:,})")
    return value


def _arg(args: tuple[Any, ...], kwargs: dict[str, Any], i: int, name: str, default: Any) -> Any:
    return args[i] if len(args) > i else kwargs.get(name, default)


def _int(v: Any, what: str) -> int:
    if isinstance(v, int) and abs(v) > MAX_VALUE:
        raise refuse(f"asked for a {what} of {v:,}")
    return v if isinstance(v, int) else 0


def _len(v: Any) -> int:
    return len(v) if isinstance(v, str | bytes) else printed_size(v)


# -- size estimates, by what is called -------------------------------------------------
def _width(v: Any, args: tuple[Any, ...], kw: dict[str, Any]) -> int:
    return _len(v) + _int(_arg(args, kw, 0, "width", 80), "width")


def _indent(v: Any, args: tuple[Any, ...], kw: dict[str, Any]) -> int:
    width = _arg(args, kw, 0, "width", 4)
    per_line = len(width) if isinstance(width, str) else _int(width, "indent")
    return _len(v) + (str(v).count("\n") + 1) * per_line if isinstance(v, str) else _len(v)


def _replace(v: Any, args: tuple[Any, ...], kw: dict[str, Any]) -> int:
    old, new = _arg(args, kw, 0, "old", ""), _arg(args, kw, 1, "new", "")
    if not (isinstance(v, str) and isinstance(old, str) and isinstance(new, str)):
        return _len(v)
    n = v.count(old) if old else len(v) + 1
    count = _arg(args, kw, 2, "count", -1)
    if isinstance(count, int) and count >= 0:
        n = min(n, count)
    return len(v) + n * max(0, len(new) - len(old))


def _join_filter(v: Any, args: tuple[Any, ...], kw: dict[str, Any]) -> int:
    sep = _arg(args, kw, 0, "d", "")
    n = len(v) if hasattr(v, "__len__") else 0
    return printed_size(v) + (len(sep) if isinstance(sep, str) else 0) * n


def _join_method(sep: Any, args: tuple[Any, ...], kw: dict[str, Any]) -> int:
    items = _arg(args, kw, 0, "iterable", ())
    n = len(items) if hasattr(items, "__len__") else 0
    return printed_size(items) + len(sep) * n


_PERCENT = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\d+|\*)?(?:\.(\d+|\*))?")


def _percent(fmt: Any, args: tuple[Any, ...], kw: dict[str, Any]) -> int:
    """``fmt % values``: the text, its widths and precisions, and the values printed."""
    values = args if len(args) != 1 else args[0]
    if kw:
        values = kw
    if not isinstance(fmt, str):
        return printed_size(values)
    widths = sum(int(n) for spec in _PERCENT.findall(fmt) for n in spec if n.isdigit())
    if "*" in fmt:  # widths taken from the values
        flat = values if isinstance(values, tuple) else (values,)
        widths += sum(abs(x) for x in flat if isinstance(x, int))
    return len(fmt) + widths + printed_size(values)


def _format(fmt: Any, args: tuple[Any, ...], kw: dict[str, Any]) -> int:
    """``fmt.format(...)``: widths in its format specs, and the values printed."""
    if not isinstance(fmt, str):
        return printed_size(args)
    widths = 0
    for _text, _field, spec, _conv in string.Formatter().parse(fmt):
        widths += sum(int(n) for n in re.findall(r"\d+", spec or ""))
        if spec and "{" in spec:  # a width from the arguments
            widths += sum(abs(x) for x in (*args, *kw.values()) if isinstance(x, int))
    return len(fmt) + widths + printed_size(args) + printed_size(kw)


def _format_map(fmt: Any, args: tuple[Any, ...], kw: dict[str, Any]) -> int:
    mapping = args[0] if args else {}
    return _format(fmt, (), dict(mapping) if isinstance(mapping, dict) else {})


def _tojson(v: Any, args: tuple[Any, ...], kw: dict[str, Any]) -> int:
    indent = _arg(args, kw, 0, "indent", None)
    width = len(indent) if isinstance(indent, str) else indent if isinstance(indent, int) else 0
    if width > MAX_JSON_INDENT:
        raise refuse(f"asked for a JSON indent of {width} (at most {MAX_JSON_INDENT})")
    return printed_size(v, indent=width + 1)


def _expandtabs(v: Any, args: tuple[Any, ...], kw: dict[str, Any]) -> int:
    size = _int(_arg(args, kw, 0, "tabsize", 8), "tab size")
    return len(v) + v.count("\t") * size if isinstance(v, str) else _len(v)


def _translate(v: Any, args: tuple[Any, ...], kw: dict[str, Any]) -> int:
    table = args[0] if args else {}
    longest = max((_len(x) for x in table.values()), default=1) if isinstance(table, dict) else 1
    return _len(v) * max(1, longest)


def _wordwrap(v: Any, args: tuple[Any, ...], kw: dict[str, Any]) -> int:
    width = max(1, _int(_arg(args, kw, 0, "width", 79), "width"))
    wrap = _arg(args, kw, 2, "wrapstring", None)
    return _len(v) + (_len(v) // width + 1) * (len(wrap) if isinstance(wrap, str) else 1)


def _fill(v: Any, args: tuple[Any, ...], kw: dict[str, Any]) -> int:
    """``batch(n, fill)`` and ``slice(n, fill)``: n groups, padded."""
    n = _int(_arg(args, kw, 0, "linecount", _arg(args, kw, 0, "slices", 1)), "count")
    return printed_size(v) + 4 * n * (1 + printed_size(_arg(args, kw, 1, "fill_with", None)))


def _grows(factor: int) -> Estimate:
    return lambda v, args, kw: factor * printed_size(v)


FILTER_SIZES: dict[str, Estimate] = {
    "center": _width,
    "indent": _indent,
    "replace": _replace,
    "join": _join_filter,
    "format": _percent,
    "tojson": _tojson,
    "pprint": _grows(2),
    "string": _grows(1),
    "list": _grows(1),
    "xmlattr": _grows(2),
    "urlize": _grows(4),
    "urlencode": _grows(3),
    "escape": _grows(6),
    "e": _grows(6),
    "forceescape": _grows(6),
    "wordwrap": _wordwrap,
    "batch": _fill,
    "slice": _fill,
    "sum": lambda v, args, kw: printed_size(v) + printed_size(_arg(args, kw, 1, "start", 0)),
}
METHOD_SIZES: dict[str, Estimate] = {  # methods of str (and bytes)
    "center": _width,
    "ljust": _width,
    "rjust": _width,
    "zfill": _width,
    "expandtabs": _expandtabs,
    "replace": _replace,
    "join": _join_method,
    "format": _format,
    "format_map": _format_map,
    "translate": _translate,
}


# -- operators ------------------------------------------------------------------------
def _int_bits(v: Any) -> int:
    return abs(v).bit_length() if isinstance(v, int) else 0


def _mul(left: Any, right: Any) -> None:
    if isinstance(left, int) and isinstance(right, int):
        if _int_bits(left) + _int_bits(right) > MAX_INT_BITS:
            raise refuse(f"asked for a number of about {_int_bits(left) + _int_bits(right)} bits")
        return
    seq, n = (left, right) if isinstance(right, int) else (right, left)
    if isinstance(n, int) and isinstance(seq, str | bytes | list | tuple):
        _check(_len(seq) * max(n, 0), "a repeated sequence")


def _pow(left: Any, right: Any) -> None:
    if isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1:
        bits = right * _int_bits(left)
        if bits > MAX_INT_BITS:
            raise refuse(f"asked for a number of about {bits:,} bits")


def _add(left: Any, right: Any) -> None:
    same = type(left) is type(right) or (isinstance(left, str) and isinstance(right, str))
    if same and isinstance(left, str | bytes | list | tuple):
        _check(_len(left) + _len(right), "a concatenation")


def _mod(left: Any, right: Any) -> None:
    if isinstance(left, str):
        _check(_percent(left, (right,), {}), "a formatted string")


BINOP_CHECKS: dict[str, Callable[[Any, Any], None]] = {
    "*": _mul,
    "**": _pow,
    "+": _add,
    "%": _mod,
}


# -- joins and output -----------------------------------------------------------------
def _bounded(join: Callable[[Iterable[Any]], str]) -> Callable[[Iterable[Any]], str]:
    def joined(pieces: Iterable[Any]) -> str:
        items = list(pieces)
        _check(sum(map(_len, items)), "a joined string")
        return join(items)

    return joined


def finalize(value: Any) -> Any:
    """Every ``{{ value }}`` before it is printed."""
    if not isinstance(value, str):
        _check(printed_size(value), "printed output")
    return value


def _namespace_factory() -> Callable[..., Any]:
    """jinja2's ``namespace()``, with its values visible to :func:`printed_size`."""
    from jinja2.utils import Namespace

    class Seen(Namespace):
        def __setitem__(self, name: str, value: Any) -> None:  # {% set ns.x = value %}
            super().__setitem__(name, value)
            _NAMESPACES[self][name] = value

    def namespace(*args: Any, **kwargs: Any) -> Any:
        values = dict(*args, **kwargs)
        ns = Seen(values)
        _NAMESPACES[ns] = values
        return ns

    return namespace


def _lipsum(n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> str:  # noqa: A002
    from jinja2.utils import generate_lorem_ipsum

    if not all(isinstance(x, int) for x in (n, min, max)) or n * max > MAX_LIPSUM_WORDS:
        raise refuse(f"asked for more than {MAX_LIPSUM_WORDS} words of lorem ipsum")
    return generate_lorem_ipsum(n, html, min, max)


def _guard_filter(name: str, f: Callable[..., Any]) -> Callable[..., Any]:
    skip = 1 if getattr(f, "jinja_pass_arg", None) is not None else 0  # context or env
    estimate = FILTER_SIZES.get(name)

    @functools.wraps(f)  # keeps jinja_pass_arg
    def guarded(*args: Any, **kwargs: Any) -> Any:
        if estimate is not None and len(args) > skip:
            _check(estimate(args[skip], args[skip + 1 :], kwargs), f"the {name} filter's result")
        return _check_result(f(*args, **kwargs))

    return guarded


def _max_depth(node: Any) -> int:
    deepest, stack = 0, [(node, 1)]
    while stack:
        n, depth = stack.pop()
        deepest = max(deepest, depth)
        if depth <= MAX_DEPTH:
            stack.extend((child, depth + 1) for child in n.iter_child_nodes())
    return deepest


def environment() -> Any:
    """A fresh bounded sandbox, with the globals chat templates expect."""
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Bounded(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset(BINOP_CHECKS)

        def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
            BINOP_CHECKS[operator](left, right)
            return _check_result(super().call_binop(context, operator, left, right))

        def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
            target = getattr(__obj, "__wrapped__", __obj)  # str.format is wrapped
            owner = getattr(target, "__self__", None) if callable(target) else None
            estimate = METHOD_SIZES.get(getattr(target, "__name__", ""))
            if isinstance(owner, str | bytes) and estimate is not None:
                _check(estimate(owner, args, kwargs), f"the result of {target.__name__}()")
            return _check_result(super().call(__context, __obj, *args, **kwargs))

    def raise_exception(message: str) -> None:
        raise TemplateError(f"the chat template refused the conversation: {message}")

    env = Bounded(trim_blocks=True, lstrip_blocks=True, undefined=jinja2.Undefined)
    env.policies["json.dumps_kwargs"] = {"ensure_ascii": False}
    env.filters["tojson"] = lambda v, indent=None: json.dumps(v, ensure_ascii=False, indent=indent)
    env.filters = {name: _guard_filter(name, f) for name, f in env.filters.items()}
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    env.globals["lipsum"] = _lipsum
    env.globals["namespace"] = _namespace_factory()
    env.finalize = finalize
    env.concat = _bounded("".join)  # type: ignore[method-assign]
    return env


def compile_template(source: str) -> Any:
    """Parse, check the nesting, compile; the caller maps errors and bounds the time."""
    env = environment()
    tree = env.parse(source)
    depth = _max_depth(tree)
    if depth > MAX_DEPTH:
        raise refuse(f"nests deeper than {MAX_DEPTH} levels")
    template = env.from_string(tree)
    namespace = template.root_render_func.__globals__  # the compiled module's globals
    namespace["str_join"] = _bounded(namespace["str_join"])
    namespace["markup_join"] = _bounded(namespace["markup_join"])
    return template
