"""Read a log from its end, or all of it in big line-aligned chunks, in bounded memory.

Two readers, two definitions of a line, each chosen for its caller:

* `last_lines` splits like `bytes.splitlines()`: a line ends at b"\\r\\n", b"\\n" or a lone
  b"\\r", and the terminator is removed, so no b"\\r" is ever left in a returned line. A final
  line without a terminator counts; a trailing terminator adds no empty line.
* `iter_chunks` counts lines the way `grep -n`, `wc -l` and editors do: a line ends at b"\\n".
  Chunks are raw bytes (a b"\\r" stays where it was) and always end just after a b"\\n", so a
  scanner never sees a line, nor a b"\\r\\n", split between two chunks.

The two numberings agree on every file without a lone b"\\r" (tqdm's redraws are the usual one).

An over-long line keeps only its last `max_line_bytes` bytes, after a marker
`b"[...truncated N bytes] "` saying how many were left out: the end of a progress bar or of a
binary blob is where an error lands. Both readers take a path and open it themselves; anything
but a regular file is refused before a read can block (`NotRegularFileError`, an `OSError`).

`iter_chunks(read_ahead=True)` reads the next chunk and counts its lines in a thread while the
caller scans this one: `os.pread` and Hyperscan release the GIL, and `bytes.count` holding it
does not stop Hyperscan, so on two cores the count costs next to nothing.
"""

from __future__ import annotations

import errno
import io
import os
import stat
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from concurrent.futures import Future, ThreadPoolExecutor

__all__ = [
    "Chunk",
    "ChunkReader",
    "NotRegularFileError",
    "TailResult",
    "iter_chunks",
    "last_lines",
    "truncation_marker",
]

_PEEK_BYTES = 64 * 1024  # iter_chunks looks for a chunk's last line end in this much first


class NotRegularFileError(OSError):
    """A FIFO, socket or device: reading one could block forever or never end."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__(errno.EINVAL, "not a regular file", os.fspath(path))


def truncation_marker(omitted: int, *, exact: bool = True) -> bytes:
    """The prefix of a cut line; `exact=False` when the line's start was never found."""
    return b"[...truncated %s%d bytes] " % (b"" if exact else b"at least ", omitted)


@dataclass(frozen=True)
class TailResult:
    """The last lines of a file, oldest first.

    `first_line_number` is the 1-based number of `lines[0]` when the whole file was read on the
    way (small files), else None: counting the lines of a big file is what a tail avoids.
    `start_offset` is the file offset where `lines[0]` starts (`size` when no line was
    returned). `truncated` is True when the file shrank while it was read (rotation by
    copytruncate): the lines found before that are returned, fewer than asked for.
    """

    lines: list[bytes]
    first_line_number: int | None
    start_offset: int
    size: int
    truncated: bool = False

    def lines_from(self, offset: int) -> list[bytes]:
        """The lines that start at or after file offset `offset`; all of them when the file is
        now shorter than that (copytruncate emptied it since). A cut line (over
        `max_line_bytes`) makes the offsets after it approximate."""
        if offset <= self.start_offset or self.size < offset:
            return self.lines
        at = self.start_offset
        for index, line in enumerate(self.lines):
            if at >= offset:
                return self.lines[index:]
            at += len(line) + 1
        return []


@dataclass(frozen=True)
class Chunk:
    """Whole lines of a file, each ended by b"\\n" (but the last line of the file may lack it).

    `offset` is the file offset of the chunk's first line and `first_line_number` its 1-based
    number. `data[i]` is at file offset `offset + i`, except in the chunk of a cut line, which
    holds that line alone: `truncation_marker(N)`, the line's last bytes and its b"\\n".
    `truncated` is set on the last chunk when the file shrank while it was read; that chunk
    holds what was left to read (it may be empty) and may end in the middle of a line.
    `newlines` is `data.count(b"\\n")`, counted once for every reader of the chunk.
    """

    data: bytes
    offset: int
    first_line_number: int
    truncated: bool = False
    newlines: int = 0


def last_lines(
    path: str | os.PathLike[str],
    n: int,
    *,
    block_size: int = 64 * 1024,
    max_line_bytes: int = 64 * 1024,
    max_scan_bytes: int = 64 * 1024 * 1024,
) -> TailResult:
    """The last `n` lines of `path`, read backwards from its end in `block_size` blocks.

    The cost depends on the length of those lines, never on the size of the file. A line
    longer than `max_line_bytes` keeps only its last `max_line_bytes` bytes behind
    `truncation_marker(N)`; the reader then looks for the line's start without keeping what it
    reads, but at most `max_scan_bytes` further back: past that (a multi-GB run of NUL bytes
    left by copytruncate, a binary file) it stops there, marks the line
    `truncation_marker(N, exact=False)` and returns it as the first of fewer than `n` lines.
    """
    _require_positive(block_size=block_size, max_line_bytes=max_line_bytes)
    with _open_regular(path) as file:
        size = os.fstat(file.fileno()).st_size
        if n <= 0 or size == 0:
            return TailResult([], None, size, size)
        return _Backwards(file.fileno(), size, block_size, max_line_bytes, max_scan_bytes).take(n)


def iter_chunks(
    path: str | os.PathLike[str],
    *,
    chunk_size: int = 8 * 1024 * 1024,
    max_line_bytes: int = 1024 * 1024,
    read_ahead: bool = False,
) -> ChunkReader:
    """Every line of `path`, in chunks of at most `chunk_size` bytes that end at a line end.

    The file is opened (and refused, with an `OSError`) at once; bytes appended after the call
    are not read. Only a line that does not fit in `chunk_size` bytes with its b"\\n" can
    break that bound: it is found without being kept, and when it has more than
    `max_line_bytes` bytes (its b"\\n" not counted) its chunk is `truncation_marker(N)`, its
    last `max_line_bytes` bytes and its b"\\n". It is still one line, so later numbers stay
    exact. Memory is one chunk, however long the lines.

    `read_ahead=True` reads (and counts the lines of) the next chunk in a thread while the
    caller works on this one: the same chunks, up to three in memory, a file that shrinks is
    noticed one chunk earlier, and the reader must be closed or exhausted to end the thread.
    """
    _require_positive(chunk_size=chunk_size, max_line_bytes=max_line_bytes)
    return ChunkReader(
        path, chunk_size=chunk_size, max_line_bytes=max_line_bytes, read_ahead=read_ahead
    )


class ChunkReader(Iterator[Chunk]):
    """The iterator `iter_chunks` returns; close it (or use `with`) to stop early."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        chunk_size: int,
        max_line_bytes: int,
        read_ahead: bool = False,
    ) -> None:
        self._file = _open_regular(path)
        self.size = os.fstat(self._file.fileno()).st_size
        self.truncated = False  # with read_ahead, possibly before the chunk that shows it
        self._chunks = self._read(chunk_size, max_line_bytes)
        # One worker advances the generator, one chunk ahead of the caller, never two at once.
        self._pool: ThreadPoolExecutor | None = None
        self._ahead: Future[Chunk | None] | None = None
        if read_ahead:
            # Imported here: a short log, read in one chunk, never needs it (~5 ms at start-up).
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(1, thread_name_prefix="iter_chunks")
            self._ahead = self._pool.submit(next, self._chunks, None)

    def __next__(self) -> Chunk:
        if self._pool is None:
            return next(self._chunks)
        ahead, self._ahead = self._ahead, None
        if ahead is None:  # exhausted, closed, or a read failed: like a generator, it ends
            raise StopIteration
        chunk = ahead.result()  # the read's OSError, if any, is raised here
        if chunk is None:
            self._pool.shutdown()
            raise StopIteration
        self._ahead = self._pool.submit(next, self._chunks, None)
        return chunk

    def close(self) -> None:
        if self._pool is not None:
            self._ahead = None
            self._pool.shutdown(cancel_futures=True)  # waits for a read in flight
        self._chunks.close()
        self._file.close()

    def __enter__(self) -> ChunkReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _read(self, chunk_size: int, max_line_bytes: int) -> Generator[Chunk, None, None]:
        pos, number = 0, 1
        try:
            while pos < self.size and not self.truncated:
                end = min(pos + chunk_size, self.size)
                data, after = self._lines_from(pos, end, max_line_bytes)
                if self.truncated:  # whatever is left of the range, line ends or not
                    data = os.pread(self._file.fileno(), end - pos, pos)
                newlines = data.count(b"\n")
                yield Chunk(data, pos, number, self.truncated, newlines)
                number += newlines
                pos = after
        finally:
            self._file.close()

    def _lines_from(self, pos: int, end: int, max_line_bytes: int) -> tuple[bytes, int]:
        """The whole lines in [pos, end) and the offset after them (at least one line)."""
        if end == self.size:
            return self._read_at(pos, end), end
        # Find the last line end in a small read first, so that the big read is exactly the
        # chunk: the kernel copies into the bytes handed out, and nothing is copied again.
        peek_from = max(pos, end - _PEEK_BYTES)
        brk = self._read_at(peek_from, end).rfind(b"\n") + 1
        if brk:
            return self._read_at(pos, peek_from + brk), peek_from + brk
        if peek_from > pos:
            data = self._read_at(pos, end)
            brk = data.rfind(b"\n") + 1
            if brk:
                return data[:brk], pos + brk
        return self._long_line(pos, end, max_line_bytes)

    def _long_line(self, pos: int, end: int, max_line_bytes: int) -> tuple[bytes, int]:
        """The line at `pos`, longer than a chunk: found without keeping it, then cut."""
        line_end = self.size
        while end < self.size and not self.truncated:
            block = self._read_at(end, min(end + _PEEK_BYTES * 16, self.size))
            found = block.find(b"\n")
            if found >= 0:
                line_end = end + found
                break
            end += len(block)
        after = min(line_end + 1, self.size)
        keep_from = max(pos, line_end - max_line_bytes)
        data = self._read_at(keep_from, after)
        if keep_from > pos:
            data = truncation_marker(keep_from - pos) + data
        return data, after

    def _read_at(self, start: int, end: int) -> bytes:
        data = os.pread(self._file.fileno(), end - start, start)
        if len(data) < end - start:
            self.truncated = True  # the file shrank under us: rotated by copytruncate
        return data


class _Backwards:
    """The state of one `last_lines` call: lines are found right to left."""

    def __init__(
        self, fd: int, size: int, block_size: int, max_line_bytes: int, max_scan_bytes: int
    ) -> None:
        self.fd = fd
        self.size = size
        self.block_size = block_size
        self.max_line_bytes = max_line_bytes
        self.max_scan_bytes = max_scan_bytes
        self.pos = size  # everything from here to the end has been read
        self.found: list[bytes] = []  # newest first
        self.start_offset = size
        self.truncated = False
        self.gave_up = False  # an over-long line's start was not found within max_scan_bytes

    def take(self, n: int) -> TailResult:
        # `open_line` is the leftmost line seen so far, whose start has not been reached yet:
        # it lies at self.pos, with its terminator and the bytes of file to its right.
        open_line = b""
        text: bytes | None = None  # bytes at self.pos that were read but not split yet
        total: int | None = None  # lines in the file, once its start was reached
        while len(self.found) < n and self.pos > 0 and not self.gave_up:
            if text is None:
                text = self._read_before(self.pos, self.block_size)
                if text is None:
                    break
            self.pos -= len(text)
            pieces = (text + open_line).splitlines(keepends=True)
            text = None
            # The first piece may continue to the left (and a b"\n" starting it may be the end
            # of a b"\r\n"), unless the file starts there.
            open_line = pieces.pop(0) if self.pos > 0 else b""
            if self.pos == 0:
                total = len(self.found) + len(pieces)
            end = self.pos + len(open_line) + sum(map(len, pieces))
            for piece in reversed(pieces[-(n - len(self.found)) :]):
                end -= len(piece)
                self._keep(_content(piece), end)
            if len(self.found) < n and len(_content(open_line)) > self.max_line_bytes:
                text = self._finish_long_line(_content(open_line))
                open_line = b""
                if self.pos == 0 and not (self.gave_up or self.truncated):
                    total = len(self.found)
        lines = self.found[::-1]
        first = None
        if total is not None and lines and not self.truncated:
            first = total - len(lines) + 1
        return TailResult(lines, first, self.start_offset, self.size, self.truncated)

    def _finish_long_line(self, tail: bytes) -> bytes | None:
        """Find where an over-long line starts without keeping it; return the bytes before it.

        `tail` is the end of the line, which starts somewhere before self.pos.
        """
        omitted = len(tail) - self.max_line_bytes
        kept = tail[-self.max_line_bytes :]
        scanned = 0
        while self.pos > 0:
            if scanned >= self.max_scan_bytes:
                self.found.append(truncation_marker(omitted, exact=False) + kept)
                self.start_offset = self.pos
                self.gave_up = True
                return None
            block = self._read_before(self.pos, self.block_size)
            if block is None:
                return None
            scanned += len(block)
            start = self.pos - len(block)
            brk = max(block.rfind(b"\n"), block.rfind(b"\r")) + 1
            omitted += len(block) - brk
            if brk:
                # The line starts just after that byte: a b"\r" there cannot be the first half
                # of a b"\r\n", since the byte after it is part of the line.
                self.found.append(truncation_marker(omitted) + kept)
                self.start_offset = start + brk
                self.pos = start + brk
                return block[:brk]
            self.pos = start
        self.found.append(truncation_marker(omitted) + kept)
        self.start_offset = 0
        return None

    def _keep(self, line: bytes, offset: int) -> None:
        if len(line) > self.max_line_bytes:
            line = truncation_marker(len(line) - self.max_line_bytes) + line[-self.max_line_bytes :]
        self.found.append(line)
        self.start_offset = offset

    def _read_before(self, pos: int, count: int) -> bytes | None:
        """The `count` bytes before `pos` (fewer at the file's start); None if the file shrank."""
        start = max(0, pos - count)
        block = os.pread(self.fd, pos - start, start)
        if len(block) < pos - start:
            self.truncated = True
            return None
        return block


def _content(piece: bytes) -> bytes:
    # A piece of splitlines(keepends=True) holds no b"\r" or b"\n" but its terminator.
    return piece.rstrip(b"\r\n")


def _open_regular(path: str | os.PathLike[str]) -> io.FileIO:
    """Open `path` for reading, refusing anything but a regular file before it can block.

    O_NONBLOCK makes opening a FIFO return at once (it changes nothing for a regular file), and
    fstat of the open file leaves no gap for the path to be swapped between check and open.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), os.fspath(path))
        if not stat.S_ISREG(mode):
            raise NotRegularFileError(path)
    except BaseException:
        os.close(fd)
        raise
    return io.FileIO(fd, "r", closefd=True)


def _require_positive(**sizes: int) -> None:
    for name, value in sizes.items():
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
