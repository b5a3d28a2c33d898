"""Other ways to read a log's lines: colour codes inside them removed, wrapped ones joined.

Rules are matched line by line on the bytes as written, and two ways of printing hide the
words they look for. Each view below is the same lines read another way; the scanner scans a
view when a buffer needs it and keeps only what a view ADDS (see Scanner.scan): a rule that
matches a line of the view but none of the lines it was made from is a finding on the first
of them; whatever the lines matched stays as it was. A wrong guess can therefore never hide a
crash. Views are for tails (what the watchdog, the task queue and `--last-n-lines` read, up
to MAX_BYTES of it); a full scan reads lines as they were written (Scanner.scan's `views`).

Colour inside a line. IPython, rich and colorlog colour parts of a line ("\x1b[0;31m
ModuleNotFoundError\x1b[0m: No module named 'x'"); a log pasted from a terminal or a web page
often keeps the codes without their ESC byte ("[0;31mKeyError[0m: 'lr'"). Codes at the ends of
a line are already read through; the decoloured view removes the others.

Lines glued together. A progress bar redraws itself with carriage returns and ends without a
newline, so the message printed after it (on stderr, where tqdm writes too) starts on the bar's
line: "...| 1/2 [00:09<00:09, 9.1s/it]Killed", "...it/s]Traceback (most recent call last):".
Two streams interleave the same way: a warning written mid-line, after an error's message. Rules
anchored at a line's start never see what follows a bar, and an error followed by a warning
is taken for the warning; the unglued view cuts such a line at each CR, after each bar and
before each warning's "file.py:N: XWarning: ".

Wrapped lines. A console that hard-wraps at W columns (a notebook's output cell, a CI job's
console, `fold`, a copy from a narrow tmux pane) cuts one long log line into pieces of exactly
W characters and a shorter rest, with no space added: "CUDA out of mem" / "ory. Tried to
allocate". The sign of such a log is its widest line: no line is wider than W, and several are
exactly W wide (a log written as it was printed has one longest line, or lines of many
widths), or one is, at a width terminals open at (80, 120 columns...). Each run of W-wide
lines is joined with the line that follows it: the logical line as printed. A wrong guess (two
unrelated lines that happen to share the widest width) could only join two lines into a
match, which the rules' specific wording makes unlikely.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache

MIN_WIDTH = 60  # narrower "wraps" are more likely short lines of equal length
MIN_PIECES = 2  # distinct lines as wide as the widest, for the log to count as wrapped
# Widths terminals open at: one line of exactly such a width is enough (one long error line
# wrapped once is the common case, in a tail of short lines).
TERMINAL_WIDTHS = frozenset({80, 100, 120, 132, 160, 200})
MAX_PIECES = 24  # lines joined into one at most (2,000 characters at 80 columns): a run of
# full-width progress bars is no message, and a finding's text stays readable
MAX_BYTES = 4 * 1024 * 1024

ANSI = rb"\x1b\[[0-9;?]*[A-Za-z]"  # an escape sequence (the scanner strips these too)
_ANSI = re.compile(ANSI)
# SGR codes with or without their ESC byte ("[0;31m", "[1m", "[0m"): what a paste keeps.
_COLOUR = rb"\x1b?\[(?:\d{1,3};){0,4}\d{1,3}m"
_SGR = re.compile(rb"\[[\d;]{1,19}m")  # the same, found fast (a literal first)


# Where one printed line ends and another begins on the same line of the file: a carriage
# return (a progress bar redrawn in place), or the end of a tqdm bar ("[00:09<00:09, 1.1it/s]")
# that the next message was written straight after, because the bar never printed its newline.
_GLUE = rb"\d+/\d+ \[[\d:]+<[^\]\r\n]{0,80}\](?=\S)"
# ...and where a warning that another stream wrote begins ("...Good luck!/usr/lib/python3.10/
# site-packages/torch/autograd/__init__.py:200: UserWarning: ..."): Python's warnings start
# with the file and line that warned.
_WARNING = rb"(?<=[^\s\w./\\:-])(?=[\w./\\:-]+\.py:\d+: [A-Z]\w*Warning: )"
# What marks a line to cut: a CR with text after it, a bar's end with text glued on, a warning.
_GLUED = rb"\r[^\r\n]|<[^\]\r\n]{0,80}\]\S|Warning: "


@cache
def _compiled(pattern: bytes) -> re.Pattern[bytes]:
    """Compiled when first needed: most tails need none of them, and start-up counts."""
    return re.compile(pattern)


@dataclass(frozen=True)
class View:
    """Lines read another way: `lines[i]` stands for the original lines `pieces(i)`; `changed`
    names those that differ from the original (the others need no second look)."""

    lines: list[bytes]
    first: list[int]  # index of the original line each of `lines` starts at (or is in)
    changed: frozenset[int]
    count: int  # lines in the original buffer

    @property
    def buffer(self) -> bytes:
        return b"\n".join(self.lines)

    def pieces(self, index: int) -> range:
        """The original lines that `lines[index]` was made from."""
        end = self.first[index + 1] if index + 1 < len(self.first) else self.count
        return range(self.first[index], max(end, self.first[index] + 1))  # parts share one


def decolour(buffer: bytes) -> View | None:
    """The buffer without colour codes inside its lines, or None if none has one. Codes at a
    line's ends are read through already; only lines with one inside are made anew."""
    if len(buffer) > MAX_BYTES:
        return None
    inside = [m.start() for m in _SGR.finditer(buffer) if _inside_a_line(buffer, m)]
    if not inside:
        return None
    lines = buffer.split(b"\n")
    colour = _compiled(_COLOUR)
    return _view(
        lines, {i: ([colour.sub(b"", lines[i])], 0) for i in _line_numbers(buffer, inside)}
    )


def unglue(buffer: bytes) -> View | None:
    """The buffer with each line that holds several cut apart, or None if none does.

    Only what follows a line's last CR can be a message of its own: a message ends with a
    newline, so whatever a bar redrew over before it is more bar. That last part, and each
    piece of it cut after a bar or before a warning, is what gets a second look. The lines to
    look at are found by one search of the buffer: most tails have none."""
    if len(buffer) > MAX_BYTES:
        return None
    found = [m.start() for m in _compiled(_GLUED).finditer(buffer)]
    if not found:
        return None
    lines = buffer.split(b"\n")
    cut: dict[int, tuple[list[bytes], int]] = {}
    for index in _line_numbers(buffer, found):
        head, cr, last = lines[index].rstrip(b"\r").rpartition(b"\r")
        if b"<" in last:
            last = _compiled(_GLUE).sub(b"\\g<0>\n", last)
        if b"Warning: " in last:
            last = _compiled(_WARNING).sub(b"\n", last)
        pieces = [p for p in last.split(b"\n") if p.strip()]
        if cr and head.strip() and pieces:
            cut[index] = ([head, *pieces], 1)  # the redrawn bars, read already, stay first
        elif len(pieces) > 1:
            cut[index] = (pieces, 0)
    return _view(lines, cut)


def _inside_a_line(buffer: bytes, code: re.Match[bytes]) -> bool:
    """Whether a colour code has text of its line on both sides (not at the line's ends)."""
    start = code.start() - (code.start() > 0 and buffer[code.start() - 1] == 0x1B)
    before = buffer[start - 1 : start]
    after = buffer[code.end() : code.end() + 1]
    return before not in (b"", b"\n", b"\r") and after not in (b"", b"\n", b"\r", b"\x1b")


def _line_numbers(buffer: bytes, offsets: list[int]) -> list[int]:
    """The distinct line indexes of ascending byte `offsets`, counting newlines once."""
    numbers: list[int] = []
    line = at = 0
    for offset in offsets:
        line += buffer.count(b"\n", at, offset)
        at = offset
        if not numbers or numbers[-1] != line:
            numbers.append(line)
    return numbers


def _view(lines: list[bytes], made: dict[int, tuple[list[bytes], int]]) -> View | None:
    """A View of `lines` where line i is replaced by the lines of `made[i]`, of which all but
    the first `made[i][1]` (text read already) changed."""
    if not made:
        return None
    parts: list[bytes] = []
    first: list[int] = []
    changed: list[int] = []
    done = 0
    for index in sorted(made):
        parts += lines[done:index]
        first += range(done, index)
        pieces, skip = made[index]
        changed += range(len(parts) + skip, len(parts) + len(pieces))
        parts += pieces
        first += [index] * len(pieces)
        done = index + 1
    parts += lines[done:]
    first += range(done, len(lines))
    return View(parts, first, frozenset(changed), len(lines))


def _width(line: bytes) -> int:
    """Columns a line takes, near enough: characters, without colour codes, of what is left
    on screen after its last carriage return (a progress bar redrawn in place)."""
    if b"\x1b" in line:
        line = _ANSI.sub(b"", line)
    line = line.rstrip(b"\r")
    if b"\r" in line:
        line = line[line.rfind(b"\r") + 1 :]
    return len(line) if line.isascii() else len(line.decode("utf-8", "replace"))


def wrap_width(lines: list[bytes], widths: list[int]) -> int | None:
    """The width a terminal wrapped `lines` (of these `widths`) at, or None if they look as
    written. Lines repeated word for word (a warning each rank printed) count once."""
    widest = max(widths, default=0)
    if widest < MIN_WIDTH:
        return None
    if widest not in TERMINAL_WIDTHS:
        pieces = {line for line, width in zip(lines, widths, strict=True) if width == widest}
        if len(pieces) < MIN_PIECES:
            return None
    return widest


def unwrap(buffer: bytes) -> View | None:
    """The buffer with its wrapped lines joined, or None if it is not wrapped (or too big)."""
    if len(buffer) > MAX_BYTES:
        return None
    lines = buffer.split(b"\n")
    if buffer.isascii() and b"\x1b" not in buffer and b"\r" not in buffer:
        widths = list(map(len, lines))  # the usual case: bytes are columns
    else:
        widths = [_width(line) for line in lines]
    width = wrap_width(lines, widths)
    if width is None:
        return None
    joined: list[bytes] = []
    first: list[int] = []
    runs: set[int] = set()
    index = 0
    while index < len(lines):
        start = index
        while index + 1 < len(lines) and widths[index] == width and index - start < MAX_PIECES:
            index += 1
        if index > start:
            runs.add(len(joined))
            pieces = (_ANSI.sub(b"", line).rstrip(b"\r") for line in lines[start : index + 1])
            joined.append(b"".join(pieces))  # colour codes would sit inside the words
        else:
            joined.append(lines[index])
        first.append(start)
        index += 1
    if not runs:
        return None
    return View(joined, first, frozenset(runs), len(lines))
