"""Test-only: switches off, in `python -m task_queue`, the mechanism that a task-queue edge
case guards (task-queue has no config key for that), so that a test sees the scenario fail.

On PYTHONPATH with EDGE_CASES_SABOTAGE naming the mechanism; every other process is left as is.
"""

from __future__ import annotations

import os
import sys

_WHICH = os.environ.get("EDGE_CASES_SABOTAGE")

if "task_queue" in sys.orig_argv and _WHICH == "orphan_sweep":
    from task_queue.backends import local

    # What a killed attempt left in the runner's tree (its helper) is no longer killed, and
    # no longer looked for by its token either.
    local.LocalBackend.sweep = lambda self, running: []  # type: ignore[method-assign]
elif "task_queue" in sys.orig_argv and _WHICH == "dead_runner_kill":
    from task_queue import manager

    # A new runner no longer kills the processes its dead predecessor left.
    manager.kill_left_by_dead_runner = lambda tokens: []  # type: ignore[attr-defined]
