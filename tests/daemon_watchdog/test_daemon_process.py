"""What a starting watchdog makes of the pid file and the state an earlier one left: adopt,
ignore as stale, or refuse to start a second trainer. Real processes, real files."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon_watchdog.daemon_process import DaemonHandle, Unprovable, find_daemon
from daemon_watchdog.workspace_init import init_workspace
from tests.polling import wait_until
from trainguard.config import load_config
from trainguard.procs import OWNER_ENV, ProcessIdentity, identify
from trainguard.watchdog_status import WatchdogStatus
from trainguard.workspace import Workspace

SLEEPER = Path(__file__).resolve().parents[1] / "children" / "sleeper.py"


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return Workspace(load_config(init_workspace(tmp_path / "ws"), env={}))


@pytest.fixture
def stranger(tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A live process that is not ours: no owner token."""
    ready = tmp_path / "stranger.ready"
    proc = subprocess.Popen([sys.executable, str(SLEEPER), str(ready)])
    wait_until(ready.exists, message="stranger up")
    yield proc
    proc.kill()
    proc.wait()


def _name_in_pid_file(ws: Workspace, pid: int) -> None:
    ws.pid_file.write_text(f"{pid}\n")


def test_after_a_stopped_run_a_pid_file_naming_a_live_process_is_stale(
    ws: Workspace, stranger: subprocess.Popen[bytes]
) -> None:
    _name_in_pid_file(ws, stranger.pid)
    assert find_daemon(ws, WatchdogStatus(state="STOPPED")) is None
    assert not ws.pid_file.exists() and stranger.poll() is None


@pytest.mark.parametrize("record", ["none", "FATAL", "RUNNING without identity"])
def test_a_live_process_no_record_proves_anything_about_is_unprovable(
    ws: Workspace, stranger: subprocess.Popen[bytes], record: str
) -> None:
    _name_in_pid_file(ws, stranger.pid)
    status = {
        "none": None,
        "FATAL": WatchdogStatus(state="FATAL"),
        "RUNNING without identity": WatchdogStatus(state="RUNNING", owner_token="another"),
    }[record]
    found = find_daemon(ws, status)
    assert isinstance(found, Unprovable) and found.pid == stranger.pid
    assert "not starting a second trainer" in found.reason(ws)
    assert ws.pid_file.exists() and stranger.poll() is None


def test_a_recorded_pid_now_held_by_another_process_is_stale(
    ws: Workspace, stranger: subprocess.Popen[bytes]
) -> None:
    live = identify(stranger.pid)
    assert live is not None
    # An earlier process with that pid (recorded without the kernel's start ticks): not it.
    earlier = ProcessIdentity(live.pid, live.create_time - 3600, live.cmdline, live.uid)
    _name_in_pid_file(ws, stranger.pid)
    assert find_daemon(ws, WatchdogStatus(state="RUNNING", daemon=earlier, owner_token="t")) is None
    assert not ws.pid_file.exists() and stranger.poll() is None


def test_the_daemon_named_by_the_pid_file_and_carrying_the_recorded_token_is_adopted(
    ws: Workspace, tmp_path: Path
) -> None:
    ready = tmp_path / "daemon.ready"
    env = {**os.environ, OWNER_ENV: "recorded-token"}
    daemon = subprocess.Popen([sys.executable, str(SLEEPER), str(ready)], env=env)
    try:
        wait_until(ready.exists, message="daemon up")
        _name_in_pid_file(ws, daemon.pid)
        found = find_daemon(ws, WatchdogStatus(state="STARTING", owner_token="recorded-token"))
        assert isinstance(found, DaemonHandle) and found.pid == daemon.pid and found.adopted
    finally:
        daemon.kill()
        daemon.wait()
