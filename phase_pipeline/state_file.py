"""`.experiment_state`: the pipeline's state in the seed's INI shape, for people to read and edit.

```ini
[metadata]
version=3.1.0
start_time=1736201422
base_output_dir=runs/latentwire_20240115_143022
[phases]
training=completed
phase1_statistical=in_progress
[checkpoints]
checkpoint_path=runs/latentwire_20240115_143022/checkpoint/epoch23
[failures]
failure_count=1
last_failure=phase2_linear_probe
last_failure_time=2024-01-15T22:45:22Z
```

Written atomically after every transition. A hand edit is honoured on the next run; one that
cannot be read is refused with the line it is on (exit 78) and the file is left as it is.
"""

from __future__ import annotations

import configparser
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from trainguard.atomicio import write_text_atomic
from trainguard.errors import ConfigError

STATE_FILE = ".experiment_state"
PhaseStatus = Literal["pending", "in_progress", "completed", "failed"]
PHASE_STATUSES: tuple[PhaseStatus, ...] = ("pending", "in_progress", "completed", "failed")
SECTIONS = ("metadata", "phases", "checkpoints", "failures")
MAX_BYTES = 1 << 20  # a state file is a few hundred bytes; a huge one is not ours


class StateFileError(ConfigError):
    """A state file that cannot be read (exit 78); the file is left untouched."""


@dataclass(frozen=True)
class PipelineState:
    name: str  # the pipeline's
    pipeline_file: str  # the PIPELINE.toml that made the run
    version: str
    start_time: int  # epoch seconds
    base_output_dir: str  # the run dir
    phases: dict[str, PhaseStatus]  # in pipeline order
    checkpoint_path: str = ""
    failure_count: int = 0
    last_failure: str = ""
    last_failure_time: str = ""
    # [metadata] keys someone added by hand: kept as they are
    extra: dict[str, str] = field(default_factory=dict)

    def with_phase(self, name: str, status: PhaseStatus) -> PipelineState:
        return replace(self, phases={**self.phases, name: status})

    def failed(self, name: str, when: str) -> PipelineState:
        return replace(
            self.with_phase(name, "failed"),
            failure_count=self.failure_count + 1,
            last_failure=name,
            last_failure_time=when,
        )


def render(state: PipelineState) -> str:
    lines = ["[metadata]"]
    lines += [
        f"name={state.name}",
        f"pipeline={state.pipeline_file}",
        f"version={state.version}",
        f"start_time={state.start_time}",
        f"base_output_dir={state.base_output_dir}",
    ]
    lines += [f"{key}={value}" for key, value in state.extra.items()]
    lines.append("[phases]")
    lines += [f"{name}={status}" for name, status in state.phases.items()]
    lines += ["[checkpoints]", f"checkpoint_path={state.checkpoint_path}"]
    lines += [
        "[failures]",
        f"failure_count={state.failure_count}",
        f"last_failure={state.last_failure}",
        f"last_failure_time={state.last_failure_time}",
    ]
    return "\n".join(lines) + "\n"


def write_state(path: Path, state: PipelineState) -> None:
    write_text_atomic(path, render(state))


def state_file_of(path: Path) -> Path:
    """A state file given as itself or as its run dir."""
    return path / STATE_FILE if path.is_dir() else path


def read_state(path: Path, phase_names: Sequence[str] | None = None) -> PipelineState:
    """The state file at `path`, or StateFileError naming the line that is wrong. With
    `phase_names` (the pipeline's), a phase the pipeline lacks is an error too: a misspelt
    hand edit would otherwise be dropped silently."""
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise StateFileError(f"{path}: no such state file") from None
    except IsADirectoryError:
        raise StateFileError(f"{path}: is a folder; give its {STATE_FILE}") from None
    except OSError as exc:
        raise StateFileError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if len(raw) > MAX_BYTES:
        raise StateFileError(f"{path}: over {MAX_BYTES} bytes: not a state file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise StateFileError(f"{path}:{line}: not UTF-8 text (a damaged file?)") from None
    return parse_state(text, str(path), phase_names)


def parse_state(text: str, label: str, phase_names: Sequence[str] | None = None) -> PipelineState:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keep names' case
    try:
        parser.read_string(text, source=label)
    except configparser.MissingSectionHeaderError as exc:
        raise StateFileError(
            f"{label}:{exc.lineno}: {exc.line.strip()!r} comes before any [section] "
            "(a state file starts with [metadata])"
        ) from None
    except configparser.ParsingError as exc:
        lineno = exc.errors[0][0]
        line = text.splitlines()[lineno - 1].strip()
        raise StateFileError(
            f"{label}:{lineno}: cannot parse {line!r}: write key=value (a truncated file?)"
        ) from None
    except (configparser.DuplicateOptionError, configparser.DuplicateSectionError) as exc:
        raise StateFileError(f"{label}:{exc.lineno}: {exc.message.split(': ', 1)[-1]}") from None
    except configparser.Error as exc:
        raise StateFileError(f"{label}: {exc.message}") from None
    where = _Locator(text, label)
    for section in SECTIONS:
        if not parser.has_section(section):
            raise StateFileError(
                f"{label}: no [{section}] section (a truncated or foreign file?); "
                f"a state file has {', '.join(f'[{s}]' for s in SECTIONS)}"
            )
    meta = parser["metadata"]
    start = meta.get("start_time", "")
    if not start.strip().isdigit():
        raise StateFileError(
            f"{where.line('metadata', 'start_time')}: start_time must be epoch seconds "
            f"(got {start!r})"
        )
    phases: dict[str, PhaseStatus] = {}
    for name, value in parser["phases"].items():
        status = value.strip()
        if status not in PHASE_STATUSES:
            raise StateFileError(
                f"{where.line('phases', name)}: {name}={value!r}: must be one of "
                f"{', '.join(PHASE_STATUSES)}"
            )
        if phase_names is not None and name not in phase_names:
            raise StateFileError(
                f"{where.line('phases', name)}: no phase {name!r} in the pipeline "
                f"(phases: {', '.join(phase_names)})"
            )
        phases[name] = status
    failures = parser["failures"]
    count = failures.get("failure_count", "0").strip() or "0"
    if not count.isdigit():
        raise StateFileError(
            f"{where.line('failures', 'failure_count')}: failure_count must be a whole number "
            f"(got {count!r})"
        )
    known = {"name", "pipeline", "version", "start_time", "base_output_dir"}
    return PipelineState(
        name=meta.get("name", "").strip(),
        pipeline_file=meta.get("pipeline", "").strip(),
        version=meta.get("version", "").strip(),
        start_time=int(start.strip()),
        base_output_dir=meta.get("base_output_dir", "").strip(),
        phases=phases,
        checkpoint_path=parser["checkpoints"].get("checkpoint_path", "").strip(),
        failure_count=int(count),
        last_failure=failures.get("last_failure", "").strip(),
        last_failure_time=failures.get("last_failure_time", "").strip(),
        extra={k: v for k, v in meta.items() if k not in known},
    )


class _Locator:
    """`FILE:LINE` of a key in a section, for errors about values configparser accepted."""

    def __init__(self, text: str, label: str) -> None:
        self.lines = text.splitlines()
        self.label = label

    def line(self, section: str, key: str) -> str:
        current = None
        for number, line in enumerate(self.lines, 1):
            stripped = line.strip()
            if stripped.startswith("[") and stripped.endswith("]"):
                current = stripped[1:-1].strip()
            elif current == section and stripped.partition("=")[0].partition(":")[0].strip() == key:
                return f"{self.label}:{number}"
        return f"{self.label}: [{section}]"
