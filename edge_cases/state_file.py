"""Reading status/watchdog.json from outside, as an operator or a script does."""

from __future__ import annotations

from typing import Any

from edge_cases.scenario import ScenarioFailed

Status = dict[str, Any]


def step_of(status: Status) -> int:
    step = (status.get("last_progress") or {}).get("step")
    return step if isinstance(step, int) else 0


def resumed_step(restart: object) -> int:
    """The checkpoint step a `restarts` entry of the state file resumed from."""
    name = restart.get("resume_from") if isinstance(restart, dict) else None
    if not isinstance(name, str) or not name.startswith("checkpoint-"):
        raise ScenarioFailed(f"the restart resumed from {name!r}, not from a checkpoint")
    return int(name.removeprefix("checkpoint-"))
