"""The training daemon: pid file valid, process alive and not a zombie, identity proven."""

from __future__ import annotations

import os

import psutil

from health_check.context import Context
from health_check.result import CheckResult, Fix, FixError, Status
from health_check.supervision import Supervision, read_supervision
from trainguard.workspace import Workspace

# Watchdog states in which a dead daemon is expected for a moment: it is being restarted.
TRANSIENT = ("STARTING", "BACKOFF", "HUNG", "STOPPING")


def read_pid_file(ws: Workspace) -> tuple[int | None, str | None, bytes | None]:
    """(pid, problem, raw bytes); (None, None, None) when there is no pid file."""
    try:
        raw = ws.pid_file.read_bytes()[:64]
    except FileNotFoundError:
        return None, None, None
    except OSError as exc:
        return None, f"cannot read {ws.pid_file}: {exc.strerror or exc}", None
    try:
        pid = int(raw.split()[0])
    except (ValueError, IndexError):
        return None, f"{ws.pid_file} holds no pid: {raw[:20]!r}", raw
    if pid <= 0:
        return None, f"{ws.pid_file} holds pid {pid}", raw
    return pid, None, raw


def probe(ctx: Context) -> CheckResult:
    ws = ctx.ws
    sup = read_supervision(ws)
    pid, problem, raw = read_pid_file(ws)
    state = sup.state_name
    where = f"watchdog {state}" if state else "no watchdog state"
    alive = f"pid {sup.watchdog.pid} alive" if sup.watchdog else "not running"
    details = [f"watchdog: {alive}"]
    if sup.state is not None and sup.state.recovery.knobs:
        changed = sup.state.recovery.changed()
        details.append(f"recovery changed: {changed} (`daemon-watchdog restart --reset-recovery`)")
    if state == "FATAL":
        reason = (sup.state.fatal_reason if sup.state else None) or "see status/watchdog.json"
        return CheckResult(
            "daemon",
            Status.CRITICAL,
            f"watchdog is FATAL: {reason} (fix the cause, then `daemon-watchdog restart`)",
            details,
        )
    if problem is not None:
        fix = _remove_pid_file(ws, raw) if sup.daemon is None else None
        return CheckResult("daemon", Status.CRITICAL, problem, details, fix)
    if pid is None:
        if sup.daemon is not None:
            return CheckResult(
                "daemon",
                Status.WARNING,
                f"daemon pid {sup.daemon.pid} runs ({where}) but {ws.pid_file.name} is missing",
                details,
            )
        if state == "STOPPED":
            return CheckResult("daemon", Status.OK, "not running: finished (watchdog STOPPED)")
        if state is None:
            return CheckResult(
                "daemon", Status.OK, "none started here (no pid file, no watchdog state)"
            )
        if sup.watchdog is not None:
            return CheckResult("daemon", Status.WARNING, f"being restarted ({where})", details)
        return _nobody_supervises(sup, details)
    return _judge_pid(ws, sup, pid, raw, where, details)


def _judge_pid(
    ws: Workspace, sup: Supervision, pid: int, raw: bytes | None, where: str, details: list[str]
) -> CheckResult:
    if sup.daemon is not None and sup.daemon.pid == pid:
        if sup.watchdog is None:
            return CheckResult(
                "daemon",
                Status.WARNING,
                f"pid {pid} alive but unsupervised: the watchdog is not running",
                details,
            )
        return CheckResult("daemon", Status.OK, f"pid {pid} alive ({where})", details)
    try:
        proc = psutil.Process(pid)
        status = proc.status()
    except psutil.NoSuchProcess:
        proc, status = None, None
    except psutil.Error as exc:
        return CheckResult("daemon", Status.UNKNOWN, f"cannot inspect pid {pid}: {exc}", details)
    if status == psutil.STATUS_ZOMBIE:
        return CheckResult(
            "daemon",
            Status.CRITICAL,
            f"pid {pid} is a zombie: its parent does not reap it (is the watchdog stuck?)",
            details,
        )
    if sup.daemon_identity is not None and sup.daemon_identity.pid == pid and proc is not None:
        # Alive, yet not the process the watchdog recorded: the pid was reused.
        details.append(f"pid {pid} now runs: {' '.join(_cmdline(proc))[:120]}")
        fix = _remove_pid_file(ws, raw) if sup.watchdog is None else None
        return CheckResult(
            "daemon",
            Status.CRITICAL,
            f"daemon is gone; pid {pid} was reused by another process (stale pid file)",
            details,
            fix,
        )
    if proc is not None and sup.daemon_identity is None:
        # No watchdog record to prove identity (a daemon started by hand): alive is all we know,
        # and a recycled pid is alive too. Say so rather than vouch for it.
        details.append(f"pid {pid} runs: {' '.join(_cmdline(proc))[:120]}")
        return CheckResult(
            "daemon",
            Status.WARNING,
            f"pid {pid} alive, but no watchdog recorded it: cannot prove it is the daemon",
            details,
        )
    if proc is not None:
        details.append(f"pid {pid} runs: {' '.join(_cmdline(proc))[:120]}")
        return CheckResult(
            "daemon",
            Status.CRITICAL,
            f"pid file names pid {pid}, which is not the daemon the watchdog recorded",
            details,
        )
    if sup.state_name in TRANSIENT and sup.watchdog is not None:
        return CheckResult("daemon", Status.WARNING, f"being restarted ({where})", details)
    if sup.state_name == "STOPPED":
        return CheckResult(
            "daemon",
            Status.OK,
            "not running: finished (watchdog STOPPED)",
            details,
            _remove_pid_file(ws, raw) if sup.watchdog is None else None,
        )
    if sup.watchdog is None:
        result = _nobody_supervises(sup, details) if sup.state else None
        summary = f"daemon pid {pid} is not running ({where})"
        if result is not None:
            summary = f"{summary}; {result.summary}"
        return CheckResult("daemon", Status.CRITICAL, summary, details, _remove_pid_file(ws, raw))
    # The live watchdog sees an exit at once: this is the moment before it records it.
    return CheckResult("daemon", Status.WARNING, f"daemon pid {pid} just ended ({where})", details)


def _nobody_supervises(sup: Supervision, details: list[str]) -> CheckResult:
    """The state says a run was going on, yet neither the watchdog nor the daemon is alive."""
    updated = (sup.state.updated_at if sup.state else None) or "?"
    return CheckResult(
        "daemon",
        Status.CRITICAL,
        f"the watchdog is gone (last state {sup.state_name} at {updated}) and no daemon runs",
        details,
    )


def _cmdline(proc: psutil.Process) -> list[str]:
    try:
        return proc.cmdline()
    except psutil.Error:
        return ["?"]


def _remove_pid_file(ws: Workspace, raw: bytes | None) -> Fix:
    """Remove the pid file only if it still holds what we judged stale (a watchdog that started
    meanwhile may have written a fresh one)."""
    path = ws.pid_file

    def remove() -> str:
        try:
            now = path.read_bytes()[:64]
        except FileNotFoundError:
            return f"{path.name} already gone"
        if now != raw:
            raise FixError(f"{path.name} changed since it was checked; left alone")
        os.unlink(path)
        return f"removed stale {path.name}"

    return Fix(f"remove stale {path.name}", remove, key="pid-file")
