"""The study's experiments: every combination of the grid, each with its name and argv."""

from __future__ import annotations

import itertools
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from study_runner.study_file import Study
from trainguard.errors import ConfigError

_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+=@-]*$")


@dataclass(frozen=True)
class Experiment:
    name: str  # also its folder's name under OUT
    params: dict[str, Any]  # one value per grid key
    argv: tuple[str, ...]
    inputs: tuple[str, ...] = ()  # STUDY.toml [preflight] inputs, placeholders filled
    ramdisk: tuple[str, ...] = ()

    def spec(self) -> dict[str, Any]:
        return {"name": self.name, "params": self.params, "argv": list(self.argv)}


def expand(study: Study, out: Path) -> list[Experiment]:
    """Every combination, in grid order; ConfigError (exit 78) for a name that is not a safe
    folder name or that two combinations share."""
    keys = list(study.grid)
    experiments: list[Experiment] = []
    seen: dict[str, dict[str, Any]] = {}
    for values in itertools.product(*(study.grid[key] for key in keys)):
        params = dict(zip(keys, values, strict=True))
        text = {key: _text(value) for key, value in params.items()}
        name = study.name_template.format_map(text)
        if not _SAFE.match(name) or name in (".", ".."):
            raise ConfigError(
                f"{study.path}: name_template: gives {name!r} for {params}: an experiment's "
                "name is its folder's name (letters, digits and . _ + = @ -)"
            )
        if name in seen:
            raise ConfigError(
                f"{study.path}: name_template: {seen[name]} and {params} both give {name!r}"
            )
        seen[name] = params
        fill = {**text, "python": sys.executable, "experiment_dir": str(out / name)}
        argv = tuple(arg.format_map(fill) for arg in study.command)
        inputs = tuple(entry.format_map(fill) for entry in study.preflight.inputs)
        ramdisk = tuple(entry.format_map(fill) for entry in study.preflight.ramdisk)
        experiments.append(Experiment(name, params, argv, inputs, ramdisk))
    return experiments


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
