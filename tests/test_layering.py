"""The house rules, checked on the source: who imports whom, and no reaching into privates.

Each module of ``ggrun/`` sits on a floor (:data:`FLOORS`); it may import modules on its
own floor or below, never above, and no two modules import each other through any chain
(function-level imports count too: a lazy import is still a dependency). The runtime
never imports the converter package by its bare name. No module touches another
object's ``_private`` attributes: ``obj._x`` is allowed only when ``_x`` belongs to the
same module (``self._x``, or a name this module defines).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "ggrun"

FLOORS: dict[str, int] = {
    "ggrun.errors": 1,
    "ggrun.files": 1,
    **dict.fromkeys(
        [
            "ggrun.llama",
            "ggrun.sysparse",
            "ggrun.presets",
            "ggrun.gguffile",
            "ggrun.ggufcheck",
            "ggrun.templates",
            "ggrun.template_sandbox",
            "ggrun.sampling",
            "ggrun.structured",
            "ggrun.schema_gbnf",
            "ggrun.hardware",
            "ggrun.planner",
            "ggrun.models",
            "ggrun.runinfo",
            "ggrun.jsonl",
            "ggrun.tasks",
            "ggrun.tools",
        ],
        2,
    ),
    "ggrun.request": 3,
    "ggrun.textstream": 3,
    "ggrun.speculative": 3,
    "ggrun.promptcache": 3,
    "ggrun.decoder": 4,
    "ggrun.redraw": 4,
    "ggrun.engine": 5,
    **dict.fromkeys(
        [
            "ggrun.chat",
            "ggrun.mcp_tools",
            "ggrun.batching",
            "ggrun.pool",
            "ggrun.flight",
            "ggrun.distributed",
            "ggrun.benchmark",
            "ggrun.evaluate",
            "ggrun.converter",
        ],
        6,
    ),
    **dict.fromkeys(
        [
            "ggrun.api",
            "ggrun.api.openai",
            "ggrun.api.ollama",
            "ggrun.api.responses",
            "ggrun.api.anthropic",
            "ggrun.webpage",
            "ggrun.server",
            "ggrun",
        ],
        7,
    ),
}
CLI_FLOOR = 8


def modules() -> dict[str, Path]:
    out = {}
    for p in sorted(PKG.rglob("*.py")):
        rel = p.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = p
    return out


def floor(name: str) -> int:
    if name.startswith("ggrun.cli") or name == "ggrun.__main__":
        return CLI_FLOOR
    return FLOORS[name]


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for sub in node.body:
                for n in ast.walk(sub):
                    if hasattr(n, "lineno"):
                        lines.add(n.lineno)
    return lines


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The ggrun modules ``name`` imports anywhere in its code (not under TYPE_CHECKING)."""
    tree = ast.parse(path.read_text())
    skip = _type_checking_lines(tree)
    out: set[str] = set()
    pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if getattr(node, "lineno", 0) in skip:
            continue
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name in known)
            out.update("convert" for a in node.names if a.name.split(".")[0] == "convert")
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            if base.split(".")[0] == "convert":
                out.add("convert")
            for a in node.names:
                full = f"{base}.{a.name}"
                if full in known:
                    out.add(full)
                elif base in known:
                    out.add(base)
    out.discard(name)
    return out


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {n: imports(n, p, known) for n, p in mods.items()}


def test_every_module_has_a_floor() -> None:
    cli = [n for n in modules() if n.startswith("ggrun.cli") or n == "ggrun.__main__"]
    missing = [n for n in modules() if n not in cli and n not in FLOORS]
    assert not missing, f"give these modules a floor in FLOORS: {missing}"


def test_imports_go_down_never_up() -> None:
    bad = [
        f"{a} (floor {floor(a)}) imports {b} (floor {floor(b)})"
        for a, deps in graph().items()
        for b in deps
        if b != "convert" and floor(b) > floor(a)
    ]
    assert not bad, "\n".join(bad)


def test_no_import_cycles() -> None:
    g = graph()
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(n: str, path: list[str]) -> None:
        state[n] = 1
        for m in sorted(g.get(n, ())):
            if m not in g:
                continue
            if state.get(m) == 1:
                cycles.append([*path[path.index(m) :], m] if m in path else [n, m])
            elif m not in state:
                visit(m, [*path, m])
        state[n] = 2

    for n in sorted(g):
        if n not in state:
            visit(n, [n])
    assert not cycles, cycles


def test_the_runtime_never_imports_the_bare_converter_name() -> None:
    bad = [n for n, deps in graph().items() if "convert" in deps]
    assert not bad, f"these modules import `convert`: {bad}"


def _defined_privates(tree: ast.AST) -> set[str]:
    """Private names this module defines: functions, classes, attributes it assigns."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return {n for n in names if n.startswith("_")}


ALLOWED_FOREIGN = {"_click"}  # typer vendors click as typer._click


def private_uses(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    own = _defined_privates(tree)
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            a = node.attr
            if not a.startswith("_") or a.startswith("__") or a in own:
                continue
            if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                continue
            bad.append(f"{path.name}:{node.lineno}: .{a}")
        elif isinstance(node, ast.ImportFrom):
            for alias in node.names:
                n = alias.name
                if n.startswith("_") and not n.startswith("__") and n not in ALLOWED_FOREIGN:
                    bad.append(f"{path.name}:{node.lineno}: imports {n}")
    return bad


def test_no_module_reaches_into_another_objects_private_parts() -> None:
    bad = [u for p in modules().values() for u in private_uses(p)]
    assert not bad, "\n".join(bad)


def test_the_checks_can_fail(tmp_path: Path) -> None:
    """The private-access check sees a foreign private attribute and a private import."""
    src = tmp_path / "bad.py"
    src.write_text("from ggrun.engine import _secret\n\ndef f(m):\n    return m._ctx\n")
    assert len(private_uses(src)) == 2
