"""The input files a run will read exist, are regular files and can be read now.

Reading is tried for real (one byte): permission bits, ACLs, a stale NFS handle or a bad disk
all show up the same way the trainer would meet them. Nothing is opened before `stat` says it
is a regular file, and the open is non-blocking, so a FIFO (even one swapped in between) can
never hang the check.
"""

from __future__ import annotations

import glob
import os
import stat
from pathlib import Path

from health_check.context import Context
from health_check.result import CheckResult, Metric, Status, worst

SUMMARY_NAMES = 3
_GLOB_CHARS = frozenset("*?[")


def expand(base_dir: Path, entry: str) -> list[Path]:
    """The paths an `inputs` entry names: itself, or what it matches if it is a glob pattern."""
    path = base_dir / entry  # an absolute entry stays absolute
    if _GLOB_CHARS.isdisjoint(entry) or os.path.lexists(path):
        return [path]
    return [Path(p) for p in sorted(glob.glob(str(path)))]


def kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    return "not a regular file"


def inspect(path: Path) -> tuple[Status, str, int]:
    """(status, what is wrong or "ok", size in bytes) for one input file."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            return Status.CRITICAL, f"broken symlink to {os.readlink(path)}", 0
        return Status.CRITICAL, "missing", 0
    except PermissionError:
        return Status.CRITICAL, "unreadable: permission denied on a parent folder", 0
    except OSError as exc:
        return Status.CRITICAL, f"cannot stat: {exc.strerror or exc}", 0
    if not stat.S_ISREG(st.st_mode):
        return Status.CRITICAL, f"is {kind(st.st_mode)}, not a file", 0
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        return Status.CRITICAL, f"unreadable: {exc.strerror or exc}", st.st_size
    try:
        st = os.fstat(fd)  # what was opened, not what was stat'ed a moment ago
        if not stat.S_ISREG(st.st_mode):
            return Status.CRITICAL, f"is {kind(st.st_mode)}, not a file", 0
        first = os.read(fd, 1)
    except OSError as exc:
        return Status.CRITICAL, f"unreadable: {exc.strerror or exc}", st.st_size
    finally:
        os.close(fd)
    if not first:
        return Status.WARNING, "empty", 0
    return Status.OK, "ok", st.st_size


def _shown(path: Path, base_dir: Path) -> str:
    return str(path.relative_to(base_dir)) if path.is_relative_to(base_dir) else str(path)


def probe(ctx: Context) -> CheckResult:
    ws = ctx.ws
    entries = ws.config.health.inputs
    if not entries:
        return CheckResult("inputs", Status.OK, "no inputs configured")
    found: list[tuple[str, Status, str, int]] = []
    for entry in entries:
        paths = expand(ws.base_dir, entry)
        if not paths:
            found.append((entry, Status.CRITICAL, "no file matches", 0))
        for path in paths:
            found.append((_shown(path, ws.base_dir), *inspect(path)))
    details = [
        f"{name}: {why}" if status != Status.OK else f"{name}: {size} bytes"
        for name, status, why, size in found
    ]
    total = sum(size for _, status, _, size in found if status == Status.OK)
    metrics = [Metric("inputs_bytes", total, "B"), Metric("inputs_files", len(found))]
    status = worst(status for _, status, _, _ in found)
    if status == Status.OK:
        summary = f"all {len(found)} input file(s) readable ({total / 1e9:.2f} GB)"
        return CheckResult("inputs", status, summary, details, metrics=metrics)
    bad = [(name, why) for name, s, why, _ in found if s != Status.OK]
    named = ", ".join(f"{name} ({why})" for name, why in bad[:SUMMARY_NAMES])
    more = f" and {len(bad) - SUMMARY_NAMES} more" if len(bad) > SUMMARY_NAMES else ""
    summary = f"{len(bad)}/{len(found)} input(s) not usable: {named}{more}"
    return CheckResult("inputs", status, summary, details, metrics=metrics)
