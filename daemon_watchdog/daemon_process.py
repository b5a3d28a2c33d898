"""Start the training daemon, or adopt the one an earlier watchdog started, and know it is ours."""

from __future__ import annotations

import logging
import os
import select
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from trainguard.atomicio import write_text_atomic
from trainguard.config import expand_argv
from trainguard.errors import TrainguardError
from trainguard.procs import OWNER_ENV, ProcessIdentity, identify, locate_marked
from trainguard.workspace import Workspace

log = logging.getLogger("daemon_watchdog")


@dataclass
class DaemonHandle:
    identity: ProcessIdentity
    token: str  # in the daemon's environment: every descendant inherits it, so it proves ours
    started_at: str  # ISO-8601 UTC
    started_mono: float
    proc: subprocess.Popen[bytes] | None = None  # None for an adopted daemon (not our child)
    resumed_from: str | None = None
    # Size of the daemon log when this daemon started: what it wrote begins there, and a
    # crash is classified on that, not on the lines of earlier runs above it.
    log_offset: int = 0

    @property
    def pid(self) -> int:
        return self.identity.pid


class SpawnError(TrainguardError):
    """The daemon could not be started: restarting cannot help until someone fixes it."""


def new_token() -> str:
    # What secrets.token_hex(12) returns, without the `secrets` module: it imports hashlib, whose
    # OpenSSL would add ~3.5 MiB to a watchdog that never crashes.
    return os.urandom(12).hex()


def spawn(ws: Workspace, *, checkpoint: Path | None, token: str, started_at: str) -> DaemonHandle:
    """Start `[daemon].command` (+ resume args) in its own session, output appended to its log."""
    argv = expand_argv(ws.config.daemon.command, base_dir=str(ws.base_dir))
    if checkpoint is not None:
        argv += expand_argv(
            ws.config.daemon.resume_args, checkpoint=str(checkpoint), base_dir=str(ws.base_dir)
        )
    # PYTHONFAULTHANDLER makes a Python trainer print every thread's stack on SIGABRT, the
    # fallback for showing where a hung trainer is stuck when py-spy is not installed.
    env = {**os.environ, OWNER_ENV: token, "PYTHONFAULTHANDLER": "1"}
    try:
        ws.daemon_log.parent.mkdir(parents=True, exist_ok=True)
        with open(ws.daemon_log, "ab") as out:
            log_offset = os.fstat(out.fileno()).st_size
            proc = subprocess.Popen(
                argv,
                cwd=ws.base_dir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # its own process group: signals reach the whole tree
            )
    except OSError as exc:  # no such program, not executable, the log cannot be opened
        where = exc.filename if exc.filename is not None else argv[0]
        raise SpawnError(f"cannot start the daemon: {where}: {exc.strerror or exc}") from None
    identity = _identify_after_exec(proc.pid) or ProcessIdentity(
        proc.pid, 0.0, tuple(argv), os.getuid()
    )
    try:
        write_text_atomic(ws.pid_file, f"{proc.pid}\n")
    except OSError as exc:
        # A daemon no pid file names would be unsupervised after our next restart: end it.
        # It is our unreaped child, so its pid (and group) cannot belong to anyone else yet.
        with suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise SpawnError(
            f"cannot write the pid file {ws.pid_file}: {exc.strerror or exc}; daemon stopped"
        ) from None
    log.info("started daemon pid %d: %s", proc.pid, " ".join(argv))
    resumed = str(checkpoint) if checkpoint is not None else None
    return DaemonHandle(identity, token, started_at, time.monotonic(), proc, resumed, log_offset)


def _identify_after_exec(pid: int) -> ProcessIdentity | None:
    """The child's identity once exec has finished.

    Popen (vfork) returns as soon as the child has released our memory, which is before the
    kernel has set up the new program's arguments: for a moment /proc/PID/cmdline is empty, and
    an identity recorded then would never match the daemon again (no adoption, "pid reused").
    """
    deadline = time.monotonic() + 1.0
    while True:
        identity = identify(pid)
        if identity is None or identity.cmdline or time.monotonic() >= deadline:
            return identity
        time.sleep(0.001)


def adopt(ws: Workspace, status: dict[str, Any] | None) -> DaemonHandle | None:
    """The daemon an earlier watchdog started, if it still runs and provably is that process.

    A pid file or state naming any other process (the pid was reused) is ignored, never signalled.
    """
    if not status or not isinstance(status.get("daemon"), dict):
        _warn_about_stale_pid_file(ws, None)
        return None
    try:
        identity = ProcessIdentity.from_json(status["daemon"])
    except ValueError:
        log.warning("state file names no valid daemon identity; not adopting")
        return None
    token = status.get("owner_token")
    found = locate_marked(identity, token) if isinstance(token, str) and token else None
    if found is None or not isinstance(token, str):
        _warn_about_stale_pid_file(ws, identity)
        return None
    # Its cmdline may have changed since it was recorded (an exec'ing wrapper): record it anew.
    identity = identify(found.pid) or identity
    started_at = str(status.get("daemon_started_at") or "")
    offset = status.get("daemon_log_offset")
    log_offset = offset if isinstance(offset, int) and offset >= 0 else 0
    log.info("adopted running daemon pid %d (started %s)", identity.pid, started_at)
    return DaemonHandle(identity, token, started_at, time.monotonic(), None, None, log_offset)


def _warn_about_stale_pid_file(ws: Workspace, identity: ProcessIdentity | None) -> None:
    try:
        pid = int(ws.pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    alive = identify(pid) is not None
    if identity is not None and pid == identity.pid:
        reused = "; that pid is now another process's, left alone" if alive else ""
        log.info("daemon pid %d from the last run is gone%s", pid, reused)
    elif alive:
        log.warning(
            "pid file names pid %d, which is not the daemon this watchdog started "
            "(pid reused?): not adopting it, not signalling it",
            pid,
        )


def watch_adopted(pid: int, on_exit: Callable[[], None]) -> threading.Thread:
    """Call `on_exit` the moment an adopted (non-child) pid ends: pidfd, no polling."""

    def wait() -> None:
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            on_exit()
            return
        except (OSError, AttributeError):  # no pidfd (kernel < 5.3): psutil polls instead
            with suppress(psutil.Error):
                psutil.Process(pid).wait()
            on_exit()
            return
        try:
            select.select([fd], [], [])
        finally:
            os.close(fd)
        on_exit()

    thread = threading.Thread(target=wait, name=f"adopted-{pid}", daemon=True)
    thread.start()
    return thread
