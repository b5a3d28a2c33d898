"""STUDY.toml: what a study runs. Checked whole before anything runs: one line per problem,
naming the key, and exit 78 (as a bad trainguard.toml)."""

from __future__ import annotations

import re
import string
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainguard.config import read_toml
from trainguard.errors import ConfigError

FIXED_PLACEHOLDERS = frozenset({"python", "experiment_dir"})
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_KNOWN = {"name", "command", "name_template", "max_retries", "grid", "preflight"}


@dataclass(frozen=True)
class StudyPreflight:
    """STUDY.toml's optional [preflight]: checked before each experiment starts."""

    nodes: tuple[str, ...] = ()  # ssh targets, besides trainguard.toml's [preflight] nodes
    inputs: tuple[str, ...] = ()  # files (or globs) each experiment reads; grid placeholders
    ramdisk: tuple[str, ...] = ()  # files that must be staged in RAM; grid placeholders


_PREFLIGHT_KEYS = ("nodes", "inputs", "ramdisk")


@dataclass(frozen=True)
class Study:
    path: Path  # the STUDY.toml; experiments run in its folder
    name: str
    command: tuple[str, ...]  # placeholders: {python}, {experiment_dir}, every grid key
    name_template: str
    max_retries: int  # attempts after the first one (0: one attempt)
    grid: dict[str, tuple[Any, ...]]  # key -> values, in file order
    preflight: StudyPreflight = StudyPreflight()

    @property
    def folder(self) -> Path:
        return self.path.parent


def load_study(path: Path) -> Study:
    label = str(path)
    data = read_toml(path, "study file")
    problems: list[str] = []

    def bad(key: str, message: str) -> None:
        problems.append(f"{label}: {key}: {message}")

    for key in sorted(set(data) - _KNOWN):
        bad(key, "unknown key")
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        bad("name", "required: the study's name (a non-empty string)")
    grid_raw = data.get("grid")
    grid: dict[str, tuple[Any, ...]] = {}
    if not isinstance(grid_raw, dict) or not grid_raw:
        bad("grid", "required: a table of key = [values]; the experiments are every combination")
    else:
        for key, values in grid_raw.items():
            if not _KEY.match(key) or key in FIXED_PLACEHOLDERS:
                bad(f"grid.{key}", "must be a plain name (letters, digits, _), not python or "
                    "experiment_dir")  # fmt: skip
            elif not isinstance(values, list) or not values:
                bad(f"grid.{key}", "must be a non-empty list of values")
            elif not all(isinstance(v, (str, int, float, bool)) for v in values):
                bad(f"grid.{key}", "values must be strings, numbers or booleans")
            elif len({str(v) for v in values}) != len(values):
                bad(f"grid.{key}", "has the same value twice")
            else:
                grid[key] = tuple(values)
    allowed = FIXED_PLACEHOLDERS | set(grid_raw if isinstance(grid_raw, dict) else ())
    command = data.get("command")
    if not isinstance(command, list) or not command or not all(isinstance(a, str) for a in command):
        bad("command", 'required: an argv list, e.g. ["{python}", "eval.py", "--model", "{model}"]')
        command = []
    else:
        for index, arg in enumerate(command):
            for field in _fields(arg, f"command[{index}]", bad):
                if field not in allowed:
                    known = ", ".join("{" + k + "}" for k in sorted(allowed))
                    bad(f"command[{index}]", f"unknown placeholder {{{field}}} (known: {known})")
    template = data.get("name_template")
    if template is None:
        template = "_".join("{" + key + "}" for key in grid)
    if not isinstance(template, str) or not template:
        bad("name_template", 'must be a string such as "{model}_{quantization}"')
        template = ""
    else:
        used = set(_fields(template, "name_template", bad))
        for field in sorted(used - set(grid)):
            bad("name_template", f"unknown placeholder {{{field}}} (grid keys: {', '.join(grid)})")
        missing = [key for key in grid if len(grid[key]) > 1 and key not in used]
        if missing and not problems:
            bad("name_template", f"must use every grid key with several values (missing: "
                f"{', '.join(missing)}), or two experiments would share a name")  # fmt: skip
    retries = data.get("max_retries", 0)
    if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
        bad("max_retries", f"must be an integer >= 0 (got {retries!r})")
        retries = 0
    preflight = _preflight(data.get("preflight", {}), allowed - {"python"}, bad)
    if problems:
        raise ConfigError(problems[0], problems=problems)
    assert isinstance(name, str)
    return Study(
        path=path.resolve(),
        name=name.strip(),
        command=tuple(command),
        name_template=template,
        max_retries=retries,
        grid=grid,
        preflight=preflight,
    )


def _preflight(raw: Any, allowed: Collection[str], bad: Any) -> StudyPreflight:
    if not isinstance(raw, dict):
        bad("preflight", "must be a table: [preflight] with nodes, inputs, ramdisk")
        return StudyPreflight()
    for key in sorted(set(raw) - set(_PREFLIGHT_KEYS)):
        bad(f"preflight.{key}", f"unknown key (known: {', '.join(_PREFLIGHT_KEYS)})")
    found: dict[str, tuple[str, ...]] = {}
    for key in _PREFLIGHT_KEYS:
        value = raw.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            bad(f"preflight.{key}", "must be a list of non-empty strings")
            continue
        for index, entry in enumerate(value):
            where = f"preflight.{key}[{index}]"
            if key == "nodes":
                if entry.startswith("-") or any(c.isspace() for c in entry):
                    bad(where, f"{entry!r} is not an ssh destination (host, user@host)")
                continue
            for field in _fields(entry, where, bad):
                if field not in allowed:
                    known = ", ".join("{" + k + "}" for k in sorted(allowed))
                    bad(where, f"unknown placeholder {{{field}}} (known: {known})")
        found[key] = tuple(value)
    return StudyPreflight(**found)


def _fields(text: str, where: str, bad: Any) -> list[str]:
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as exc:
        bad(where, str(exc))
        return []
    found = []
    for _, field, spec, conversion in parsed:
        if field is None:
            continue
        if spec or conversion or not field:
            bad(where, f"write placeholders plainly, as {{name}} (got {{{field}...}})")
            continue
        found.append(field)
    return found
