"""Liveness from the daemon's log, for trainers that do not write the progress file.

New output in the log means the trainer is alive; with `[watchdog] progress_regex`, the step is
read from its lines too. The log is not watched with inotify: a trainer printing thousands of
lines a second would wake the watchdog for each write. Instead the supervisor asks at the
moments that matter (the hang deadline, its periodic check, and once a second while a new
daemon has shown no sign of life), and one `stat` answers; only new complete lines are read,
at most READ_LIMIT bytes of them.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

READ_LIMIT = 1 << 20  # of new output per look: the step is in the last lines


@dataclass(frozen=True)
class LogActivity:
    grew: bool  # new output since the last look
    written_at: float | None  # the log's mtime (wall clock) when it grew
    step: int | None  # the last step `progress_regex` read in the new lines


NOTHING = LogActivity(False, None, None)


def compile_step_regex(pattern: str) -> re.Pattern[bytes] | None:
    """`progress_regex` as bytes; its named group `step`, else its first group, is the step."""
    return re.compile(pattern.encode("utf-8"), re.MULTILINE) if pattern else None


class LogLiveness:
    """What a daemon wrote to its log since `offset` (its own output starts there)."""

    def __init__(self, path: Path, offset: int, step_regex: re.Pattern[bytes] | None) -> None:
        self.path = path
        self.offset = offset  # where the next complete line to read for the step starts
        self.seen = offset  # the log's size at the last look
        self.step_regex = step_regex
        self._inode: int | None = None

    def look(self) -> LogActivity:
        try:
            info = os.stat(self.path)
        except OSError:
            return NOTHING
        if not stat.S_ISREG(info.st_mode):
            return NOTHING
        if (self._inode is not None and info.st_ino != self._inode) or info.st_size < self.seen:
            self.offset = self.seen = 0  # rotated or truncated: the new content is all new
        self._inode = info.st_ino
        if info.st_size <= self.seen:
            return NOTHING
        self.seen = info.st_size
        step = self._read_step(info.st_size) if self.step_regex is not None else None
        return LogActivity(True, info.st_mtime, step)

    def _read_step(self, size: int) -> int | None:
        """The step in the last matching complete line of the new output; moves the offset to
        the end of the last complete line, so that a half-written line is read whole later."""
        assert self.step_regex is not None
        start = max(self.offset, size - READ_LIMIT)
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            data = os.pread(fd, size - start, start)
        except OSError:
            return None
        finally:
            os.close(fd)
        end = data.rfind(b"\n")
        if end < 0:
            if len(data) >= READ_LIMIT:  # one endless line: skip it
                self.offset = start + len(data)
            return None
        self.offset = start + end + 1
        step = None
        for match in self.step_regex.finditer(data[: end + 1]):
            text = match.groupdict().get("step") or (match.group(1) if match.groups() else None)
            if text is not None and text.isdigit():
                step = int(text)
        return step
