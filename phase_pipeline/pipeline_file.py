"""PIPELINE.toml: the phases of an experiment, their order and what each must leave behind.

Checked whole before anything runs: one line per problem, naming the key, exit 78.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainguard.config import read_toml
from trainguard.errors import ConfigError

PLACEHOLDERS = frozenset({"python", "run_dir", "checkpoint"})
# A phase's name is a key of the state file's [phases]: no `=`, `:`, brackets or spaces.
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_TOP_KEYS = {"name", "version", "phases"}
_PHASE_KEYS = {
    "name", "command", "depends_on", "outputs", "timeout", "provides_checkpoint", "inputs",
    "ramdisk",
}  # fmt: skip


@dataclass(frozen=True)
class Phase:
    name: str
    command: tuple[str, ...]  # argv; placeholders {python}, {run_dir}, {checkpoint}
    depends_on: tuple[str, ...]
    outputs: tuple[str, ...]  # relative to the run dir; each must exist (a glob: match)
    timeout: float  # seconds; 0 = none
    provides_checkpoint: str | None  # glob relative to the run dir; the newest match is kept
    inputs: tuple[str, ...]  # relative to the pipeline's folder; checked before it starts
    ramdisk: tuple[str, ...]

    @property
    def uses_checkpoint(self) -> bool:
        return any("{checkpoint}" in arg for arg in self.command)


@dataclass(frozen=True)
class Pipeline:
    path: Path  # the PIPELINE.toml, resolved; phases run in its folder
    name: str
    version: str
    phases: tuple[Phase, ...]  # in an order where each comes after what it depends on

    @property
    def folder(self) -> Path:
        return self.path.parent

    def phase(self, name: str) -> Phase:
        return next(p for p in self.phases if p.name == name)

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.phases]

    def dependants(self, name: str) -> list[str]:
        """Every phase that needs `name`, directly or through another one."""
        found: list[str] = []
        for phase in self.phases:  # dependency order: a dependant comes after its needs
            if name in phase.depends_on or set(phase.depends_on) & set(found):
                found.append(phase.name)
        return found


def load_pipeline(path: Path) -> Pipeline:
    label = str(path)
    data = read_toml(path, "pipeline file")
    problems: list[str] = []

    def bad(key: str, message: str) -> None:
        problems.append(f"{label}: {key}: {message}")

    for key in sorted(set(data) - _TOP_KEYS):
        bad(key, "unknown key (known: name, version, [[phases]])")
    name = data.get("name")
    if name is None:
        bad("name", 'required: the pipeline\'s name, e.g. "latentwire"')
        name = ""
    elif not isinstance(name, str) or not _NAME.match(name.strip()):
        bad("name", f"must be letters, digits, _ . - (it names the run's folder; got {name!r})")
        name = ""
    version = data.get("version", "")
    if not isinstance(version, (str, int, float)) or isinstance(version, bool):
        bad("version", f'must be a string such as "3.1.0" (got {version!r})')
        version = ""
    raw = data.get("phases")
    if not isinstance(raw, list) or not raw or not all(isinstance(p, dict) for p in raw):
        bad("phases", "required: one [[phases]] table per phase, each with name and command")
        raw = []
    phases = [_phase(index, entry, bad) for index, entry in enumerate(raw)]
    _check_names(phases, bad)
    ordered = _ordered(phases, bad) if not problems else phases
    if problems:
        raise ConfigError(problems[0], problems=problems)
    return Pipeline(path.resolve(), name.strip(), str(version), tuple(ordered))


def _phase(index: int, entry: dict[str, Any], bad: Callable[[str, str], None]) -> Phase:
    where = f"phases[{index}]"
    name = entry.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        bad(f"{where}.name", f"required: letters, digits, _ . - (got {name!r})")
        name = f"#{index}"
    else:
        where = f"phases[{index}] ({name})"
    for key in sorted(set(entry) - _PHASE_KEYS):
        bad(f"{where}.{key}", f"unknown key (known: {', '.join(sorted(_PHASE_KEYS))})")
    command = entry.get("command")
    if not isinstance(command, list) or not command or not all(isinstance(a, str) for a in command):
        bad(f"{where}.command", 'required: an argv list, e.g. ["{python}", "train.py"]')
        command = []
    for position, arg in enumerate(command):
        for field in _fields(arg, f"{where}.command[{position}]", bad):
            if field not in PLACEHOLDERS:
                known = ", ".join("{" + p + "}" for p in sorted(PLACEHOLDERS))
                bad(f"{where}.command[{position}]", f"unknown placeholder {{{field}}} (known: "
                    f"{known})")  # fmt: skip
    timeout = entry.get("timeout", 0)
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout < 0:
        bad(f"{where}.timeout", f"must be seconds >= 0, 0 = none (got {timeout!r})")
        timeout = 0
    provides = entry.get("provides_checkpoint")
    if provides is not None and (not isinstance(provides, str) or not provides.strip()):
        bad(f"{where}.provides_checkpoint", 'must be a glob such as "checkpoint/epoch*"')
        provides = None
    return Phase(
        name=name,
        command=tuple(command),
        depends_on=_strings(entry, "depends_on", where, bad),
        outputs=_strings(entry, "outputs", where, bad),
        timeout=float(timeout),
        provides_checkpoint=provides,
        inputs=_strings(entry, "inputs", where, bad),
        ramdisk=_strings(entry, "ramdisk", where, bad),
    )


def _strings(
    entry: dict[str, Any], key: str, where: str, bad: Callable[[str, str], None]
) -> tuple[str, ...]:
    value = entry.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        bad(f"{where}.{key}", f"must be a list of non-empty strings (got {value!r})")
        return ()
    return tuple(value)


def _check_names(phases: list[Phase], bad: Callable[[str, str], None]) -> None:
    seen: set[str] = set()
    for phase in phases:
        if phase.name in seen:
            bad(f"phases ({phase.name})", "two phases have this name")
        seen.add(phase.name)
    for phase in phases:
        for need in phase.depends_on:
            if need == phase.name:
                bad(f"phases ({phase.name}).depends_on", "a phase cannot depend on itself")
            elif need not in seen:
                bad(f"phases ({phase.name}).depends_on", f"no phase is named {need!r} (phases: "
                    f"{', '.join(p.name for p in phases)})")  # fmt: skip


def _ordered(phases: list[Phase], bad: Callable[[str, str], None]) -> list[Phase]:
    """File order, except that a phase comes after everything it depends on."""
    done: list[Phase] = []
    left = list(phases)
    while left:
        names = {p.name for p in done}
        ready = next((p for p in left if set(p.depends_on) <= names), None)
        if ready is None:
            cycle = ", ".join(p.name for p in left)
            bad("phases", f"depends_on goes round in a circle among: {cycle}")
            return phases
        done.append(ready)
        left.remove(ready)
    return done


def _fields(text: str, where: str, bad: Callable[[str, str], None]) -> list[str]:
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as exc:
        bad(where, f"{exc} (write a literal brace as {{{{ or }}}})")
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
