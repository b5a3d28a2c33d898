"""The progress protocol: the one small file through which a trainer proves it is alive.

A trainer writes `status/progress.json` after every step:
`{"step": int, "phase": str, "total_steps": int?, "loss": float?, "updated_at": ISO-8601, ...}`.
A supervisor counts it as progress when `step` grew or `phase` changed (see `is_progress`); the
wall clock in `updated_at` is for humans, never for timeouts (those use the reader's monotonic
clock, from the moment it saw the change).

Writes replace the file atomically, so a reader sees the old or the new state, never half of one.
The writer is strict about types; the reader accepts any conforming trainer's file (`phase` may be
missing and means "train"; a naive `updated_at` means UTC).

A NaN or infinite loss is written as JSON's de-facto `NaN` / `Infinity` literals, as Python's
`json` module and the Hugging Face Trainer's `trainer_state.json` do: a diverged loss is exactly
what an operator must see, and replacing it by `null` would hide it. Strict JSON parsers reject
those literals; Python, JavaScript's JSON5 and `jq` >= 1.7 read them.

A planned stop loses nothing (#20): the watchdog writes `save_request.json` (`{"requested_at":
ISO-8601, "step": int}`) beside the progress file, and a trainer that answers saves a checkpoint
at its next step boundary and removes the file once that checkpoint is complete. A trainer says
that it answers with `"saves_on_request": true` in its progress: `ProgressWriter` adds it once
the loop has asked `save_requested()`, so the watchdog never waits on one that never looks.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from trainguard.atomicio import UnreadableJson, read_json, write_json_atomic
from trainguard.timestamps import parse_iso_utc

DEFAULT_PHASE = "train"
SAVE_REQUEST_NAME = "save_request.json"


class ProgressError(ValueError):
    """A progress file, or a value meant for one, that does not follow the protocol."""


@dataclass(frozen=True)
class Progress:
    step: int
    phase: str
    total_steps: int | None = None
    loss: float | None = None
    updated_at: datetime | None = None
    saves_on_request: bool = False  # it answers a save request (see the module's doc)
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)


def write_progress(
    path: str | os.PathLike[str],
    step: int,
    phase: str = DEFAULT_PHASE,
    *,
    total_steps: int | None = None,
    loss: float | None = None,
    updated_at: datetime | None = None,
    **extra: Any,
) -> None:
    """Atomically replace `path` with the progress record; creates the parent folder.

    `updated_at` defaults to now; `extra` keys (e.g. `eval_loss`) are written alongside and must
    be JSON-serialisable (the protocol keys are parameters, so `extra` cannot shadow them).
    """
    _check_int("step", step, required=True)
    if not isinstance(phase, str) or not phase:
        raise ProgressError(f"phase: must be a non-empty string, got {phase!r}")
    _check_int("total_steps", total_steps, required=False)
    _check_loss(loss)
    when = updated_at if updated_at is not None else datetime.now(timezone.utc)
    if not isinstance(when, datetime) or when.tzinfo is None:
        raise ProgressError(f"updated_at: must be a timezone-aware datetime, got {when!r}")
    record: dict[str, Any] = {
        "step": step,
        "phase": phase,
        "updated_at": when.astimezone(timezone.utc).isoformat().replace("+00:00", "Z"),
    }
    if total_steps is not None:
        record["total_steps"] = total_steps
    if loss is not None:
        record["loss"] = float(loss)
    record.update(extra)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(target, record)


class ProgressWriter:
    """A progress file bound to its path and the run's `total_steps`, for a trainer's loop.

    for step in range(start, total + 1):
        loss = train_step(...)
        progress.write(step, loss=loss)
        if step % save_steps == 0 or progress.save_requested():
            progress.write(step, "save")  # a save is a phase of its own (#20)
            save_checkpoint(...)          # complete: written, then renamed into place
            progress.saved()
    """

    def __init__(self, path: str | os.PathLike[str], *, total_steps: int | None = None) -> None:
        self.path = Path(path)
        self.total_steps = total_steps
        self.save_request = save_request_file(self.path)
        self.answers_save_requests = False  # set by the first save_requested()

    def write(
        self, step: int, phase: str = DEFAULT_PHASE, *, loss: float | None = None, **extra: Any
    ) -> None:
        if self.answers_save_requests:
            extra = {**extra, "saves_on_request": True}
        write_progress(self.path, step, phase, total_steps=self.total_steps, loss=loss, **extra)

    def save_requested(self) -> bool:
        """Whether the watchdog asks for a checkpoint before a planned stop: save one at this
        step boundary, then call `saved()`. One `stat` per call."""
        self.answers_save_requests = True
        return self.save_request.exists()

    def saved(self) -> None:
        """The checkpoint is complete: the watchdog may stop the trainer now."""
        with suppress(FileNotFoundError):
            os.unlink(self.save_request)

    def read(self) -> Progress | None:
        return read_progress(self.path)


def save_request_file(progress_file: str | os.PathLike[str]) -> Path:
    """Where the watchdog asks for a save: beside the progress file (`status/`)."""
    return Path(progress_file).with_name(SAVE_REQUEST_NAME)


def read_progress(path: str | os.PathLike[str]) -> Progress | None:
    """The progress in `path`, or None when there is none yet.

    Raises ProgressError for a file that is not a valid progress record; other OSErrors
    (permissions, a folder in the way) propagate, since they are not the trainer's doing.
    """
    try:
        data = read_json(path)
    except FileNotFoundError:
        return None
    except UnreadableJson as exc:
        raise ProgressError(f"{path}: {exc}") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise ProgressError(f"{path}: not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ProgressError(f"{path}: expected a JSON object, got {type(data).__name__}")
    try:
        return _parse(data)
    except ProgressError as exc:
        raise ProgressError(f"{path}: {exc}") from None


def is_progress(old: Progress | None, new: Progress) -> bool:
    """Whether `new` shows progress over `old`: the step grew or the phase changed.

    A step that went down (a run resumed from an earlier checkpoint) is not progress by itself;
    a supervisor that restarts the trainer should forget `old` at the restart.
    """
    if old is None:
        return True
    return new.step > old.step or new.phase != old.phase


def _parse(data: dict[str, Any]) -> Progress:
    if "step" not in data:
        raise ProgressError("step: missing")
    step = data["step"]
    _check_int("step", step, required=True)
    phase = data.get("phase", DEFAULT_PHASE)
    if not isinstance(phase, str) or not phase:
        raise ProgressError(f"phase: must be a non-empty string, got {phase!r}")
    total_steps = data.get("total_steps")
    _check_int("total_steps", total_steps, required=False)
    loss = data.get("loss")
    _check_loss(loss)
    return Progress(
        step=step,
        phase=phase,
        total_steps=total_steps,
        loss=None if loss is None else float(loss),
        updated_at=_parse_time(data.get("updated_at")),
        saves_on_request=data.get("saves_on_request") is True,
        raw=data,
    )


def _check_int(key: str, value: object, *, required: bool) -> None:
    if value is None and not required:
        return
    # bool is an int subclass, and `"step": true` is a bug, not step 1.
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ProgressError(f"{key}: must be a non-negative integer, got {value!r}")


def _check_loss(value: object) -> None:
    if value is None:
        return
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ProgressError(f"loss: must be a number, got {value!r}")


def _parse_time(value: object) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ProgressError(f"updated_at: must be an ISO-8601 string, got {value!r}")
    when = parse_iso_utc(value)
    if when is None:
        raise ProgressError(f"updated_at: not an ISO-8601 time: {value!r}")
    return when
