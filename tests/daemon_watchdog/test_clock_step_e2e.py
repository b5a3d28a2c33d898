"""A wall-clock step (NTP) between recording the daemon and re-reading it changes nothing.

psutil's create_time() on Linux is the boot time (/proc/stat btime, which a clock step moves)
plus the kernel's tick count since boot (which it does not). What a step looks like to a later
reader is a recorded create_time that no longer equals the live one: the tests shift the
recorded one in status/watchdog.json, and never touch the real clock.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterable
from typing import Any

import psutil
import pytest

from tests.daemon_watchdog.test_supervisor_e2e import Run, _running_past, run
from trainguard.atomicio import write_json_atomic

pytestmark = pytest.mark.e2e
__all__ = ["run"]  # the fixture, imported for its name

STEP_S = 5.0


def shift_recorded_starts(run: Run, seconds: float) -> dict[str, Any]:
    """Shift the create_time of every identity the state file records, as a clock step would
    to the live processes; the state file must not be rewritten meanwhile (no live watchdog
    writing, or one that is frozen). Returns the state as written."""
    state = run.status()
    assert state, "no state file to shift"
    for key in ("daemon", "watchdog"):
        identity = state.get(key)
        if isinstance(identity, dict):
            identity["create_time"] += seconds
    write_json_atomic(run.base / "status" / "watchdog.json", state)
    return state


def kill_leftovers(procs: Iterable[psutil.Process]) -> None:
    """SIGKILL what is left of a snapshot; psutil refuses a pid that now names someone else."""
    procs = list(procs)
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(signal.SIGKILL)
    psutil.wait_procs(procs, timeout=10)


def test_a_restarted_watchdog_adopts_its_daemon_across_a_clock_step(run: Run) -> None:
    first = run.start()
    status = run.wait_for(_running_past(10), "training past step 10")
    daemon_pid = status["daemon_pid"]
    assert status["daemon"]["start_ticks"] is not None and status["daemon"]["boot_id"]
    daemon = psutil.Process(daemon_pid)
    tree = run.daemon_tree()
    try:
        first.send_signal(signal.SIGKILL)  # the daemon trains on, unsupervised
        first.wait()
        shifted = shift_recorded_starts(run, STEP_S)
        assert abs(shifted["daemon"]["create_time"] - daemon.create_time() - STEP_S) < 0.01

        second = run.start()
        adopted = run.wait_for(
            lambda s: s.get("watchdog_pid") == second.pid and s.get("state") == "RUNNING",
            "the new watchdog running",
        )

        assert adopted["daemon_pid"] == daemon_pid
        assert adopted["restart_count"] == 0
        assert f"adopted running daemon pid {daemon_pid}" in run.tail()
        assert daemon.is_running() and daemon.status() != psutil.STATUS_ZOMBIE
        daemons = [
            p
            for p in run.daemon_tree()
            if "daemon_watchdog.example.daemon" in " ".join(p.cmdline())
        ]
        assert [p.pid for p in daemons] == [daemon_pid], "a second daemon was started"
        # Recorded anew at adoption: the kernel's part unchanged, the create_time psutil's now.
        assert adopted["daemon"]["start_ticks"] == status["daemon"]["start_ticks"]
    finally:
        run.stop_all()
        kill_leftovers(tree)
