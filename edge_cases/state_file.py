"""Reading status/watchdog.json from outside, as an operator or a script does.

The file is read through the core's typed record (`trainguard.watchdog_status`), never as loose
keys: a scenario asks `status.restart_count`, and a key the watchdog renamed fails mypy, not a
scenario at 3 a.m.
"""

from __future__ import annotations

from edge_cases.scenario import ScenarioFailed
from trainguard.watchdog_status import CrashRecord


def resumed_step(restart: CrashRecord) -> int:
    """The checkpoint step a restart of the state file resumed from."""
    name = restart.resume_from
    if name is None or not name.startswith("checkpoint-"):
        raise ScenarioFailed(f"the restart resumed from {name!r}, not from a checkpoint")
    return int(name.removeprefix("checkpoint-"))
