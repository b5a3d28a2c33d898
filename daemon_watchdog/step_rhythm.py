"""How long a silence means a hang, learned from the trainer's own rhythm (#20).

A fixed `progress_timeout` (600 s) wastes ten GPU-minutes on a trainer that steps every second,
and kills a slow evaluation that needs twenty. As NVIDIA's resiliency extension does, the
threshold of each phase becomes MULTIPLE times the longest silence seen in that phase (the
time from one progress mark to the next), once WARMUP silences of it were seen since the
daemon last started, within `[watchdog] progress_timeout_min` (the floor) and the phase's
configured timeout (the ceiling, which wins if the two cross).

The longest silence, not a recent one: a checkpoint save or an evaluation inside a phase is
rare, and forgetting it would bring the threshold down until the next one is killed. What is
learned outlives a restart (the state file keeps it); the first WARMUP silences after each
start (data loaders, compilation, cuDNN autotuning) are judged by the configured timeout and
count as usual. A silence is the phase's of the mark that began it: the time spent in `eval`
runs from the mark that entered `eval` to the next one. A silence killed as a hang on a learned
threshold counts as seen (`hung`): were it a long but healthy one (an epoch boundary, a save
in `train`), the next threshold is MULTIPLE times longer, so it is killed at most once, not
every time; a real hang that repeats is seen later each time, up to the ceiling.

Pure: times (monotonic seconds) are given by the caller; nothing here reads a clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from trainguard.watchdog_status import HangThreshold, seconds_by_name

MULTIPLE = 5.0  # the threshold is this many times the longest silence seen
WARMUP = 5  # silences of a phase after each start before its learned threshold applies


class StepRhythm:
    def __init__(
        self,
        *,
        multiple: float = MULTIPLE,
        warmup: int = WARMUP,
        longest: Mapping[str, float] | None = None,
    ) -> None:
        self.multiple = multiple
        self.warmup = warmup
        self._longest: dict[str, float] = dict(longest or {})
        self._seen: dict[str, int] = {}
        self._mark: tuple[str, float] | None = None  # phase and time of the last progress

    def started(self) -> None:
        """The daemon (re)started: warm-up again; what was learned stays."""
        self._seen.clear()
        self._mark = None

    def observe(self, phase: str, at: float) -> None:
        """A progress mark in `phase` at `at`: the silence since the previous one is learned."""
        if self._mark is not None:
            before, then = self._mark
            silence = max(0.0, at - then)
            self._seen[before] = self._seen.get(before, 0) + 1
            self._longest[before] = max(self._longest.get(before, 0.0), silence)
        self._mark = (phase, at)

    def hung(self, phase: str, silence: float) -> None:
        """A silence of `phase` was killed as a hang: it is learned as if it had ended."""
        self._longest[phase] = max(self._longest.get(phase, 0.0), silence)

    def threshold(self, phase: str, *, floor: float, ceiling: float) -> HangThreshold:
        """The hang threshold of `phase`: learned once warmed up, else `ceiling` (the
        configured timeout). The floor never lifts it above the ceiling."""
        seen, longest = self._seen.get(phase, 0), self._longest.get(phase)
        if longest is None or seen < self.warmup:
            why = f"configured (learning: {seen} of {self.warmup})"
            return HangThreshold(phase, ceiling, False, why)
        learned = self.multiple * longest
        seconds = min(ceiling, max(floor, learned))
        bound = ""
        if seconds == ceiling < max(floor, learned):
            bound = ", capped at the ceiling"
        elif seconds == floor > learned:
            bound = ", raised to the floor"
        why = f"learned: {self.multiple:g} x {longest:.3g} s{bound}"
        return HangThreshold(phase, seconds, True, why)

    def longest(self) -> dict[str, float]:
        """The longest silence seen in each phase, in seconds: what the state file keeps."""
        return {phase: round(seconds, 3) for phase, seconds in sorted(self._longest.items())}

    @classmethod
    def from_json(cls, data: object, **kwargs: Any) -> StepRhythm:
        """What a state file kept (`{phase: seconds}`); a malformed entry is dropped (its phase
        learns again)."""
        return cls(longest=seconds_by_name(data), **kwargs)
