"""Appends the executor's records and fsyncs them on a thread of its own, off the batch loop.

Encoding a batch's records, appending them and an fsync cost 0.1-0.5 ms on this project's VM
(the fsync alone 0.2 ms on a quiet disk, many ms on one busy with a checkpoint): paid between
batches, that is most of a 2 % budget on 10 ms batches, or all of it. Handed to this thread,
they happen while the next batch computes; the loop pays a hand-over (tens of us).

What a crash can cost: SIGKILL or a segfault loses what was handed over and not yet written
(the batch before the one that crashed, at most, with the default interval), and a power cut
what was not yet fsynced; a rerun computes those items again. Nothing is ever half-counted:
state.json's counters are refreshed only after the fsync of what they count.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

from study_runner.results_file import ResultsFile, encode_predictions

# One hand-over: a batch's (idxs, predictions), all strings (encoded on the thread), or
# ready-made lines (error and abort records; predictions that had to be encoded to be checked).
Chunk = tuple[list[int], list[Any]] | bytes


class RecordWriter:
    """Writes chunks in the order they are put, then fsyncs, at most once per `interval` s.

    `put(chunk, n)`: `n` is the number of prediction records in the chunk. `after_sync(n)`
    runs after each fsync with the number of prediction records written so far. `interval`
    None: no thread; `put` writes at once and only `close` fsyncs. An error of the thread (a
    full disk) stops it and is raised by the next `put` or by `close`.
    """

    def __init__(
        self, file: ResultsFile, after_sync: Callable[[int], None], interval: float | None
    ) -> None:
        self._file = file
        self._after_sync = after_sync
        self._interval = interval
        self._chunks: list[tuple[Chunk, int]] = []
        self._predictions = 0  # prediction records written
        self._cond = threading.Condition()
        self._stopping = False
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        if interval is not None:
            self._thread = threading.Thread(target=self._loop, name="study-runner-writer")
            self._thread.daemon = True  # a wedged disk must not keep the interpreter alive
            self._thread.start()

    def put(self, chunk: Chunk, predictions: int) -> None:
        self._raise_error()
        if self._thread is None:
            self._write([(chunk, predictions)])
            return
        with self._cond:
            self._chunks.append((chunk, predictions))
            self._cond.notify()

    def close(self) -> None:
        """Stop the thread; write what is left and fsync on the caller's thread."""
        if self._thread is not None:
            with self._cond:
                self._stopping = True
                self._cond.notify()
            self._thread.join()
        self._raise_error()
        chunks, self._chunks = self._chunks, []
        self._write(chunks)
        self._sync()

    def _raise_error(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _write(self, chunks: list[tuple[Chunk, int]]) -> None:
        for chunk, predictions in chunks:
            self._file.append(chunk if isinstance(chunk, bytes) else encode_predictions(*chunk))
            self._predictions += predictions

    def _sync(self) -> None:
        os.fsync(self._file.fd)
        self._after_sync(self._predictions)

    def _loop(self) -> None:
        assert self._interval is not None
        last = -float("inf")
        while True:
            with self._cond:
                while not self._stopping:
                    if self._chunks:
                        wait = last + self._interval - time.monotonic()
                        if wait <= 0:
                            break
                        self._cond.wait(wait)
                    else:
                        self._cond.wait()
                if self._stopping:
                    return  # close() writes what is left
                chunks, self._chunks = self._chunks, []
            try:
                self._write(chunks)
                self._sync()
            except BaseException as exc:  # raised on the caller's thread, at its next call
                self._error = exc  # those chunks are lost: their items run again next time
                return
            last = time.monotonic()
