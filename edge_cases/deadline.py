"""Every wait of a scenario polls against one monotonic deadline and stops when cancelled."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

from edge_cases.scenario import Cancelled, ScenarioFailed

T = TypeVar("T")

POLL_INTERVAL = 0.05


class Deadline:
    """The time a scenario has left; `cancel` is shared by every scenario of a run."""

    def __init__(self, seconds: float, cancel: threading.Event) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds
        self.cancel = cancel

    def remaining(self) -> float:
        return max(0.0, self.end - time.monotonic())

    def check(self) -> None:
        if self.cancel.is_set():
            raise Cancelled("interrupted")
        if time.monotonic() >= self.end:
            raise ScenarioFailed(f"deadline of {self.seconds:.0f} s exceeded")

    def wait_for(
        self,
        predicate: Callable[[], T | None],
        what: str,
        *,
        within: float | None = None,
        context: Callable[[], str] | None = None,
    ) -> T:
        """Poll `predicate` until it returns something truthy; fail at `within` s or the deadline.

        `context` adds what was seen last to the failure message.
        """
        limit = self.remaining() if within is None else min(within, self.remaining())
        end = time.monotonic() + limit
        while True:
            if self.cancel.is_set():
                raise Cancelled("interrupted")
            value = predicate()
            if value:
                return value
            if time.monotonic() >= end:
                seen = f"; {context()}" if context is not None else ""
                raise ScenarioFailed(f"{what}: not seen within {limit:.1f} s{seen}")
            time.sleep(POLL_INTERVAL)

    def sleep(self, seconds: float) -> None:
        """Let time pass on purpose (a fault must last): still cancellable."""
        if self.cancel.wait(min(seconds, self.remaining())):
            raise Cancelled("interrupted")
