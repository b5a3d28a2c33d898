"""tail.py against plain reference implementations, on real files (sparse where they are big)."""

from __future__ import annotations

import errno
import os
import re
import threading
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crash_detector import tail
from crash_detector.tail import (
    NotRegularFileError,
    TailResult,
    iter_chunks,
    last_lines,
    truncation_marker,
)

MB = 1024 * 1024
SAMPLE = Path("sample.log")  # each test runs in its own tmp dir

# Pieces that make every awkward case likely: empty lines, CRLF, lone CR, NUL, invalid UTF-8.
PIECES = [b"a", b"bc", b"xyzxyzxyz", b"\n", b"\r\n", b"\r", b"\n\n", b"\x00", b"\xff\xfe"]
logs = st.lists(st.sampled_from(PIECES), max_size=60).map(b"".join)


def cap(line: bytes, max_line_bytes: int) -> bytes:
    if len(line) <= max_line_bytes:
        return line
    return truncation_marker(len(line) - max_line_bytes) + line[-max_line_bytes:]


def reference_tail(data: bytes, n: int, max_line_bytes: int) -> tuple[list[bytes], int, int]:
    """What last_lines must return, the obvious way: (lines, start_offset, first_line_number)."""
    lines = data.splitlines()
    if n <= 0 or not lines:
        return [], len(data), 0
    starts = [0] + [m.end() for m in re.finditer(rb"\r\n|\r|\n", data)]
    count = min(n, len(lines))
    kept = [cap(line, max_line_bytes) for line in lines[-count:]]
    return kept, starts[len(lines) - count], len(lines) - count + 1


def newline_lines(data: bytes) -> list[bytes]:
    """Lines as iter_chunks counts them: ended by b"\\n" only, a last one without it counts."""
    lines = data.split(b"\n")
    return lines[:-1] if lines[-1] == b"" else lines


def count_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record the size of every os.pread (last_lines reads only with it)."""
    sizes: list[int] = []
    real = os.pread

    def counting(fd: int, length: int, offset: int) -> bytes:
        data = real(fd, length, offset)
        sizes.append(len(data))
        return data

    monkeypatch.setattr(os, "pread", counting)
    return sizes


def small_lines(count: int, first: int = 0) -> bytes:
    return b"".join(b"step %d loss=0.%04d\n" % (i, i % 9973) for i in range(first, first + count))


# --- last_lines -----------------------------------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(
    data=logs,
    n=st.integers(-1, 15),
    block_size=st.integers(1, 24),
    max_line_bytes=st.integers(1, 20),
)
def test_last_lines_match_splitlines_of_the_whole_file(
    data: bytes, n: int, block_size: int, max_line_bytes: int
) -> None:
    SAMPLE.write_bytes(data)
    result = last_lines(SAMPLE, n, block_size=block_size, max_line_bytes=max_line_bytes)
    lines, start_offset, first_line_number = reference_tail(data, n, max_line_bytes)
    assert result.lines == lines
    assert result.start_offset == start_offset
    assert result.size == len(data)
    assert not result.truncated
    assert all(b"\r" not in line and b"\n" not in line for line in result.lines)
    if not lines:
        assert result.first_line_number is None
    elif len(data) <= block_size:  # one read held the whole file: the number is known
        assert result.first_line_number == first_line_number
    else:
        assert result.first_line_number in (None, first_line_number)


def test_terminators_crlf_lone_cr_and_a_missing_final_newline() -> None:
    SAMPLE.write_bytes(b"one\r\ntwo\rthree\n\nfour")
    result = last_lines(SAMPLE, 10)
    assert result == TailResult([b"one", b"two", b"three", b"", b"four"], 1, 0, 20)


def test_a_trailing_newline_adds_no_empty_line() -> None:
    SAMPLE.write_bytes(b"a\nb\n")
    assert last_lines(SAMPLE, 1).lines == [b"b"]
    assert last_lines(SAMPLE, 1).start_offset == 2


def test_n_larger_than_the_file_returns_every_line_numbered_from_one() -> None:
    SAMPLE.write_bytes(small_lines(50))
    result = last_lines(SAMPLE, 1000, block_size=64)
    assert result.lines == small_lines(50).splitlines()
    assert result.first_line_number == 1
    assert result.start_offset == 0


def test_an_empty_file_and_n_below_one_give_no_lines() -> None:
    SAMPLE.write_bytes(b"")
    assert last_lines(SAMPLE, 5) == TailResult([], None, 0, 0)
    SAMPLE.write_bytes(b"x\n")
    assert last_lines(SAMPLE, 0) == TailResult([], None, 2, 2)
    assert last_lines(SAMPLE, -3) == TailResult([], None, 2, 2)


def test_a_big_tail_knows_offsets_but_not_line_numbers() -> None:
    data = small_lines(100_000)
    SAMPLE.write_bytes(data)
    result = last_lines(SAMPLE, 10)
    assert result.lines == data.splitlines()[-10:]
    assert result.first_line_number is None
    assert data[result.start_offset :].startswith(b"step 99990 ")


def test_a_huge_final_line_keeps_its_last_bytes_in_bounded_reads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bar = bytes(range(32, 127)) * (50 * MB // 95)  # 50 MB without a line break
    with SAMPLE.open("wb") as f:
        f.write(small_lines(3))
        f.write(bar + b"RuntimeError: CUDA out of memory")
    reads = count_reads(monkeypatch)
    result = last_lines(SAMPLE, 2, max_line_bytes=1000)
    line = bar + b"RuntimeError: CUDA out of memory"
    assert result.lines == [
        b"step 2 loss=0.0002",
        truncation_marker(len(line) - 1000) + line[-1000:],
    ]
    assert max(reads) <= 64 * 1024
    assert result.start_offset == len(small_lines(2))


def test_a_huge_line_in_the_middle_is_cut_and_its_neighbours_are_exact() -> None:
    before, after = small_lines(20), small_lines(5, first=20)
    huge = b"\x00\x01binary" * (2 * MB)
    SAMPLE.write_bytes(before + huge + b"\n" + after)
    result = last_lines(SAMPLE, 8, block_size=4096, max_line_bytes=100)
    assert result.lines[:2] == before.splitlines()[-2:]
    assert result.lines[2] == truncation_marker(len(huge) - 100) + huge[-100:]
    assert result.lines[3:] == after.splitlines()
    assert result.first_line_number == 19  # reading back to the huge line's start read it all
    assert result.start_offset == len(before) - len(b"step 18 loss=0.0018\n") * 2


def test_binary_garbage_splits_like_splitlines() -> None:
    data = os.urandom(MB)
    SAMPLE.write_bytes(data)
    result = last_lines(SAMPLE, 500, block_size=1000, max_line_bytes=300)
    assert result.lines == reference_tail(data, 500, 300)[0]
    assert result.start_offset == reference_tail(data, 500, 300)[1]


def test_a_line_without_a_start_in_reach_is_cut_there(monkeypatch: pytest.MonkeyPatch) -> None:
    # copytruncate with a writer that did not open O_APPEND leaves GBs of NUL before new lines.
    with SAMPLE.open("wb") as f:
        f.write(b"old line\n")
        f.truncate(300 * MB)
        f.seek(0, os.SEEK_END)
        f.write(b"\x00\x00resumed\nstep 7\n")
    reads = count_reads(monkeypatch)
    result = last_lines(SAMPLE, 5, max_line_bytes=16, max_scan_bytes=MB)
    assert result.lines[1:] == [b"step 7"]
    assert result.lines[0].startswith(b"[...truncated at least ")
    assert result.lines[0].endswith(b"\x00" * 9 + b"resumed")
    assert result.first_line_number is None
    assert sum(reads) <= 2 * MB


def test_cost_does_not_grow_with_the_file_size(monkeypatch: pytest.MonkeyPatch) -> None:
    tail = small_lines(5000)
    for name, size in (("small.log", 20 * MB), ("big.log", 200 * MB)):
        with open(name, "wb") as f:  # a sparse hole, then real lines
            f.write(small_lines(10))
            f.truncate(size)
            f.seek(0, os.SEEK_END)
            f.write(b"\n" + tail)
    reads = count_reads(monkeypatch)
    small = last_lines("small.log", 1000)
    read_small = sum(reads)
    reads.clear()
    big = last_lines("big.log", 1000)
    assert big.lines == small.lines == tail.splitlines()[-1000:]
    assert sum(reads) == read_small
    assert read_small < 2 * len(tail)


def test_last_lines_stops_cleanly_when_the_file_shrinks_while_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    SAMPLE.write_bytes(small_lines(20_000))
    real = os.pread
    calls = 0

    def truncating(fd: int, length: int, offset: int) -> bytes:
        nonlocal calls
        calls += 1
        if calls == 2:
            os.truncate(SAMPLE, 100)  # logrotate copytruncate, between two reads
        return real(fd, length, offset)

    monkeypatch.setattr(os, "pread", truncating)
    result = last_lines(SAMPLE, 10_000, block_size=4096)
    assert result.truncated
    assert 0 < len(result.lines) < 10_000
    assert result.lines == small_lines(20_000).splitlines()[-len(result.lines) :]
    assert result.first_line_number is None


# --- iter_chunks ----------------------------------------------------------------------------


@settings(max_examples=500, deadline=None)
@given(
    data=logs,
    chunk_size=st.integers(1, 24),
    max_line_bytes=st.integers(1, 20),
    peek=st.integers(1, 30),
)
def test_chunks_concatenate_to_the_file_and_end_at_newlines(
    data: bytes, chunk_size: int, max_line_bytes: int, peek: int
) -> None:
    SAMPLE.write_bytes(data)
    # The reader looks for a chunk's last line end in a small read first: shrink that read.
    with mock.patch.object(tail, "_PEEK_BYTES", peek):
        reader = iter_chunks(SAMPLE, chunk_size=chunk_size, max_line_bytes=max_line_bytes)
        chunks = list(reader)
    lines = newline_lines(data)
    # A line is cut when it does not fit in a chunk with its b"\n" and is over the limit.
    expected = [
        cap(line, max_line_bytes)
        if len(line) + (i < len(lines) - 1 or data.endswith(b"\n")) > chunk_size
        else line
        for i, line in enumerate(lines)
    ]
    joined = b"".join(chunk.data for chunk in chunks)
    assert newline_lines(joined) == expected
    if expected == lines:
        assert joined == data
    number = 1
    for chunk in chunks:
        assert chunk.data and not chunk.truncated
        assert chunk.first_line_number == number
        assert chunk.offset == 0 or data[chunk.offset - 1] == ord("\n")
        if chunk.data.startswith(b"[...truncated "):
            assert chunk.data.count(b"\n") <= 1
        else:
            assert len(chunk.data) <= chunk_size or chunk.data.count(b"\n") <= 1
            assert data[chunk.offset : chunk.offset + len(chunk.data)] == chunk.data
        number += chunk.data.count(b"\n")
    assert all(chunk.data.endswith(b"\n") for chunk in chunks[:-1])


def test_chunks_number_lines_exactly_across_big_reads() -> None:
    data = small_lines(300_000)
    SAMPLE.write_bytes(data)
    chunks = list(iter_chunks(SAMPLE, chunk_size=MB))
    assert len(chunks) > 3
    assert b"".join(chunk.data for chunk in chunks) == data
    for chunk in chunks:
        first = chunk.data[: chunk.data.index(b"\n")]
        assert first == b"step %d loss=0.%04d" % (
            chunk.first_line_number - 1,
            (chunk.first_line_number - 1) % 9973,
        )


def test_a_line_longer_than_the_limit_is_cut_and_later_numbers_stay_exact() -> None:
    huge = b"\r 45%|#####     | 450/1000" * (200_000)  # a 5 MB progress bar, no newline
    SAMPLE.write_bytes(small_lines(3) + huge + b"\n" + small_lines(3, first=4))
    chunks = list(iter_chunks(SAMPLE, chunk_size=MB, max_line_bytes=64 * 1024))
    assert max(len(chunk.data) for chunk in chunks) <= MB
    lines = newline_lines(b"".join(chunk.data for chunk in chunks))
    assert lines[3] == truncation_marker(len(huge) - 64 * 1024) + huge[-64 * 1024 :]
    assert lines[4:] == small_lines(3, first=4).splitlines()
    cut = next(chunk for chunk in chunks if chunk.data.startswith(b"[...truncated"))
    assert cut.first_line_number == 4
    assert cut.offset == len(small_lines(3))
    assert cut.data.count(b"\n") == 1


def test_a_file_truncated_during_the_scan_ends_it_cleanly() -> None:
    SAMPLE.write_bytes(small_lines(400_000))
    seen: list[bytes] = []
    reader = iter_chunks(SAMPLE, chunk_size=MB)
    for chunk in reader:
        seen.append(chunk.data)
        if len(seen) == 2:
            os.truncate(SAMPLE, 1000)
    assert reader.truncated
    assert 2 <= len(seen) <= 3
    assert small_lines(400_000).startswith(b"".join(seen))


def test_the_last_chunk_says_the_file_shrank_even_when_nothing_is_left() -> None:
    SAMPLE.write_bytes(small_lines(100_000))
    reader = iter_chunks(SAMPLE, chunk_size=MB)
    first = next(reader)
    os.truncate(SAMPLE, 0)
    rest = list(reader)
    assert not first.truncated
    assert [chunk.truncated for chunk in rest] == [True]
    assert rest[0].offset == len(first.data)


def test_bytes_appended_after_the_call_are_not_read() -> None:
    SAMPLE.write_bytes(b"a\nb\n")
    reader = iter_chunks(SAMPLE)
    with SAMPLE.open("ab") as f:
        f.write(b"written later\n")
    assert [chunk.data for chunk in reader] == [b"a\nb\n"]
    assert not reader.truncated


def test_an_empty_file_has_no_chunks() -> None:
    SAMPLE.write_bytes(b"")
    assert list(iter_chunks(SAMPLE)) == []


def test_closing_the_reader_early_releases_the_file() -> None:
    SAMPLE.write_bytes(small_lines(100_000))
    fds_before = len(os.listdir("/proc/self/fd"))
    with iter_chunks(SAMPLE, chunk_size=MB) as reader:
        next(reader)
    assert len(os.listdir("/proc/self/fd")) == fds_before
    assert list(reader) == []


def reading_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("iter_chunks")]


@settings(max_examples=200, deadline=None)
@given(
    data=logs,
    chunk_size=st.integers(1, 24),
    max_line_bytes=st.integers(1, 20),
    peek=st.integers(1, 30),
)
def test_reading_ahead_gives_the_same_chunks(
    data: bytes, chunk_size: int, max_line_bytes: int, peek: int
) -> None:
    SAMPLE.write_bytes(data)
    with mock.patch.object(tail, "_PEEK_BYTES", peek):
        plain = list(iter_chunks(SAMPLE, chunk_size=chunk_size, max_line_bytes=max_line_bytes))
        ahead = iter_chunks(
            SAMPLE, chunk_size=chunk_size, max_line_bytes=max_line_bytes, read_ahead=True
        )
        assert list(ahead) == plain
    assert list(ahead) == []  # an exhausted reader stays exhausted
    assert all(chunk.newlines == chunk.data.count(b"\n") for chunk in plain)


def test_a_reader_reading_ahead_stops_its_thread_at_the_end() -> None:
    SAMPLE.write_bytes(small_lines(100_000))
    chunks = list(iter_chunks(SAMPLE, chunk_size=MB, read_ahead=True))
    assert b"".join(chunk.data for chunk in chunks) == small_lines(100_000)
    assert reading_threads() == []


def test_closing_a_reader_reading_ahead_releases_its_file_and_thread() -> None:
    SAMPLE.write_bytes(small_lines(100_000))
    fds_before = len(os.listdir("/proc/self/fd"))
    with iter_chunks(SAMPLE, chunk_size=MB, read_ahead=True) as reader:
        next(reader)
    assert len(os.listdir("/proc/self/fd")) == fds_before
    assert reading_threads() == []
    assert list(reader) == []


def test_a_read_error_while_reading_ahead_reaches_the_caller(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    SAMPLE.write_bytes(small_lines(100_000))
    real = os.pread
    reads = 0

    def failing(fd: int, length: int, offset: int) -> bytes:
        nonlocal reads
        reads += 1
        if reads > 2:  # the first chunk is a peek and a read
            raise OSError(errno.EIO, "Input/output error")
        return real(fd, length, offset)

    monkeypatch.setattr(os, "pread", failing)
    with iter_chunks(SAMPLE, chunk_size=MB, read_ahead=True) as reader:
        first = next(reader)
        with pytest.raises(OSError, match="Input/output error"):
            next(reader)
        assert list(reader) == []  # like a generator that raised: it has ended
    assert small_lines(100_000).startswith(first.data)
    assert reading_threads() == []


def test_a_file_truncated_while_reading_ahead_ends_in_a_truncated_chunk() -> None:
    SAMPLE.write_bytes(small_lines(400_000))
    seen: list[tail.Chunk] = []
    with iter_chunks(SAMPLE, chunk_size=MB, read_ahead=True) as reader:
        for chunk in reader:
            seen.append(chunk)
            if len(seen) == 2:
                os.truncate(SAMPLE, 1000)
    assert reader.truncated
    assert [chunk.truncated for chunk in seen] == [False] * (len(seen) - 1) + [True]
    assert small_lines(400_000).startswith(b"".join(chunk.data for chunk in seen))


# --- what cannot be read --------------------------------------------------------------------

READERS: list[Callable[[Path], object]] = [lambda p: last_lines(p, 10), iter_chunks]


@pytest.mark.parametrize("read", READERS, ids=["last_lines", "iter_chunks"])
def test_a_fifo_is_refused_without_blocking(read: Callable[[Path], object]) -> None:
    fifo = Path("pipe")
    os.mkfifo(fifo)  # opening it for reading would block until a writer came
    with pytest.raises(NotRegularFileError, match="not a regular file") as raised:
        read(fifo)
    assert isinstance(raised.value, OSError)
    assert raised.value.filename == "pipe"


@pytest.mark.parametrize("read", READERS, ids=["last_lines", "iter_chunks"])
def test_missing_files_and_folders_raise_oserror(read: Callable[[Path], object]) -> None:
    with pytest.raises(FileNotFoundError):
        read(Path("missing.log"))
    Path("folder").mkdir()
    with pytest.raises(IsADirectoryError):
        read(Path("folder"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_an_unreadable_file_raises_permission_error() -> None:
    SAMPLE.write_bytes(b"x\n")
    SAMPLE.chmod(0)
    with pytest.raises(PermissionError):
        last_lines(SAMPLE, 1)


def test_sizes_below_one_are_refused() -> None:
    SAMPLE.write_bytes(b"x\n")
    with pytest.raises(ValueError, match="block_size"):
        last_lines(SAMPLE, 1, block_size=0)
    with pytest.raises(ValueError, match="chunk_size"):
        iter_chunks(SAMPLE, chunk_size=0)
