"""Exceptions Python printed and ignored: not what ended the run.

An exception that cannot be raised (in a `__del__`, a weakref callback, a generator's close,
at interpreter shutdown) goes to `sys.unraisablehook`, which prints it under a header, and the
program goes on:

    Exception ignored in: <function _MultiProcessingDataLoaderIter.__del__ at 0x7f3c>
    Traceback (most recent call last):
      File ".../torch/utils/data/dataloader.py", line 1479, in __del__
        self._shutdown_workers()
    AssertionError: can only test a child process

Everything from the header to the exception's line tells what happened to an object being
cleaned up, not why the run stopped: the scanner takes no finding from those lines. A rank or
worker prefix in front of the header is taken off the lines after it.
"""

from __future__ import annotations

from crash_detector.rules import CatalogPattern

HEADER = b"Exception ignored in"
# Searched by the scanner's engine with the rules, in the same pass: a big log costs nothing
# more, and the spans are looked for only where a header was seen.
HEADER_PATTERN = CatalogPattern(id="unraisable.header", pattern=HEADER.decode())
MAX_LINES = 200  # a traceback longer than this is not read to its end: the rest is scanned
_CHAINED = (b"During handling of the above exception", b"The above exception was the direct")


def spans(buffer: bytes, headers: list[tuple[int, int]] | None = None) -> list[tuple[int, int]]:
    """The [first, last] line indexes of each ignored exception printed in `buffer`.

    `headers`: the (line index, line start offset) of each header line, ascending, as the
    scanner's pass found them; without them the buffer is searched (a tail-sized view)."""
    if headers is None:
        headers = _find_headers(buffer)
    found: list[tuple[int, int]] = []
    for index, start in headers:
        if found and index <= found[-1][1]:
            continue  # a header inside the one before (a chained traceback's own)
        at = buffer.find(HEADER, start)
        end = start
        for _ in range(MAX_LINES + 1):  # a bounded slice: never the rest of a big chunk
            end = buffer.find(b"\n", end) + 1
            if end == 0:
                end = len(buffer)
                break
        lines = buffer[start:end].split(b"\n")[1 : MAX_LINES + 1]
        found.append((index, index + _length(lines, prefix=buffer[start:at])))
    return found


def _find_headers(buffer: bytes) -> list[tuple[int, int]]:
    headers: list[tuple[int, int]] = []
    at = buffer.find(HEADER)
    counted = index = 0
    while at >= 0:
        start = buffer.rfind(b"\n", 0, at) + 1
        index += buffer.count(b"\n", counted, start)
        counted = start
        headers.append((index, start))
        at = buffer.find(HEADER, buffer.find(b"\n", at) + 1 or len(buffer))
    return headers


def _length(lines: list[bytes], *, prefix: bytes) -> int:
    """How many of `lines` (those after the header) the ignored exception takes."""
    plain = [
        (raw[len(prefix) :] if prefix and raw.startswith(prefix) else raw).rstrip(b"\r")
        for raw in lines
    ]
    in_traceback = False
    for number, line in enumerate(plain, start=1):
        if not line.strip():
            continue
        if line.startswith(b"Traceback (most recent call last)"):
            in_traceback = True
        elif line[:1] in (b" ", b"\t") and in_traceback:
            continue  # a frame, or the source line it quotes
        elif line.startswith(_CHAINED):
            in_traceback = False
        else:  # the exception's own line ends it, unless a chained one follows
            following = [rest for rest in plain[number:] if rest.strip()][:1]
            if not (following and following[0].startswith(_CHAINED)):
                return number
    return len(lines)
