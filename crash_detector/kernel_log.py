"""The kernel log, read for the OOM killer's word on one pid.

Read from /dev/kmsg where it may be read (root, CAP_SYSLOG, or kernel.dmesg_restrict=0), else
from the journal (`journalctl -k`), else not at all. Every read is bounded in bytes, records and
time, and never blocks: the watchdog reads it on its one event loop.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess
import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path

KMSG = Path("/dev/kmsg")
MAX_BYTES = 16 * 1024 * 1024  # the largest ring buffers (log_buf_len) hold this much
KMSG_SECONDS = 0.5  # of reading the ring buffer at most
JOURNAL_SECONDS = 2.0  # for journalctl to start, seek by time and print
RECORD_BUFFER = 8192  # a kmsg record is at most ~1 KiB of text plus its dictionary
JOURNAL_LINES = 20000  # the newest entries since the process started

# The OOM killer's own lines, each naming the pid it killed (mm/oom_kill.c):
#   "Out of memory: Killed process 4242 (python3) total-vm:..."  (Memory cgroup out of memory: ...)
#   "Killed process 4242 (python3) total-vm:..."                 (kernels before 4.19)
#   "oom-kill:constraint=CONSTRAINT_MEMCG,...,task=python3,pid=4242,uid=1000"
#   "oom_reaper: reaped process 4242 (python3), now anon-rss:0kB, ..."
# Not "python3 invoked oom-killer" (the process that asked for memory, not the victim), nor the
# task table's "[   4242]  1000  4242 ..." rows (candidates, not victims).
_VICTIM = re.compile(
    r"\bKilled process (?P<a>\d+) \("
    r"|\boom-kill:.*?[:,]pid=(?P<b>\d+)\b"
    r"|\boom_reaper: reaped process (?P<c>\d+) \("
)


@dataclass(frozen=True)
class KernelLine:
    text: str
    at: float | None  # seconds since boot (kmsg); None where the source filtered by time itself


def oom_victim(text: str) -> int | None:
    """The pid this kernel line says the OOM killer killed, if it is such a line."""
    found = _VICTIM.search(text)
    if found is None:
        return None
    return int(found.group("a") or found.group("b") or found.group("c"))


def parse_kmsg_record(record: bytes) -> KernelLine | None:
    """One /dev/kmsg record: `PRI,SEQ,USEC,FLAGS[,...];MESSAGE` then ` KEY=VALUE` lines.

    Only the kernel's own messages (facility 0): a process allowed to write to /dev/kmsg could
    otherwise forge an OOM line.
    """
    head, sep, rest = record.partition(b";")
    fields = head.split(b",")
    if not sep or len(fields) < 3:
        return None
    try:
        priority, usec = int(fields[0]), int(fields[2])
    except ValueError:
        return None
    if priority >> 3 != 0:
        return None
    message = rest.split(b"\n", 1)[0]
    return KernelLine(message.decode("utf-8", "replace"), usec / 1e6)


def read_kmsg(
    path: Path = KMSG, *, max_bytes: int = MAX_BYTES, seconds: float = KMSG_SECONDS
) -> list[KernelLine] | None:
    """Every record in the kernel's ring buffer, oldest first; None if it cannot be read.

    Each open starts at the oldest record and each read() returns one record; O_NONBLOCK
    turns "no more records" into EAGAIN instead of a wait for the next one.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    lines: list[KernelLine] = []
    deadline = time.monotonic() + seconds
    total = 0
    try:
        while total < max_bytes and time.monotonic() < deadline:
            try:
                record = os.read(fd, RECORD_BUFFER)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.EPIPE:
                    continue  # records were overwritten while we read: go on from the next
                if not lines and exc.errno in (errno.EPERM, errno.EACCES, errno.EINVAL):
                    return None  # not readable to us, or not a kmsg device
                break
            if not record:
                break
            total += len(record)
            line = parse_kmsg_record(record)
            if line is not None:
                lines.append(line)
    finally:
        os.close(fd)
    return lines


def read_journal(
    since_epoch: float, *, seconds: float = JOURNAL_SECONDS
) -> list[KernelLine] | None:
    """The kernel's messages in the journal since `since_epoch`; None without journalctl.

    A user who may not read the kernel's journal gets nothing back: no evidence, not an error.
    """
    journalctl = shutil.which("journalctl")
    if journalctl is None:
        return None
    argv = [
        journalctl, "-k", "-q", "--no-pager", "-o", "cat", "-n", str(JOURNAL_LINES),
        "--since", f"@{max(0, int(since_epoch))}",
    ]  # fmt: skip
    try:
        done = subprocess.run(
            argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=seconds, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = done.stdout[:MAX_BYTES].decode("utf-8", "replace")
    return [KernelLine(line, None) for line in text.splitlines()]


@dataclass(frozen=True)
class KernelSearch:
    source: str | None  # what was read ("/dev/kmsg", "journalctl -k"); None: nothing readable
    line: str | None  # the OOM killer's line naming one of the pids, if any


def find_oom_kill(pids: Collection[int], *, since_mono: float, slack: float = 60.0) -> KernelSearch:
    """The OOM killer's line about one of `pids` since `since_mono` (a time.monotonic() value).

    The kernel's timestamps count from boot like time.monotonic(), with some drift, hence
    `slack`: the time limit only keeps out a reused pid's OOM kill from long before.
    """
    records = read_kmsg()
    if records is not None:
        return KernelSearch(str(KMSG), oom_kill_line(records, pids, since_boot=since_mono - slack))
    since_epoch = time.time() - (time.monotonic() - since_mono) - slack
    journal = read_journal(since_epoch)
    if journal is not None:
        return KernelSearch("journalctl -k", oom_kill_line(journal, pids, since_boot=None))
    return KernelSearch(None, None)


def oom_kill_line(
    lines: Iterable[KernelLine], pids: Collection[int], *, since_boot: float | None
) -> str | None:
    """The first line about one of `pids`; its "Killed process ..." line, the one that tells
    the memory it held, rather than the oom-kill summary just before it."""
    found = [
        line.text.strip()
        for line in lines
        if (since_boot is None or line.at is None or line.at >= since_boot)
        and oom_victim(line.text) in pids
    ]
    return next((text for text in found if "Killed process" in text), found[0] if found else None)
