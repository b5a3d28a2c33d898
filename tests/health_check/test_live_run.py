"""health-check against a real watchdog supervising a real daemon: a healthy run is OK, and
`--fix` never touches it, even when the daemon's cmdline changed after it was recorded or the
wall clock was stepped since."""

from __future__ import annotations

import json
import signal

import psutil
import pytest

from health_check.cli import main
from tests.daemon_watchdog.test_clock_step_e2e import STEP_S, kill_leftovers, shift_recorded_starts
from tests.daemon_watchdog.test_supervisor_e2e import Run, _running_past, run
from tests.health_check.conftest import scope_orphan_patterns
from tests.polling import wait_until

pytestmark = pytest.mark.e2e
__all__ = ["run"]  # the fixture, imported for its name

# A wrapper that execs the real daemon a moment after it starts, as `bash run.sh` with
# `exec python train.py` does: the watchdog records the wrapper's cmdline, which then changes.
WRAPPER = (
    "import os, sys, time; time.sleep(0.5); "
    "os.execv(sys.executable, [sys.executable, '-m', 'daemon_watchdog.example.daemon', "
    "'--base-dir', sys.argv[1]])"
)


def health(run: Run, capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, dict[str, str]]:
    capsys.readouterr()
    main(["-c", str(run.config), "--skip", "gpu", "--json", *args])
    report = json.loads(capsys.readouterr().out)
    return {c["name"]: c for c in report["checks"]}


def use_wrapper(run: Run) -> None:
    text = run.config.read_text()
    old = (
        'command = ["{python}", "-m", "daemon_watchdog.example.daemon", "--base-dir", "{base_dir}"]'
    )
    assert old in text
    run.config.write_text(
        text.replace(old, f"command = {json.dumps(['{python}', '-c', WRAPPER, '{base_dir}'])}")
    )


def test_fix_leaves_a_healthy_run_alone_though_its_daemon_execd(
    run: Run, capsys: pytest.CaptureFixture[str]
) -> None:
    use_wrapper(run)
    scope_orphan_patterns(run.config, run.base.parent)
    run.start()
    status = run.wait_for(_running_past(15), "training past step 15")
    daemon = status["daemon_pid"]
    recorded = status["daemon"]["cmdline"]
    assert "-c" in recorded  # the wrapper's, not the daemon's it became
    worker = run.worker()

    checks = health(run, capsys, "--fix")

    assert checks["daemon"]["status"] == "OK", checks["daemon"]
    assert checks["orphans"]["status"] == "OK", checks["orphans"]
    assert checks["progress"]["status"] == "OK", checks["progress"]
    assert checks["orphans"]["fix"] is None and checks["daemon"]["fix"] is None
    assert worker.is_running()
    after = run.wait_for(_running_past(status["last_progress"]["step"] + 3), "still training")
    assert after["daemon_pid"] == daemon and after["restart_count"] == 0


def test_a_restarted_watchdog_adopts_a_daemon_whose_cmdline_changed(run: Run) -> None:
    use_wrapper(run)
    first = run.start()
    status = run.wait_for(_running_past(10), "training past step 10")
    first.send_signal(signal.SIGKILL)
    first.wait()
    run.start()
    adopted = run.wait_for(
        lambda s: s.get("watchdog_pid") not in (None, first.pid) and s.get("state") == "RUNNING",
        "the new watchdog running",
    )
    assert adopted["daemon_pid"] == status["daemon_pid"]
    assert adopted["restart_count"] == 0
    wait_until(lambda: len(run.daemon_tree()) == 2, message="one daemon and one worker")
    # Recorded anew at adoption: the identity names what the process runs now.
    assert "daemon_watchdog.example.daemon" in adopted["daemon"]["cmdline"]


def test_fix_leaves_a_supervised_daemon_alone_across_a_clock_step(
    run: Run, capsys: pytest.CaptureFixture[str]
) -> None:
    """cron's `health-check --fix` after NTP stepped the clock: the daemon and the watchdog
    are still the processes the state file records, not orphans and not gone."""
    watchdog = run.start()
    status = run.wait_for(_running_past(10), "training past step 10")
    daemon = psutil.Process(status["daemon_pid"])
    tree = run.daemon_tree()
    watchdog.send_signal(signal.SIGSTOP)  # frozen, so that it does not rewrite the state file
    try:
        wait_until(
            lambda: psutil.Process(watchdog.pid).status() == psutil.STATUS_STOPPED,
            message="the watchdog frozen",
        )
        shift_recorded_starts(run, STEP_S)

        checks = health(run, capsys, "--only", "orphans,daemon", "--fix")

        assert checks["daemon"]["status"] == "OK", checks["daemon"]
        assert checks["orphans"]["status"] == "OK", checks["orphans"]
        assert checks["orphans"]["fix"] is None and checks["daemon"]["fix"] is None
        assert all(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in tree)
        assert (run.base / ".daemon.pid").read_text().split() == [str(daemon.pid)]
    finally:
        watchdog.send_signal(signal.SIGCONT)
        run.stop_all()
        kill_leftovers(tree)
