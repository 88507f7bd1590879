"""Few-shot tasks: YAML presets with a system prompt, examples and an output constraint.

A task file (``presets/tasks/NAME.yaml``, or any path) holds:

- ``system``: the instructions;
- ``examples``: ``input`` -> ``output`` pairs, sent as prior user/assistant turns (an
  ``output`` mapping is written as JSON);
- optionally ``schema`` (a JSON Schema) or ``format`` (``json``, ``csv``, ``yaml``,
  ``xml``) to constrain the answer;
- optionally ``prompt`` (how the input is phrased, ``{input}`` marks it), sampling
  settings (the options of :data:`ggrun.sampling.TASK_FIELDS`), ``max_tokens`` and
  ``think``.

Unknown keys and wrong types are :class:`~ggrun.errors.PresetError`\\ s naming the file,
the line and the field. ``model.run_task("sentiment", "I loved it").data``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ggrun import sampling
from ggrun.errors import PresetError
from ggrun.presets import build, line_of, load_yaml, presets_dir


@dataclass(frozen=True)
class Task:
    name: str = ""
    description: str = ""
    system: str = ""
    prompt: str = "{input}"
    examples: tuple[dict[str, Any], ...] = ()
    schema: dict[str, Any] | None = None
    format: str | None = None
    max_tokens: int = 256
    think: bool | None = False
    # the sampling options the file sets (its keys: ggrun.sampling.TASK_FIELDS), checked
    settings: tuple[tuple[str, Any], ...] = field(default=(), metadata={"key": False})

    def messages(self, text: str) -> list[dict[str, str]]:
        msgs = [{"role": "system", "content": self.system}] if self.system else []
        for ex in self.examples:
            out = ex["output"]
            answer = out if isinstance(out, str) else json.dumps(out, ensure_ascii=False)
            msgs += [
                {"role": "user", "content": self.prompt.replace("{input}", ex["input"])},
                {"role": "assistant", "content": answer},
            ]
        msgs.append({"role": "user", "content": self.prompt.replace("{input}", text)})
        return msgs

    def options(self) -> dict[str, Any]:
        """Keyword arguments for ``Model.chat``."""
        opts: dict[str, Any] = {"max_tokens": self.max_tokens, "think": self.think}
        opts.update(self.settings)
        if self.schema is not None:
            opts["schema"] = self.schema
        elif self.format == "json":
            opts["json"] = True
        elif self.format is not None:
            opts["format"] = self.format
        return opts


TASK_KEYS = frozenset(
    [f.name for f in fields(Task) if f.metadata.get("key", True)] + list(sampling.TASK_FIELDS)
)


def presets() -> dict[str, Path]:
    """The task presets: name -> file (``presets/tasks/NAME.yaml``)."""
    return {f.stem: f for f in sorted((presets_dir() / "tasks").glob("*.yaml"))}


def task_path(name: str) -> Path:
    """A task preset's file, or the path of a task file (the operator's own)."""
    p = Path(name).expanduser()
    if p.suffix in (".yaml", ".yml") or p.exists():
        return p
    path = presets().get(name)
    if path is None:
        raise PresetError(f"unknown task {name!r} (known: {', '.join(presets())})")
    return path


def resolve(value: Any, *, files: bool) -> Task:
    """The task that ``value`` names: a :class:`Task` as it is, or a name.

    With ``files`` (the operator's own choice: ``--task``, ``Model.run_task``) a name may
    be a task file's path; without (a batch line, any request read from data) it must
    name a preset: text from a line never makes ggrun open a file.
    """
    if isinstance(value, Task):
        return value
    if not isinstance(value, str):
        raise PresetError(f"task must be the name of a task preset, not {type(value).__name__}")
    if files:
        return load_task(value)
    path = presets().get(value)
    if path is None:
        raise PresetError(
            f"unknown task preset {value[:100]!r} (known: {', '.join(presets())}); "
            "a request names a preset, never a file: pass a task file with --task"
        )
    return load_task(str(path))


def load_task(name: str) -> Task:
    """A task preset by name, or a task file by path (see :func:`resolve`)."""
    path = task_path(name)
    data = load_yaml(path, "ggrun task")
    where = str(path)
    if isinstance(data, dict) and not any(k in TASK_KEYS for k in data):
        # some other YAML file (or a secret): say so without naming its keys
        raise PresetError(f"{where}: not a ggrun task file (it has no 'system' or 'examples')")
    task = build(Task, data, where=where, extra=sampling.TASK_FIELDS)
    values = sampling.from_yaml(data, where=where, allowed=sampling.TASK_FIELDS)
    if not task.system and not task.examples:
        raise PresetError(f"{where}: a task needs a 'system' prompt or 'examples'")
    for i, ex in enumerate(task.examples):
        line = line_of(data.get("examples", [None])[i], "input") if isinstance(data, dict) else 0
        at = f"{where}, example {i + 1}" + (f", line {line}" if line else "")
        if not isinstance(ex, dict) or set(ex) != {"input", "output"}:
            raise PresetError(f"{at}: an example needs exactly 'input' and 'output'")
        if not isinstance(ex["input"], str):
            raise PresetError(f"{at}: 'input' must be a string")
        if not isinstance(ex["output"], (str, dict, list)):
            raise PresetError(f"{at}: 'output' must be a string or a mapping")
    if task.format not in (None, "json", "csv", "yaml", "xml"):
        raise PresetError(f"{where}: format must be json, csv, yaml or xml")
    if "{input}" not in task.prompt:
        raise PresetError(f"{where}: 'prompt' must contain {{input}}")
    return Task(
        **{**task.__dict__, "name": task.name or path.stem, "settings": tuple(values.items())}
    )
