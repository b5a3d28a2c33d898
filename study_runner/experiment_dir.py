"""The experiment folders under OUT: `state.json`, `error.log`, `output.log`, and the
experiment's own `predictions.jsonl`. The ledger is the truth; these are projections of it,
written atomically, for people and scripts (the executor adds its counters to state.json)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from study_runner.grid import Experiment
from task_queue.ledger import Attempt, Task
from trainguard.atomicio import read_json, write_json_atomic, write_text_atomic

STATE_FILE = "state.json"
ERROR_LOG = "error.log"
OUTPUT_LOG = "output.log"
PHASES = ("pending", "running", "completed", "failed", "interrupted")


def phase_of(task: Task) -> str:
    """The experiment's phase from its task: pending, running, completed, failed, interrupted
    (stopped by Ctrl+C, a cancel, or a runner that died, and not run since)."""
    if task.status == "done":
        return "completed"
    if task.status in ("running", "failed"):
        return task.status
    if task.status == "cancelled":
        return "interrupted"
    last = task.attempts[-1] if task.attempts else None
    if last is not None and last.outcome in ("interrupted", "worker_lost") and not last.counted:
        return "interrupted"
    return "pending"


def write_state(folder: Path, experiment: Experiment, task: Task) -> dict[str, Any]:
    """Replace `state.json` from the ledger, keeping what the experiment wrote there itself
    (the executor's `predictions_complete` / `total_questions`)."""
    folder.mkdir(parents=True, exist_ok=True)
    previous = read_state(folder)
    attempts = task.attempts
    first = attempts[0] if attempts else None
    last = attempts[-1] if attempts else None
    phase = phase_of(task)
    state = {
        **previous,
        "name": experiment.name,
        "phase": phase,
        "error": _error(task) if phase in ("failed", "interrupted") else None,
        "predictions_complete": previous.get("predictions_complete"),
        "total_questions": previous.get("total_questions"),
        "attempts": len([a for a in attempts if a.outcome is not None or a is last]),
        "started_at": first.started_at if first else None,
        "ended_at": last.ended_at if last and phase != "running" else None,
        "params": experiment.params,
        "task_id": task.id,
    }
    write_json_atomic(folder / STATE_FILE, state)
    if phase == "failed" and last is not None:
        write_error_log(folder, experiment, task, last)
    return state


def read_state(folder: Path) -> dict[str, Any]:
    try:
        data = read_json(folder / STATE_FILE)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_error_log(folder: Path, experiment: Experiment, task: Task, attempt: Attempt) -> None:
    """The error, the experiment's spec, and the full traceback from its output."""
    lines = [
        f"error: {attempt.error or 'unknown'}",
        f"category: {attempt.category or '-'}",
        f"attempt {attempt.number} on {attempt.worker} ({attempt.host}), "
        f"{attempt.started_at} - {attempt.ended_at}, exit code {attempt.exit_code}",
        "",
        "experiment:",
        json.dumps(experiment.spec(), indent=2),
        "",
        "traceback:",
        _traceback(folder / OUTPUT_LOG, attempt)
        or attempt.traceback_tail
        or "(none in its output)",
    ]
    write_text_atomic(folder / ERROR_LOG, "\n".join(lines) + "\n")


def _traceback(output: Path, attempt: Attempt) -> str:
    """The whole last traceback of this attempt's output (the ledger keeps only its tail)."""
    try:
        with open(output, "rb") as fh:
            fh.seek(attempt.log_offset or 0)
            text = fh.read(4 << 20).decode("utf-8", "replace")
    except OSError:
        return ""
    start = text.rfind("Traceback (most recent call last)")
    return text[start:].rstrip() if start >= 0 else ""


def _error(task: Task) -> str | None:
    for attempt in reversed(task.attempts):
        if attempt.error:
            return attempt.error
    return None
