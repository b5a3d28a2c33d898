"""Trainers without the progress protocol: alive by their log output, hung when it stops."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon_watchdog.workspace_init import init_workspace
from tests.daemon_watchdog.test_supervisor_e2e import Run, _set_key

pytestmark = pytest.mark.e2e

PRINTS_STEPS = Path(__file__).resolve().parents[1] / "children" / "prints_steps.py"


def _printing_trainer(run: Run, *args: str, **watchdog: object) -> None:
    """The workspace's daemon replaced by a script that only prints `step N` lines."""
    command = [sys.executable, str(PRINTS_STEPS), *args]
    text = _set_key(run.config.read_text(), "daemon", "command", command)
    for key, value in watchdog.items():
        text = _set_key(text, "watchdog", key, value)
    run.config.write_text(text)


@pytest.fixture
def printing(tmp_path: Path) -> Iterator[Run]:
    base = tmp_path / "ws"
    init_workspace(base)
    run = Run(base)
    # Tight enough that the old rule (no progress file = hung) fires long before it ends.
    run.configure(startup_grace=2, progress_timeout=2, max_restarts=0)
    try:
        yield run
    finally:
        run.stop_all()


def test_a_trainer_that_only_prints_runs_to_the_end_and_its_steps_are_read(printing: Run) -> None:
    _printing_trainer(printing, "120", "0.05", progress_regex=r"step (\d+) \|")
    printing.start()
    running = printing.wait_for(
        lambda s: (
            s.get("state") == "RUNNING" and (s.get("last_progress") or {}).get("step", 0) >= 5
        ),
        "RUNNING with steps read from the log",
    )
    assert running["liveness"] == "log output"
    assert "no progress file" in running["liveness_note"]
    done = printing.wait_for(lambda s: s.get("state") == "STOPPED", "finished", timeout=60)
    assert done["restart_count"] == 0 and done["last_crash"] is None


def test_a_printing_trainer_that_goes_silent_is_hung_and_told_about_the_protocol(
    printing: Run,
) -> None:
    _printing_trainer(printing, "10", "0.05", "hang")
    printing.start()
    printing.wait_for(lambda s: s.get("state") == "RUNNING", "RUNNING by its output")
    fatal = printing.wait_for(lambda s: s.get("state") == "FATAL", "hung, then FATAL")
    assert "hang: no new output in the daemon log for" in fatal["last_crash"]["reason"]
    assert "never wrote a progress file" in fatal["fatal_reason"]


def test_with_liveness_progress_a_printing_trainer_is_hung_as_before(printing: Run) -> None:
    _printing_trainer(printing, "400", "0.05", liveness="progress")
    printing.start()
    fatal = printing.wait_for(lambda s: s.get("state") == "FATAL", "hung, then FATAL")
    assert "no first progress within startup_grace" in fatal["last_crash"]["reason"]
    assert 'liveness = \\"log\\"' in json.dumps(fatal["fatal_reason"])
