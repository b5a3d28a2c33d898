"""Makes appended records durable on a thread of its own, off the batch loop's path.

An fsync costs 0.2 ms on a quiet virtual disk and many ms on one busy with a checkpoint: paid
inline after every batch it would be most of a 2 % budget on 10 ms batches, or all of it. The
records are written (in the page cache, safe from a killed process) before the next batch
starts; this thread then fsyncs them while that batch computes, and only after that refreshes
the experiment's counters, so state.json never counts a record a power cut could lose.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class Flusher:
    """Calls `sync` on its thread after `request()`, at most once per `interval` seconds.

    Requests that arrive while a sync runs are served by one more sync (so batches written
    during a slow fsync share the next one). `interval` None: no thread; `close()` syncs once.
    An error of `sync` stops the thread and is raised by the next `request()` or `close()`.
    """

    def __init__(self, sync: Callable[[], None], interval: float | None) -> None:
        self._sync = sync
        self._interval = interval
        self._cond = threading.Condition()
        self._pending = False
        self._stopping = False
        self._error: BaseException | None = None
        self._last = -float("inf")
        self._thread: threading.Thread | None = None
        if interval is not None:
            self._thread = threading.Thread(target=self._loop, name="study-runner-fsync")
            self._thread.daemon = True  # a wedged disk must not keep the interpreter alive
            self._thread.start()

    def request(self) -> None:
        self._raise_error()
        if self._thread is None:
            return
        with self._cond:
            self._pending = True
            self._cond.notify()

    def close(self) -> None:
        """Stop the thread, then sync once more on the caller's thread: all is durable after."""
        if self._thread is not None:
            with self._cond:
                self._stopping = True
                self._cond.notify()
            self._thread.join()
        self._raise_error()
        self._sync()

    def _raise_error(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _loop(self) -> None:
        assert self._interval is not None
        while True:
            with self._cond:
                while not self._stopping:
                    if self._pending:
                        wait = self._last + self._interval - time.monotonic()
                        if wait <= 0:
                            break
                        self._cond.wait(wait)
                    else:
                        self._cond.wait()
                if self._stopping:
                    return
                self._pending = False
            try:
                self._sync()
            except BaseException as exc:  # raised on the caller's thread, at its next call
                self._error = exc
                return
            self._last = time.monotonic()
