"""The supervisor's progress rules, driven event by event: real files, a real (idle) daemon, a
real SIGKILL and restart, and no timing: each step is one call into the loop's handlers."""

from __future__ import annotations

import contextlib
import json
import math
import os
import queue
import signal
import sys
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from daemon_watchdog import daemon_process
from daemon_watchdog import events as ev
from daemon_watchdog.states import State
from daemon_watchdog.supervisor import Supervisor
from tests.polling import wait_until
from trainguard.config import load_config
from trainguard.progress import write_progress
from trainguard.watchdog_status import CrashRecord, WatchdogStatus
from trainguard.workspace import Workspace

SLEEPER = Path(__file__).resolve().parent.parent / "children" / "sleeper.py"


def driven_supervisor(
    tmp_path: Path, command: list[str], more_toml: str = "", **kwargs: Any
) -> Supervisor:
    """A supervisor of `command` in tmp_path/ws that does only what the test drives (no
    periodic work); `more_toml` is appended to its config."""
    base = tmp_path / "ws"
    (base / "status").mkdir(parents=True)
    (base / "trainguard.toml").write_text(
        f"[daemon]\ncommand = {json.dumps(command)}\n\n"
        "[watchdog]\nbackoff_base = 0\nstartup_grace = 60\nprogress_timeout = 60\n" + more_toml
    )
    sup = Supervisor(Workspace(load_config(base / "trainguard.toml", env={})), **kwargs)
    sup.next_check = sup.next_prune = math.inf
    return sup


@contextlib.contextmanager
def killing_its_daemon(sup: Supervisor) -> Iterator[Supervisor]:
    try:
        yield sup
    finally:
        if sup.daemon is not None and sup.daemon.proc is not None:
            sup.daemon.proc.kill()
            sup.daemon.proc.wait()


def handle_until(sup: Supervisor, done: Callable[[], bool], message: str) -> None:
    """Run the loop's handlers until `done()`: what SIGCHLD posts (a reap once the daemon has
    exited), then the events the checkpoint worker posted, as the loop would take them."""

    def step() -> bool:
        sup._handle(ev.ChildExited(0, 0))
        with contextlib.suppress(queue.Empty):
            while True:
                sup._handle(sup.events.get_nowait())
        return done()

    wait_until(step, message=message)


@pytest.fixture
def supervisor(tmp_path: Path) -> Iterator[Supervisor]:
    command = [sys.executable, str(SLEEPER), str(tmp_path / "ready")]
    with killing_its_daemon(driven_supervisor(tmp_path, command)) as sup:
        yield sup


def _step(sup: Supervisor) -> int | None:
    return sup.last_progress.step if sup.last_progress is not None else None


def test_a_rewound_restart_takes_its_lower_steps_as_progress_not_the_old_file(
    supervisor: Supervisor,
) -> None:
    sup = supervisor
    progress = sup.ws.progress_file
    sup._spawn(None)
    write_progress(progress, 190)
    sup._handle(ev.ProgressChanged())
    assert (sup.state, _step(sup)) == (State.RUNNING, 190)

    killed = sup.daemon
    assert killed is not None
    os.kill(killed.pid, signal.SIGKILL)

    handle_until(
        sup,
        lambda: sup.daemon is not None and sup.daemon.pid != killed.pid,
        "the SIGKILLed daemon reaped and a new one spawned (backoff 0)",
    )
    assert sup.state == State.STARTING and sup.restarts[0].exit_code == -signal.SIGKILL

    # The killed run's file is still there: history, not the new daemon's first progress.
    sup._handle(ev.ProgressChanged())
    assert (sup.state, _step(sup)) == (State.STARTING, None)

    # Resumed from checkpoint-100: far below 190, and still progress, so no hang clock runs
    # from the old run's last step.
    for step in (101, 150, 151):
        write_progress(progress, step)
        sup._handle(ev.ProgressChanged())
        assert (sup.state, _step(sup)) == (State.RUNNING, step)
    hang = sup._hang_deadline()
    assert hang == sup.last_progress_mono + sup.cfg.watchdog.progress_timeout

    write_progress(progress, 140)  # a step back within one run is not progress
    sup._handle(ev.ProgressChanged())
    assert _step(sup) == 151 and sup._hang_deadline() == hang


def test_a_first_start_takes_an_existing_progress_file_as_history(
    supervisor: Supervisor,
) -> None:
    sup = supervisor
    write_progress(sup.ws.progress_file, 70)  # left by a run before this watchdog
    sup._spawn(None)
    sup._handle(ev.ProgressChanged())
    assert (sup.state, _step(sup)) == (State.STARTING, None)
    write_progress(sup.ws.progress_file, 1)
    sup._handle(ev.ProgressChanged())
    assert (sup.state, _step(sup)) == (State.RUNNING, 1)


def test_restart_totals_keep_counting_past_the_kept_list_and_survive_a_new_watchdog(
    supervisor: Supervisor,
) -> None:
    sup = supervisor
    sup._spawn(None)
    for n in range(60):
        category = "cuda_oom" if n % 2 else "nccl"
        sup._count_restart(CrashRecord(at=str(n), reason="", category=category, exit_code=1))
    sup._publish()
    status = json.loads(sup.ws.state_file.read_text())
    assert len(status["restarts"]) == 50  # the newest only
    assert status["restart_count"] == 60
    assert status["restart_totals"] == {"cuda_oom": 30, "nccl": 30}
    replacement = Supervisor(sup.ws)
    replacement._restore(WatchdogStatus.from_json(status))
    assert replacement.restart_totals == {"cuda_oom": 30, "nccl": 30}
    older = {"restarts": [{"category": "cuda_oom"}, {"category": None}]}  # before the totals
    replacement._restore(WatchdogStatus.from_json({"state": "RUNNING", **older}))
    assert replacement.restart_totals == {"cuda_oom": 1, "unknown": 1}


@pytest.mark.parametrize("pid_file", ["written", "not yet written"])
def test_a_watchdog_dying_just_after_the_spawn_leaves_a_record_its_successor_adopts_by(
    supervisor: Supervisor, monkeypatch: pytest.MonkeyPatch, pid_file: str
) -> None:
    """The state file as a watchdog SIGKILLed right after the fork (before it could record the
    daemon's identity) leaves it: the next watchdog must recognise that daemon, not start a
    second one beside it."""
    sup = supervisor
    left: list[bytes] = []
    real_spawn = daemon_process.spawn  # what the supervisor calls

    def spawn_then_die(*args: Any, **kwargs: Any) -> Any:
        handle = real_spawn(*args, **kwargs)
        left.append(sup.ws.state_file.read_bytes())  # what is on disk at that moment
        return handle

    monkeypatch.setattr("daemon_watchdog.supervisor.spawn", spawn_then_die)
    sup._transition(State.STARTING, "test")
    sup._spawn(None)
    assert sup.daemon is not None and left
    first = sup.daemon
    sup.ws.state_file.write_bytes(left[0])
    if pid_file == "not yet written":
        sup.ws.pid_file.unlink()

    successor = Supervisor(sup.ws)
    successor.next_check = successor.next_prune = math.inf
    successor._start_or_adopt()
    try:
        assert successor.daemon is not None and successor.daemon.pid == first.pid
        assert successor.daemon.proc is None  # adopted, not spawned
        assert successor.choosing is None  # and no start is on its way
        assert first.proc is not None and first.proc.poll() is None
        assert sup.ws.pid_file.read_text() == f"{first.pid}\n"
    finally:
        successor.jobs.close()


def test_liveness_off_never_sets_a_hang_deadline(supervisor: Supervisor) -> None:
    cfg = supervisor.cfg
    off = replace(cfg, watchdog=replace(cfg.watchdog, liveness="off"))
    sup = Supervisor(Workspace(off))
    sup.next_check = sup.next_prune = math.inf
    sup._transition(State.STARTING, "test")
    sup._spawn(None)
    try:
        assert sup.daemon is not None and sup._hang_deadline() is None
        write_progress(sup.ws.progress_file, 3)
        sup._handle(ev.ProgressChanged())
        assert sup.state == State.RUNNING and sup._hang_deadline() is None
        assert (
            sup.last_status is not None
            and sup.last_status.liveness == "off: hangs are not detected"
        )
    finally:
        assert sup.daemon is not None and sup.daemon.proc is not None
        sup.daemon.proc.kill()
        sup.daemon.proc.wait()
        sup.jobs.close()
