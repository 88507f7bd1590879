"""The public API holds as documented: every name in ``ggrun.__all__`` is what it says
once every submodule has been imported (a submodule must never shadow a function of the
package: ``ggrun.batch`` was once replaced by its own module), and every ``ggrun.X(...)``
and ``model.X(...)`` the README shows exists and is called here or in the module's tests."""

from __future__ import annotations

import importlib
import pkgutil
import re
import types
from pathlib import Path
from typing import Any

import ggrun

README = Path(__file__).resolve().parent.parent / "README.md"


def _import_everything() -> None:
    for m in pkgutil.walk_packages(ggrun.__path__, "ggrun."):
        if not m.name.startswith(("ggrun.cli", "ggrun.__main__")):
            importlib.import_module(m.name)


def test_no_submodule_shadows_a_public_name() -> None:
    _import_everything()
    for name in ggrun.__all__:
        value = getattr(ggrun, name)
        assert not isinstance(value, types.ModuleType), f"ggrun.{name} is a module"
        assert callable(value), f"ggrun.{name} is not callable"


def test_every_entry_point_the_readme_names_exists(smol: Any) -> None:
    text = README.read_text()
    for name in set(re.findall(r"\bggrun\.([a-z_]+)\(", text)):
        assert callable(getattr(ggrun, name, None)), f"README names ggrun.{name}(...)"
    for name in set(re.findall(r"\bmodel\.([a-z_]+)\(", text)):
        assert callable(getattr(smol, name, None)), f"README names model.{name}(...)"


def test_batch_functions_after_every_submodule_is_imported(smol: Any) -> None:
    _import_everything()
    prompts = ["Say A.", "Say B.", "Say C."]
    ordered = ggrun.batch(smol, prompts, parallel=2, max_tokens=4, temperature=0)
    assert [r.id for r in ordered] == [0, 1, 2] and all(r.text for r in ordered)
    streamed = list(ggrun.batch_stream(smol, prompts, parallel=2, max_tokens=4, temperature=0))
    assert sorted(r.id for r in streamed) == [0, 1, 2]
    assert {r.id: r.text for r in streamed} == {r.id: r.text for r in ordered}
