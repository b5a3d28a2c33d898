"""When a crashed daemon is restarted, how long to wait first, and when to give up.

A small pure class (circus's flapping plugin): it is fed times from an injected clock and
knows nothing of processes or files, so every rule is tested without sleeping or spawning.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

# 2.0 ** 64 is far past any sane backoff_max; the cap keeps a long crash streak from
# overflowing the float.
_MAX_DOUBLINGS = 64


@dataclass(frozen=True)
class Decision:
    """What to do about one crash; `reason` is a sentence for the log, the alert and status."""

    action: Literal["restart", "give_up"]
    delay: float  # seconds to wait before restarting; 0 for give_up
    reason: str


class RestartPolicy:
    """Rate limit, backoff and give-up rules for restarting one daemon.

    Call `started()` whenever a daemon is up and `decide()` when it crashed. A "restart"
    decision is recorded at once (time and checkpoint step), so the caller only waits
    `delay` and starts the daemon again; a "give_up" records nothing, so asking twice
    answers the same until an operator calls `reset()`.
    """

    def __init__(
        self,
        *,
        max_restarts: int,
        window: float,
        backoff_base: float,
        backoff_max: float,
        reset_after: float,
        max_without_progress: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self.retune(
            max_restarts=max_restarts, window=window, backoff_base=backoff_base,
            backoff_max=backoff_max, reset_after=reset_after,
            max_without_progress=max_without_progress,
        )  # fmt: skip
        self._restarts: deque[float] = deque()  # decision times, oldest first
        self._consecutive = 0
        self._started_at: float | None = None
        # Highest step a restart resumed from; None = from scratch (below every step).
        self._best_step: int | None = None
        self._without_progress = 0  # restarts in a row that did not pass _best_step
        # Set when a restart changed something (a halved batch size, a GPU left out, a rewind):
        # the step the run died at. The next crash counts as progress only if the run got past
        # it, whatever checkpoint it resumes from (a rewind resumes from a lower one).
        self._recovery_bar: int | None = None

    def retune(
        self,
        *,
        max_restarts: int,
        window: float,
        backoff_base: float,
        backoff_max: float,
        reset_after: float,
        max_without_progress: int,
    ) -> None:
        """Set the limits: at construction, and for a reloaded config (what happened so far,
        the restarts and the streak, still counts). ValueError for a limit out of range."""
        for name, value, least in (
            ("max_restarts", max_restarts, 0),
            ("window", window, 0),
            ("backoff_base", backoff_base, 0),
            ("backoff_max", backoff_max, 0),
            ("reset_after", reset_after, 0),
            ("max_without_progress", max_without_progress, 1),
        ):
            if value < least:
                raise ValueError(f"{name}: must be >= {least}, got {value}")
        self._max_restarts = max_restarts
        self._window = window
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max
        self._reset_after = reset_after
        self._max_without_progress = max_without_progress

    @property
    def restart_times(self) -> tuple[float, ...]:
        """Clock times of the restarts that still count against `max_restarts`."""
        now = self._clock()
        return tuple(t for t in self._restarts if now - t <= self._window)

    @property
    def consecutive(self) -> int:
        """Crashes since the daemon last ran `reset_after` seconds; drives the backoff."""
        return self._consecutive

    def started(self) -> None:
        """The daemon is up now: its uptime at the next crash decides the backoff reset."""
        self._started_at = self._clock()

    def remember(self, ages: list[float]) -> None:
        """Count restarts made `ages` seconds ago (by a watchdog this one replaces) against
        the limit and the backoff, as if this policy had made them; older ones are ignored."""
        now = self._clock()
        recent = [now - age for age in ages if 0 <= age <= self._window]
        self._restarts = deque(sorted([*self._restarts, *recent]))
        self._consecutive += len(recent)

    def reset(self) -> None:
        """Forget all history: an operator cleared FATAL and gets a fresh budget."""
        self._restarts.clear()
        self._consecutive = 0
        self._started_at = None
        self._best_step = None
        self._without_progress = 0
        self._recovery_bar = None

    def changed_for_restart(self, died_at_step: int) -> None:
        """The restart just decided changes a knob (or the checkpoint) because the run died at
        `died_at_step`: from now on a crash is progress only if the run got past the highest
        step it died at since it last made progress (a bar that never falls)."""
        bar = self._recovery_bar
        self._recovery_bar = died_at_step if bar is None else max(bar, died_at_step)

    def decide(
        self,
        *,
        retryable: bool,
        category: str,
        checkpoint_step: int | None,
        reached_step: int | None = None,
    ) -> Decision:
        """Restart (after `delay`) or give up on the crash that just happened.

        `checkpoint_step` is the newest valid checkpoint the restart would resume from;
        `reached_step` the highest step the crashed run reported (None: none), which decides
        progress after a restart that changed something (`changed_for_restart`).
        """
        now = self._clock()
        if not retryable:
            return _give_up(f"non-retryable crash ({category})")
        # A restart exactly `window` seconds ago still counts: the limit holds for every
        # closed interval of that length.
        while self._restarts and now - self._restarts[0] > self._window:
            self._restarts.popleft()
        if len(self._restarts) >= self._max_restarts:
            if self._max_restarts == 0:
                return _give_up("restarts are disabled (max_restarts = 0)")
            return _give_up(f"{_count(len(self._restarts), 'restart')} within {self._window:g} s")
        # Progress is measured against the best step ever resumed from, not the last one, so
        # a newest checkpoint that keeps being found corrupt (20, 10, 20, 10...) is no progress.
        # The first run's own start step is unknown; taking it as "from scratch" can only
        # grant one restart too many, never give up too early. A run that crashes before its
        # first checkpoint every time (None after None) is making no progress.
        progressed = checkpoint_step is not None and (
            self._best_step is None or checkpoint_step > self._best_step
        )
        bar = self._recovery_bar
        if bar is not None and reached_step is not None:
            # A trainer that reports no step (log liveness) is judged by its checkpoints.
            progressed = reached_step > bar
        without_progress = 0 if progressed else self._without_progress + 1
        if without_progress > self._max_without_progress:
            n = _count(self._without_progress, "restart")
            if bar is not None:
                return _give_up(
                    f"restarts make no progress: {n} in a row with a recovery change did not get "
                    f"the run past step {bar}, where it died"
                )
            stuck = (
                "still no checkpoint"
                if self._best_step is None
                else f"checkpoint step stuck at {self._best_step}"
            )
            return _give_up(f"restarts make no progress: {stuck} for {n}")

        uptime = None if self._started_at is None else now - self._started_at
        self._consecutive = (
            1 if uptime is not None and uptime >= self._reset_after else (self._consecutive + 1)
        )
        self._restarts.append(now)
        self._without_progress = without_progress
        if progressed:
            self._recovery_bar = None  # got past it: judged by checkpoints again
        if progressed and checkpoint_step is not None:
            self._best_step = max(checkpoint_step, self._best_step or checkpoint_step)
        # Uptime is measured from the next started(); a restart that never got up (spawn
        # failed) must not borrow the previous run's healthy hours.
        self._started_at = None
        # The first crash after a healthy spell (or the first of a run) restarts at once: an
        # isolated crash after hours of training waits for nothing. From the second crash in a
        # row the backoff starts at backoff_base and doubles.
        doublings = min(self._consecutive - 2, _MAX_DOUBLINGS)
        delay = (
            0.0
            if self._consecutive <= 1
            else min(self._backoff_base * 2.0**doublings, self._backoff_max)
        )
        return Decision(
            "restart",
            delay,
            f"{category} crash: restart {len(self._restarts)} of {self._max_restarts} "
            f"within {self._window:g} s, after {delay:g} s",
        )


def _give_up(reason: str) -> Decision:
    return Decision("give_up", 0.0, reason)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"
