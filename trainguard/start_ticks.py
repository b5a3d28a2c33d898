"""When a process started, as the kernel counts it: clock ticks since boot, within one boot.

psutil's `create_time()` on Linux is the boot time read from /proc/stat plus these ticks, and
that boot time moves whenever the wall clock is stepped (NTP, an operator's `date -s`). The
tick count itself never moves, and the boot id says which boot it counts from, so together
they name a start that a clock step cannot shift. Where /proc is missing (macOS) both are None.
"""

from __future__ import annotations

import functools
from pathlib import Path

PROC = Path("/proc")
BOOT_ID = PROC / "sys" / "kernel" / "random" / "boot_id"

_STARTTIME_FIELD = 22
"""`starttime` in proc(5)'s 1-based numbering of /proc/PID/stat."""
_FIRST_FIELD_AFTER_COMM = 3


def parse_start_ticks(stat: str) -> int:
    """`starttime` from the text of a /proc/PID/stat; ValueError if it is not there.

    The command name (field 2, in parentheses) may hold spaces and ')' itself, so the fields
    are counted from the last ')', which no later field can contain.
    """
    _, paren, rest = stat.rpartition(")")
    if not paren:
        raise ValueError("/proc/PID/stat text has no ')' closing the command name")
    fields = rest.split()
    index = _STARTTIME_FIELD - _FIRST_FIELD_AFTER_COMM
    if len(fields) <= index:
        raise ValueError(f"/proc/PID/stat text has {len(fields)} fields after the command name")
    value = fields[index]
    if not value.isdigit() or not value.isascii():
        raise ValueError(f"/proc/PID/stat starttime is not a tick count: {value!r}")
    return int(value)


def read_start_ticks(pid: int) -> int | None:
    """The start of `pid` in ticks since boot; None if it is gone or /proc cannot tell."""
    if pid <= 0:
        return None
    try:
        stat = (PROC / str(pid) / "stat").read_text(encoding="utf-8", errors="replace")
        return parse_start_ticks(stat)
    except (OSError, ValueError):
        return None


@functools.cache
def current_boot_id() -> str | None:
    """This boot's id (a UUID the kernel draws at boot); None where the kernel has none.

    Read once: a process does not outlive the boot it started in.
    """
    try:
        boot_id = BOOT_ID.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return boot_id or None
