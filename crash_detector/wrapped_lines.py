"""Log lines that a terminal wrapped, joined back for the rules.

A console that hard-wraps at W columns (a notebook's output cell, a CI job's console, `fold`,
a copy from a narrow tmux pane) cuts one long log line into pieces of exactly W characters and
a shorter rest, with no space added: "CUDA out of mem" / "ory. Tried to allocate". Rules are
matched line by line, so a message cut that way is lost, and a crash goes unseen.

The sign of such a log is its widest line: no line is wider than W, and several are exactly
W wide (a log written as it was printed has one longest line, or lines of many widths), or
one is, at a width terminals open at (80, 120 columns...). Each
run of W-wide lines is joined with the line that follows it: the logical line as printed.

The joined lines only ADD findings: a rule that matches a run joined but none of its pieces
is a finding on the run's first line; whatever the pieces matched stays as it was. A wrong
guess (two unrelated lines that happen to share the widest width) can therefore never hide a
crash; it could only join two lines into a match, which the rules' specific wording makes
unlikely.

Only buffers up to MAX_BYTES are looked at (the tails the watchdog, the task queue and
`--last-n-lines` read); a full scan of a big log reads its lines as they were written.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MIN_WIDTH = 60  # narrower "wraps" are more likely short lines of equal length
MIN_PIECES = 2  # lines exactly as wide as the widest, for the log to count as wrapped
# Widths terminals open at: one line of exactly such a width is enough (one long error line
# wrapped once is the common case, in a tail of short lines).
TERMINAL_WIDTHS = frozenset({80, 100, 120, 132, 160, 200})
MAX_BYTES = 4 * 1024 * 1024

_ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]")


@dataclass(frozen=True)
class Unwrapped:
    """`buffer` with each wrapped run joined into one line; for line i of it, `first[i]` is
    the index in the original buffer of its first piece and `runs` says which lines joined."""

    buffer: bytes
    first: list[int]
    offset: list[int]  # byte offset in the original buffer of each line's first piece
    runs: frozenset[int]  # indexes (in `buffer`) of the lines that are joined runs
    lines: int  # lines in the original buffer

    def pieces(self, index: int) -> range:
        """The original lines that line `index` of `buffer` was joined from."""
        end = self.first[index + 1] if index + 1 < len(self.first) else self.lines
        return range(self.first[index], end)


def _width(line: bytes) -> int:
    """Columns a line takes, near enough: characters, without colour codes and a CR."""
    if b"\x1b" in line:
        line = _ANSI.sub(b"", line)
    line = line.rstrip(b"\r")
    return len(line) if line.isascii() else len(line.decode("utf-8", "replace"))


def wrap_width(widths: list[int]) -> int | None:
    """The width a terminal wrapped lines of these widths at, or None if they look as written."""
    widest = max(widths, default=0)
    if widest < MIN_WIDTH:
        return None
    if widest not in TERMINAL_WIDTHS and widths.count(widest) < MIN_PIECES:
        return None
    return widest


def unwrap(buffer: bytes) -> Unwrapped | None:
    """The buffer with its wrapped lines joined, or None if it is not wrapped (or too big)."""
    if len(buffer) > MAX_BYTES:
        return None
    lines = buffer.split(b"\n")
    widths = [_width(line) for line in lines]
    width = wrap_width(widths)
    if width is None:
        return None
    joined: list[bytes] = []
    first: list[int] = []
    offset: list[int] = []
    runs: set[int] = set()
    index = at = 0
    while index < len(lines):
        start, start_at = index, at
        at += len(lines[index]) + 1
        while index + 1 < len(lines) and widths[index] == width:
            index += 1
            at += len(lines[index]) + 1
        if index > start:
            runs.add(len(joined))
            pieces = (_ANSI.sub(b"", line).rstrip(b"\r") for line in lines[start : index + 1])
            joined.append(b"".join(pieces))  # colour codes would sit inside the words
        else:
            joined.append(lines[index])
        first.append(start)
        offset.append(start_at)
        index += 1
    if not runs:
        return None
    return Unwrapped(b"\n".join(joined), first, offset, frozenset(runs), len(lines))
