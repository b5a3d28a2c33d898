"""One watchdog per workspace: an flock the kernel drops when the holder dies, even by SIGKILL."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from trainguard import exitcodes
from trainguard.errors import TrainguardError


class WorkspaceBusy(TrainguardError):
    exit_code = exitcodes.TEMPFAIL


class WorkspaceLock:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self, *, wait: bool = False) -> None:
        """Take the lock, or raise WorkspaceBusy (`wait`: block until it is free instead)."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise TrainguardError(f"cannot lock {self.path}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise WorkspaceBusy(
                f"another watchdog (pid {holder}) already supervises {self.path.parent}"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None
