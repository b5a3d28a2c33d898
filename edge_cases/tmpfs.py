"""A real, small filesystem that can fill up: a tmpfs, mounted only where we are root."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
from pathlib import Path

from edge_cases.scenario import ScenarioSkipped


def mount_tmpfs(where: Path, size: str) -> None:
    """Mount a tmpfs of `size` on `where`; ScenarioSkipped (with the reason) where we cannot."""
    if os.geteuid() != 0:
        raise ScenarioSkipped("mounting a small tmpfs needs root; not running as root")
    mount = shutil.which("mount")
    if mount is None:
        raise ScenarioSkipped("no mount(8) on this host")
    result = subprocess.run(
        [mount, "-t", "tmpfs", "-o", f"size={size},mode=0755", "trainguard-edge", str(where)],
        capture_output=True,
        text=True,
        timeout=10,
    )
    if result.returncode != 0:
        raise ScenarioSkipped(f"cannot mount a tmpfs here: {result.stderr.strip()}")


def unmount(where: Path) -> None:
    umount = shutil.which("umount") or "umount"
    for argv in ([umount, str(where)], [umount, "-l", str(where)]):
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            if subprocess.run(argv, capture_output=True, timeout=10).returncode == 0:
                return


def fill(path: Path) -> int:
    """Write `path` until the filesystem says ENOSPC; the bytes written."""
    written = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        for chunk in (64 * 1024, 4096, 512):
            block = b"\xee" * chunk
            while True:
                try:
                    written += os.write(fd, block)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    finally:
        os.close(fd)
    return written
