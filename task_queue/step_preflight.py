"""The files one step (a task, an experiment, a phase) needs, checked before it starts.

The same checks as `health-check --preflight` (`inputs`, `ramdisk`), on the paths the step's
own file names: a missing, unreadable or non-regular file refuses the step with one line
saying which file and what to do; an empty one is a warning.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from health_check.checks import inputs as input_check
from health_check.checks import ramdisk as ramdisk_check
from health_check.result import Status


@dataclass(frozen=True)
class StepPreflight:
    refusals: list[str] = field(default_factory=list)  # each one line: which file, what to do
    warnings: list[str] = field(default_factory=list)
    checked: int = 0  # files looked at

    @property
    def passed(self) -> bool:
        return not self.refusals


def check_step_files(folder: Path, inputs: Sequence[str], ramdisk: Sequence[str]) -> StepPreflight:
    """`inputs` and `ramdisk` entries, relative to `folder` unless absolute; an `inputs` entry
    may be a glob pattern that must match at least one file."""
    result = StepPreflight()
    for entry in inputs:
        paths = input_check.expand(folder, entry)
        if not paths:
            result.refusals.append(f"inputs: no file matches {folder / entry}: create or stage it")
        for path in paths:
            status, why, _ = input_check.inspect(path)
            _file(result, "inputs", path, status, why)
    for entry in ramdisk:
        path = folder / entry
        status, why, _ = ramdisk_check.inspect(path)
        _file(result, "ramdisk", path, status, why)
        fstype = ramdisk_check.filesystem_type(path.parent)
        if status == Status.OK and fstype is not None and fstype not in {"tmpfs", "ramfs"}:
            result.warnings.append(f"ramdisk: {path} is on {fstype}, not in RAM")
    return StepPreflight(result.refusals, result.warnings, len(inputs) + len(ramdisk))


def _file(result: StepPreflight, check: str, path: Path, status: Status, why: str) -> None:
    if status == Status.OK:
        return
    if status == Status.WARNING:
        result.warnings.append(f"{check}: {path}: {why}")
        return
    what = "stage it (copy it there)" if check == "ramdisk" else "create it or fix the path"
    result.refusals.append(f"{check}: {path}: {why}: {what}, then resume")
