"""Every scenario of the suite, by family, in the order they are listed, started and reported."""

from __future__ import annotations

from edge_cases.scenario import Scenario
from edge_cases.scenarios import (
    checkpoints,
    config,
    crashes,
    disk,
    gpu,
    hangs,
    pipelines,
    preflight,
    processes,
    queue,
    recovery,
    runners,
    status,
    stops,
    studies,
    watchdog,
)

ALL: tuple[Scenario, ...] = (
    *config.SCENARIOS,
    *disk.SCENARIOS,
    *checkpoints.SCENARIOS,
    *processes.SCENARIOS,
    *gpu.SCENARIOS,
    *status.SCENARIOS,
    *crashes.SCENARIOS,
    *recovery.SCENARIOS,
    *queue.SCENARIOS,
    *runners.SCENARIOS,
    *studies.SCENARIOS,
    *pipelines.SCENARIOS,
    *preflight.SCENARIOS,
    *hangs.SCENARIOS,
    *stops.SCENARIOS,
    *watchdog.SCENARIOS,
)

__all__ = ["ALL"]
