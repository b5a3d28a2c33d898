"""The training daemon as a child of ours: start it, or find the one an earlier watchdog started.

The generic part (own session, owner token, log offset, identity) is `trainguard.child_process`;
this module adds what is the daemon's: its command from the config, resume arguments, the pid
file, and the rules that decide, at start, whether a live process is ours to adopt, someone
else's to leave alone, or a trainer we cannot prove anything about (then we start nothing).
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass, fields
from pathlib import Path

import psutil

from trainguard.atomicio import write_text_atomic
from trainguard.child_process import Child, SpawnError, spawn_child
from trainguard.config import expand_argv
from trainguard.orphan_sweep import describe
from trainguard.procs import find_marked, has_owner_mark, identify, locate_marked
from trainguard.watchdog_status import WatchdogStatus, utc_now
from trainguard.workspace import Workspace

log = logging.getLogger("daemon_watchdog")

__all__ = [
    "DaemonHandle", "SpawnError", "Unprovable", "find_daemon", "forget_daemon", "spawn",
    "unprovable_pid",
]  # fmt: skip


@dataclass
class DaemonHandle(Child):
    resumed_from: str | None = None


@dataclass(frozen=True)
class Unprovable:
    """A live process the pid file names that no record proves to be ours or not ours."""

    pid: int
    what: str  # its command line

    def reason(self, ws: Workspace) -> str:
        return (
            f"{ws.pid_file} names pid {self.pid} ({self.what}), which is running, but no record "
            f"of this workspace proves it is the daemon a watchdog started: not adopting it, "
            f"not signalling it, and not starting a second trainer beside it"
        )

    def advice(self, ws: Workspace) -> str:
        return (
            f"If pid {self.pid} is a trainer of this workspace, stop it (kill {self.pid}); if it "
            f"is not, delete {ws.pid_file}. Then run `daemon-watchdog restart`."
        )


def spawn(
    ws: Workspace,
    *,
    checkpoint: Path | None,
    token: str,
    started_at: str,
    env_changes: Mapping[str, str | None] | None = None,
) -> DaemonHandle:
    """Start `[daemon].command` (+ resume args) in its own session, output appended to its log,
    and name it in the pid file. The caller has recorded `token` first (no record, no spawn).
    `env_changes`: variables recovery set (None: unset) in the daemon's environment."""
    argv = expand_argv(ws.config.daemon.command, base_dir=str(ws.base_dir))
    if checkpoint is not None:
        argv += expand_argv(
            ws.config.daemon.resume_args, checkpoint=str(checkpoint), base_dir=str(ws.base_dir)
        )
    # PYTHONFAULTHANDLER makes a Python trainer print every thread's stack on SIGABRT, the
    # fallback for showing where a hung trainer is stuck when py-spy is not installed.
    base_env = None
    if env_changes:
        base_env = {k: v for k, v in os.environ.items() if k not in env_changes}
        base_env.update({k: v for k, v in env_changes.items() if v is not None})
    child = spawn_child(
        argv,
        cwd=ws.base_dir,
        log_file=ws.daemon_log,
        token=token,
        started_at=started_at,
        env={"PYTHONFAULTHANDLER": "1"},
        base_env=base_env,
        what="the daemon",
    )
    try:
        write_text_atomic(ws.pid_file, f"{child.pid}\n")
    except OSError as exc:
        # A daemon no pid file names would be unsupervised after our next restart: end it.
        # It is our unreaped child, so its pid (and group) cannot belong to anyone else yet.
        assert child.proc is not None
        with suppress(OSError):
            os.killpg(child.pid, signal.SIGKILL)
        child.proc.wait()
        raise SpawnError(
            f"cannot write the pid file {ws.pid_file}: {exc.strerror or exc}; daemon stopped"
        ) from None
    log.info("started daemon pid %d: %s", child.pid, " ".join(argv))
    resumed = str(checkpoint) if checkpoint is not None else None
    return _handle(child, resumed)


def _handle(child: Child, resumed_from: str | None) -> DaemonHandle:
    values = {f.name: getattr(child, f.name) for f in fields(Child)}
    return DaemonHandle(**values, resumed_from=resumed_from)


def find_daemon(ws: Workspace, status: WatchdogStatus | None) -> DaemonHandle | Unprovable | None:
    """At start: the daemon an earlier watchdog started if it still runs and provably is that
    process (adopt it); an Unprovable live process the pid file names (start nothing); or None
    (start one). A pid that provably is someone else's now (reused) is never signalled."""
    token = status.owner_token if status is not None else None
    if status is not None and status.daemon is not None and token is not None:
        found = locate_marked(status.daemon, token)
        if found is not None:
            identity = identify(found.pid) or status.daemon  # its cmdline may have changed
            log.info("adopted running daemon pid %d (started %s)", identity.pid,
                     status.daemon_started_at)  # fmt: skip
            return DaemonHandle(
                identity, token, status.daemon_started_at or "", time.monotonic(), None,
                status.daemon_log_offset or 0,
            )  # fmt: skip
    pid = _pid_from_file(ws)
    if pid is None:
        return _leader_by_token(ws, status) if status is not None and token else None
    proc = _live(pid)
    if proc is None:
        log.info("daemon pid %d from the last run is gone", pid)
        _remove_pid_file(ws, pid)
        return None
    if status is not None and token is not None and has_owner_mark(proc, token):
        # The token was recorded before this daemon was started; the watchdog that started it
        # died before recording its identity. Our uid and that token prove it ours.
        marked = identify(pid)
        if marked is not None and marked.uid == os.getuid():
            log.info("adopted running daemon pid %d by its owner token (its watchdog died "
                     "before recording it)", pid)  # fmt: skip
            return DaemonHandle(
                marked, token, status.daemon_started_at or utc_now(), time.monotonic(), None,
                status.daemon_log_offset or 0,
            )  # fmt: skip
    if status is not None and status.daemon is not None and status.daemon.pid == pid:
        # Recorded, and no longer matching: the kernel gave that pid to another process.
        log.info("daemon pid %d from the last run is gone; that pid is now another process's, "
                 "left alone", pid)  # fmt: skip
        _remove_pid_file(ws, pid)
        return None
    if status is not None and status.state == "STOPPED" and status.daemon is None:
        # A finished or stopped run: its watchdog removes the pid file when the daemon ends
        # (versions before that left it behind), so this one names a process that came later.
        log.warning("pid file names pid %d after a STOPPED run: a stale file, left over; that "
                    "process is left alone", pid)  # fmt: skip
        _remove_pid_file(ws, pid)
        return None
    if pid == os.getpid() or pid in {p.pid for p in psutil.Process().parents()}:
        _remove_pid_file(ws, pid)  # a stale file from before a reboot names us: not a trainer
        return None
    return Unprovable(pid, describe(proc))


def _leader_by_token(ws: Workspace, status: WatchdogStatus) -> DaemonHandle | None:
    """No pid file, and the record holds a token but no identity: a watchdog died after
    starting the daemon, before naming it anywhere. The daemon is the one process carrying that
    token (with our uid) that leads its own session: what `spawn` started. Adopted, and named
    in the pid file again; its workers lead no session (they are swept if it is not found)."""
    token = status.owner_token
    assert token is not None
    leaders = [p for p in find_marked(token) if _leads_session(p.pid)]
    if len(leaders) != 1:
        return None
    identity = identify(leaders[0].pid)
    if identity is None:
        return None
    try:
        write_text_atomic(ws.pid_file, f"{identity.pid}\n")
    except OSError as exc:
        log.warning("cannot write the pid file %s: %s", ws.pid_file, exc.strerror or exc)
    log.info("adopted running daemon pid %d by its owner token (its watchdog died before "
             "recording it)", identity.pid)  # fmt: skip
    return DaemonHandle(
        identity, token, status.daemon_started_at or utc_now(), time.monotonic(), None,
        status.daemon_log_offset or 0,
    )  # fmt: skip


def _leads_session(pid: int) -> bool:
    try:
        return os.getsid(pid) == pid
    except OSError:
        return False


def unprovable_pid(ws: Workspace) -> Unprovable | None:
    """Before each spawn (no daemon of ours runs then): a live process the pid file still names.
    The file is removed whenever our daemon ends, so one that remains names a stranger."""
    pid = _pid_from_file(ws)
    if pid is None:
        return None
    proc = _live(pid)
    if proc is None:
        return None
    if pid == os.getpid():
        return None
    return Unprovable(pid, describe(proc))


def forget_daemon(ws: Workspace, pid: int) -> None:
    """The daemon `pid` has ended: its pid file would soon name a stranger (pid reuse)."""
    _remove_pid_file(ws, pid)


def _pid_from_file(ws: Workspace) -> int | None:
    try:
        pid = int(ws.pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if pid > 0 else None


def _remove_pid_file(ws: Workspace, pid: int) -> None:
    """Remove the pid file if it still names `pid` (a newer daemon's is left)."""
    if _pid_from_file(ws) == pid:
        with suppress(OSError):
            ws.pid_file.unlink()


def _live(pid: int) -> psutil.Process | None:
    try:
        proc = psutil.Process(pid)
        return None if proc.status() == psutil.STATUS_ZOMBIE else proc
    except psutil.Error:
        return None
