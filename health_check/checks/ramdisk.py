"""The files staged in the ramdisk (/dev/shm) are there, and the ramdisk really is in RAM.

Jobs stage datasets in /dev/shm to read them at memory speed, and PyTorch data loaders and
NCCL need it for shared memory. A /dev/shm that is a plain folder on disk works but silently
loses that speed, hence a WARNING rather than a failure.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from health_check.context import Context
from health_check.result import CheckResult, Metric, Status, worst

GB = 1e9
MEMORY_FILESYSTEMS = frozenset({"tmpfs", "ramfs"})
MOUNTS = Path("/proc/mounts")
SUMMARY_NAMES = 3


def _unescape(field: str) -> str:
    # /proc/mounts writes space, tab, newline and backslash in paths as octal escapes.
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def filesystem_type(path: Path, mounts: Path = MOUNTS) -> str | None:
    """The type of the filesystem holding `path` (the longest matching mount point), or None."""
    try:
        text = mounts.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None  # not Linux, or no /proc: the caller says the type is unknown
    real = os.path.realpath(path)
    best, fstype = "", None
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = _unescape(fields[1])
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        # Later lines win ties: a mount stacked over another one hides it.
        if inside and len(point) >= len(best):
            best, fstype = point, fields[2]
    return fstype


def inspect(path: Path) -> tuple[Status, str, int]:
    """(status, what is wrong or "ok", size in bytes) for one staged file."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return Status.CRITICAL, "missing", 0
    except OSError as exc:
        return Status.CRITICAL, f"cannot stat: {exc.strerror or exc}", 0
    if stat.S_ISDIR(st.st_mode):
        return Status.OK, "ok (a directory)", 0  # a staged dataset folder counts as present
    if not stat.S_ISREG(st.st_mode):
        return Status.CRITICAL, "not a regular file", 0
    if st.st_size == 0:
        return Status.WARNING, "empty", 0  # a copy into the ramdisk that died at the start
    return Status.OK, "ok", st.st_size


def probe(ctx: Context) -> CheckResult:
    ws = ctx.ws
    health = ws.config.health
    folder = ws.path(health.ramdisk_dir)  # a relative ramdisk_dir hangs off base_dir
    names = health.ramdisk_files
    if not folder.is_dir():
        # Staged files cannot be there; without any, only shared memory for loaders is lost.
        status = Status.CRITICAL if names else Status.WARNING
        why = "missing" if not os.path.lexists(folder) else "not a directory"
        return CheckResult("ramdisk", status, f"{folder}: {why}")
    details: list[str] = []
    problems: list[str] = []
    statuses = [Status.OK]
    fstype = filesystem_type(folder)
    if fstype is None:
        details.append(f"{folder}: filesystem type unknown (no /proc/mounts)")
    elif fstype not in MEMORY_FILESYSTEMS:
        statuses.append(Status.WARNING)
        problems.append(f"{folder} is {fstype}, not a tmpfs: files there live on disk")
    vfs = os.statvfs(folder)
    free, total = vfs.f_bavail * vfs.f_frsize, vfs.f_blocks * vfs.f_frsize
    details.append(f"{folder} ({fstype or 'unknown'}): {free / GB:.2f} of {total / GB:.2f} GB free")
    metrics = [Metric("ramdisk_free_gb", round(free / GB, 3), "GB", label=str(folder))]
    staged = 0
    bad: list[str] = []
    for name in names:
        status, why, size = inspect(folder / name)
        statuses.append(status)
        staged += size
        details.append(f"{name}: {size} bytes" if why == "ok" else f"{name}: {why}")
        if status != Status.OK:
            bad.append(f"{name} ({why})")
    metrics.append(Metric("ramdisk_files_bytes", staged, "B", label=str(folder)))
    if bad:
        more = f" and {len(bad) - SUMMARY_NAMES} more" if len(bad) > SUMMARY_NAMES else ""
        problems.insert(
            0, f"{len(bad)}/{len(names)} file(s) not usable: {', '.join(bad[:SUMMARY_NAMES])}{more}"
        )
    status = worst(statuses)
    if problems:
        return CheckResult("ramdisk", status, "; ".join(problems), details, metrics=metrics)
    files = f"{len(names)} file(s) present ({staged / GB:.2f} GB), " if names else ""
    summary = f"{files}{free / GB:.1f} GB free in {folder}"
    return CheckResult("ramdisk", status, summary, details, metrics=metrics)
