"""The child-process layer every runner shares: start a job in its own session, marked as ours.

A supervised child runs in a new session (its own process group, so a signal reaches its whole
tree), with its output appended to a log whose size at the start says where its own output
begins, and with an owner token in its environment that every descendant inherits: the proof,
later, that a process is ours to signal. Stopping trees lives in `trainguard.process_tree`,
sweeping orphans in `trainguard.orphan_sweep`, identities in `trainguard.procs`.
"""

from __future__ import annotations

import ctypes
import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import psutil

from trainguard.errors import TrainguardError
from trainguard.procs import OWNER_ENV, ProcessIdentity, identify

PR_SET_CHILD_SUBREAPER = 36
EXEC_WAIT = 1.0  # seconds to wait for a new child's cmdline to appear (see identify_after_exec)


class SpawnError(TrainguardError):
    """The child could not be started: retrying cannot help until someone fixes the cause."""


@dataclass
class Child:
    """A supervised process: started by us (`proc` set) or adopted from an earlier supervisor."""

    identity: ProcessIdentity
    token: str  # in its environment: every descendant inherits it, so it proves ours
    started_at: str  # ISO-8601 UTC
    started_mono: float
    proc: subprocess.Popen[bytes] | None = None  # None for an adopted child (not ours to wait)
    # Size of the log when this child started: what it wrote begins there, and a crash is
    # classified on that, not on the lines of earlier runs above it.
    log_offset: int = 0

    @property
    def pid(self) -> int:
        return self.identity.pid

    @property
    def adopted(self) -> bool:
        return self.proc is None


def new_token() -> str:
    # What secrets.token_hex(12) returns, without the `secrets` module: it imports hashlib, whose
    # OpenSSL would add ~3.5 MiB to a supervisor that never crashes.
    return os.urandom(12).hex()


def spawn_child(
    argv: Sequence[str],
    *,
    cwd: Path,
    log_file: Path,
    token: str,
    started_at: str,
    env: Mapping[str, str] | None = None,
    what: str = "the child",
    header: bytes = b"",
    wait_for_exec: bool = True,
    base_env: Mapping[str, str] | None = None,
) -> Child:
    """Start `argv` (a list, never a shell) in its own session, output appended to `log_file`
    after `header` (a line saying whose output follows).

    `env` adds to (or overrides) our environment; the owner token is always set. SpawnError,
    with a one-line reason naming `what`, when the program or the log cannot be opened.
    `wait_for_exec=False` records the identity without waiting for the new program's cmdline:
    for a caller that stops the child only while it is unreaped (its pid cannot be reused
    then) and wants no wait per spawn. `base_env` replaces our environment as the base (a
    runner starting thousands of children copies it once, not each time).
    """
    full_env = {**(os.environ if base_env is None else base_env), **(env or {}), OWNER_ENV: token}
    try:
        out = _open_log(log_file)
        try:
            if header:
                os.write(out, header)
            log_offset = os.fstat(out).st_size
            proc = subprocess.Popen(
                list(argv),
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=full_env,
                start_new_session=True,  # its own process group: signals reach the whole tree
            )
        finally:
            os.close(out)
    except OSError as exc:  # no such program, not executable, the log cannot be opened
        where = exc.filename if exc.filename is not None else argv[0]
        raise SpawnError(f"cannot start {what}: {where}: {exc.strerror or exc}") from None
    found = identify_after_exec(proc.pid) if wait_for_exec else None
    identity = found or ProcessIdentity(proc.pid, 0.0, tuple(argv), os.getuid())
    return Child(identity, token, started_at, time.monotonic(), proc, log_offset)


def _open_log(path: Path) -> int:
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
    try:
        return os.open(path, flags, 0o644)
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(path, flags, 0o644)


def identify_after_exec(pid: int) -> ProcessIdentity | None:
    """The child's identity once exec has finished.

    Popen (vfork) returns as soon as the child has released our memory, which is before the
    kernel has set up the new program's arguments: for a moment /proc/PID/cmdline is empty, and
    an identity recorded then would never match the child again (no adoption, "pid reused").
    """
    deadline = time.monotonic() + EXEC_WAIT
    while True:
        identity = identify(pid)
        if identity is None or identity.cmdline or time.monotonic() >= deadline:
            return identity
        time.sleep(0.001)


def watch_exit(pid: int, on_exit: Callable[[], None]) -> threading.Thread:
    """Call `on_exit` the moment a pid that is not our child ends: pidfd, no polling."""

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


def reap_children() -> Iterator[tuple[int, int]]:
    """(pid, returncode) of every child that has ended, without blocking; negative = signal."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        yield pid, os.waitstatus_to_exitcode(status)


def become_subreaper() -> bool:
    """Orphans of our children's trees are re-parented to us, not to init (Linux only)."""
    if sys.platform != "linux":
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    return int(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0
