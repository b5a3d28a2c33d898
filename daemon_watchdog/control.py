"""`status`, `stop`, `restart`: what an operator (or systemd, or cron) asks a running watchdog."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import psutil

from daemon_watchdog.daemon_process import forget_daemon
from daemon_watchdog.lock import WorkspaceBusy, WorkspaceLock
from daemon_watchdog.progress_watch import ProgressWatch
from daemon_watchdog.states import State, status_exit_code
from trainguard.atomicio import write_json_atomic
from trainguard.errors import TrainguardError
from trainguard.process_tree import kill_tree, stop_process_tree
from trainguard.procs import ProcessIdentity, locate
from trainguard.timestamps import parse_iso_utc
from trainguard.watchdog_status import (
    WatchdogStatus,
    read_watchdog_status,
    restart_request_file,
    utc_now,
)
from trainguard.workspace import Workspace

UNKNOWN = 3


def _process(identity: ProcessIdentity | None) -> psutil.Process | None:
    """The live process `identity` names, only if pid, start time, cmdline and uid match."""
    return locate(identity) if identity is not None else None


def _hang_line(status: WatchdogStatus) -> str:
    """The threshold applied now and, per phase, the longest silence learned (#20)."""
    limit = status.hang_threshold
    if limit is None:
        now = "until the first progress: startup_grace"
    elif limit.seconds is None:
        now = f"{limit.phase}: {limit.why}"
    else:
        now = f"after {limit.seconds:g} s of silence in {limit.phase} ({limit.why})"
    learned = [f"{phase} {seconds:g} s" for phase, seconds in status.step_rhythm.items()]
    return now + (f"; longest silences: {', '.join(learned)}" if learned else "")


def show_status(ws: Workspace, *, as_json: bool) -> int:
    status = read_watchdog_status(ws.state_file)
    if status is None:
        print(json.dumps({"state": None}) if as_json else f"no watchdog state in {ws.state_file}")
        return UNKNOWN
    alive = _process(status.watchdog) is not None
    code = status_exit_code(State(status.state)) if status.state in State.__members__ else UNKNOWN
    stale = not alive and status.state not in ("STOPPED", "FATAL")
    if stale:
        code = UNKNOWN  # the watchdog died: what the file says is no longer being kept true
    if as_json:
        print(json.dumps({**status.to_json(), "watchdog_alive": alive}, indent=2))
        return code
    last = status.last_progress
    why = f": {status.state_reason}" if status.state_reason else ""
    print(f"state:    {status.state}{why}" + ("  (watchdog not running: stale)" if stale else ""))
    print(f"daemon:   {_daemon_line(status, stale=stale)}")
    if last is not None:
        print(f"progress: step {last.step} ({last.phase}) at {last.at}")
    else:
        print("progress: none seen yet")
    print(f"hang:     {_hang_line(status)}")
    if status.liveness_note:
        print(f"liveness: {status.liveness_note}")
    if status.reload_note:
        print(f"reload:   {status.reload_note}")
    for line in _recovery_lines(status):
        print(line)
    print(f"restarts: {status.restart_count}")
    crash = status.last_crash
    if crash:
        print(f"last crash: {crash.at}: {crash.reason}")
        if crash.quarantined:
            print(f"  quarantined checkpoint {crash.quarantined}")
    if status.fatal_reason:
        print(f"FATAL:    {status.fatal_reason}")
    return code


def _recovery_lines(status: WatchdogStatus) -> list[str]:
    """What [watchdog.recovery] changed and has not been put back, and its last action."""
    rec = status.recovery
    lines = []
    if rec.knobs:
        lines.append(f"recovery: {rec.changed()} (`daemon-watchdog restart --reset-recovery` "
                     "puts them back)")  # fmt: skip
    if rec.events:
        last = rec.events[-1]
        lines.append(f"{'recovery:' if not rec.knobs else '         '} last: {last.text} "
                     f"({last.at})")  # fmt: skip
    return lines


def _daemon_line(status: WatchdogStatus, *, stale: bool) -> str:
    """What is true of the daemon, in words: never a bare None."""
    if status.daemon_pid is not None:
        since = f" since {status.daemon_started_at}" if status.daemon_started_at else ""
        return f"pid {status.daemon_pid}{since}"
    if stale:
        return "none recorded (the watchdog that wrote this is gone)"
    if status.state == State.BACKOFF.value:
        due = parse_iso_utc(status.restart_at)
        if due is None:
            return "none running: backing off before the restart"
        left = (due - datetime.now(timezone.utc)).total_seconds()
        when = f"in {left:.0f} s" if left >= 0.5 else "now"
        return f"none running: backing off, restart {when} (at {status.restart_at})"
    words = {
        State.STARTING.value: "starting (choosing the checkpoint to resume from)",
        State.STOPPED.value: "none running: finished or stopped (no restart)",
        State.FATAL.value: "none running: FATAL, no more restarts (`daemon-watchdog restart` "
        "starts it again once the cause is fixed)",
    }
    return words.get(status.state, "none running")


def stop(ws: Workspace, *, timeout: float) -> int:
    """Ask the watchdog to stop its daemon and exit; with no watchdog, stop the daemon itself."""
    status = read_watchdog_status(ws.state_file)
    watchdog = _process(status.watchdog) if status else None
    if watchdog is not None:
        # A pidfd wait that counts an exited-but-unreaped watchdog as stopped: its parent
        # (systemd, a shell, a test) reaps it when it likes.
        report = kill_tree([watchdog], sig=signal.SIGTERM, timeout=timeout, kill_after=False)
        if report.survivors:
            raise TrainguardError(
                f"watchdog pid {watchdog.pid} did not stop within {timeout:.0f} s"
            )
        print(f"stopped the watchdog (pid {watchdog.pid}) and its daemon")
        return 0
    # No watchdog: hold its lock while stopping what it left, so that none starts meanwhile
    # and adopts a daemon being stopped, and so that the state file is ours to correct.
    with _instead_of_the_watchdog(ws):
        message = _stop_without_watchdog(ws, status)
    print(message)
    return 0


@contextmanager
def _instead_of_the_watchdog(ws: Workspace) -> Iterator[None]:
    """Hold the watchdog's own lock: none starts while we change what it would own."""
    lock = WorkspaceLock(ws.lock_file)
    try:
        lock.acquire()
    except WorkspaceBusy as exc:
        raise TrainguardError(
            f"{exc}, but {ws.state_file} does not name it (is it starting?); try again"
        ) from None
    try:
        yield
    finally:
        lock.release()


def _stop_without_watchdog(ws: Workspace, status: WatchdogStatus | None) -> str:
    """Stop the daemon tree a dead watchdog left (if still ours), and record STOPPED."""
    daemon = status.daemon if status else None
    message = "no watchdog and no daemon running"
    if status is not None and daemon is not None:
        cfg = ws.config.daemon
        report = stop_process_tree(
            daemon,
            sig=signal.Signals[cfg.stop_signal],
            timeout=cfg.stop_timeout,
            token=status.owner_token,
        )
        stopped = len(report.exited) + len(report.killed)
        message = f"no watchdog running; stopped the daemon tree: {stopped} processes"
        if not report.survivors:
            forget_daemon(ws, daemon.pid)  # a pid file naming it would soon name a stranger
    if status is not None and status.state not in (State.STOPPED.value, State.FATAL.value):
        # What a dead watchdog last wrote (RUNNING, BACKOFF, ...) is no longer true.
        stopped_state = replace(
            status,
            state=State.STOPPED.value,
            daemon_pid=None,
            daemon=None,
            daemon_started_at=None,
            owner_token=None,
            daemon_log_offset=None,
        )
        try:
            stopped_state.write(ws.state_file)
        except OSError as exc:
            raise TrainguardError(
                f"{message}, but cannot update {ws.state_file}: {exc.strerror or exc}"
            ) from None
        message += f"; state {status.state} -> STOPPED"
    return message


def restart(ws: Workspace, *, timeout: float, reset_recovery: bool = False) -> int:
    """Ask the watchdog to start the daemon again (from FATAL or STOPPED, at once from BACKOFF,
    after a graceful stop from STARTING or RUNNING), and wait until a new daemon has started.
    `reset_recovery`: first put back every knob [watchdog.recovery] changed."""
    with _one_restart_at_a_time(ws):
        return _restart(ws, timeout=timeout, reset_recovery=reset_recovery)


@contextmanager
def _one_restart_at_a_time(ws: Workspace) -> Iterator[None]:
    """Two operators' restarts in turn: a SIGHUP does not say whose it is, so each `restart`
    must see the state from before its own request and the daemon that request started."""
    with suppress(OSError):  # if it cannot be made, locking says so in one line
        ws.state_file.parent.mkdir(parents=True, exist_ok=True)
    lock = WorkspaceLock(ws.state_file.with_name(ws.state_file.name + ".restart-lock"))
    lock.acquire(wait=True)  # the other restart ends within its own --timeout
    try:
        yield
    finally:
        lock.release()


def _restart(ws: Workspace, *, timeout: float, reset_recovery: bool) -> int:
    status = read_watchdog_status(ws.state_file)
    watchdog = _process(status.watchdog) if status else None
    if status is None or watchdog is None:
        done = ""
        if reset_recovery:
            done = _reset_without_watchdog(ws, status) + "; "
        raise TrainguardError(
            f"{done}no watchdog is running for {ws.base_dir}; start one with: daemon-watchdog start"
        )
    was = status.state
    if was in (State.HUNG.value, State.STOPPING.value):
        raise TrainguardError(
            f"the watchdog (pid {watchdog.pid}) is stopping the daemon already (state {was}); "
            "see: daemon-watchdog status"
        )
    changed = threading.Event()
    with ProgressWatch(ws.state_file, changed.set):  # the state file is replaced on each change
        try:
            # The request file first: a SIGHUP without it (a closed terminal) only reloads.
            request = {"requested_at": utc_now(), "reset_recovery": reset_recovery}
            write_json_atomic(restart_request_file(ws), request)
            watchdog.send_signal(signal.SIGHUP)  # psutil checks it is still that process
        except psutil.NoSuchProcess:
            raise TrainguardError(f"the watchdog (pid {watchdog.pid}) has just exited") from None
        except psutil.AccessDenied:
            raise TrainguardError(
                f"not allowed to signal the watchdog (pid {watchdog.pid}): run this as its user"
            ) from None
        print(f"asked the watchdog (pid {watchdog.pid}) to restart the daemon (state was {was})")
        deadline = time.monotonic() + timeout
        while True:
            now = read_watchdog_status(ws.state_file) or status
            outcome = _restart_outcome(status, now)
            if outcome is not None:
                ok, message = outcome
                if not ok:
                    raise TrainguardError(message)
                print(message)
                return 0
            left = deadline - time.monotonic()
            if left <= 0:
                raise TrainguardError(
                    f"no new daemon within {timeout:.0f} s (state {now.state}); "
                    "see: daemon-watchdog status"
                )
            if not watchdog.is_running():
                raise TrainguardError(f"the watchdog (pid {watchdog.pid}) exited meanwhile")
            changed.wait(min(left, 1.0))  # woken by each write; 1 s to notice a dead watchdog
            changed.clear()


def _reset_without_watchdog(ws: Workspace, status: WatchdogStatus | None) -> str:
    """`restart --reset-recovery` with no watchdog: put the knobs back here, under the
    watchdog's lock (none may start meanwhile), and record it in the state file."""
    from daemon_watchdog.crash_actions import CrashActions

    if status is None or not status.recovery.knobs:
        return "no knob to put back"
    with _instead_of_the_watchdog(ws):
        status = read_watchdog_status(ws.state_file) or status  # as it is now, under the lock
        applied = CrashActions(ws, lambda: []).reset(status.recovery)
        try:
            replace(status, recovery=applied.state).write(ws.state_file)
        except OSError as exc:
            raise TrainguardError(f"cannot update {ws.state_file}: {exc.strerror or exc}") from None
    for event in applied.events:
        print(event.text)
    return "knobs put back"


def _restart_outcome(before: WatchdogStatus, now: WatchdogStatus) -> tuple[bool, str] | None:
    """(started?, what to say) once the state file shows the restart's result, else None."""
    if now.restart_requests <= before.restart_requests:
        return None  # the watchdog has not handled the request yet
    started = now.daemon_started_at
    if started and started != before.daemon_started_at:
        where = now.resumed_from
        origin = f"from {Path(where).name}" if where else "from the start"
        return True, f"daemon pid {now.daemon_pid} started {origin} (state {now.state})"
    if now.restart_count > before.restart_count:
        return True, f"the new daemon started and has crashed since (state {now.state})"
    if now.state == State.FATAL.value:
        return False, f"restart failed: {now.fatal_reason}"
    return None
