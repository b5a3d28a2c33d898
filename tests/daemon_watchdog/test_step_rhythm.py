"""The learned hang threshold (#20): pure, with the times given."""

from __future__ import annotations

import pytest

from daemon_watchdog.step_rhythm import MULTIPLE, WARMUP, StepRhythm
from trainguard.watchdog_status import HangThreshold, WatchdogStatus


def _steps(rhythm: StepRhythm, phase: str, every: float, count: int, start: float = 0.0) -> float:
    """`count` marks in `phase`, `every` seconds apart from `start`; returns the last time."""
    at = start
    for _ in range(count):
        rhythm.observe(phase, at)
        at += every
    return at - every


def test_the_configured_timeout_holds_until_the_phase_has_warmed_up() -> None:
    rhythm = StepRhythm()
    _steps(rhythm, "train", 0.5, WARMUP)  # WARMUP marks: WARMUP - 1 silences
    found = rhythm.threshold("train", floor=1, ceiling=600)
    assert (found.seconds, found.learned) == (600, False)
    assert found.why == f"configured (learning: {WARMUP - 1} of {WARMUP})"
    rhythm.observe("train", WARMUP * 0.5)
    found = rhythm.threshold("train", floor=1, ceiling=600)
    assert (found.seconds, found.learned) == (MULTIPLE * 0.5, True)


@pytest.mark.parametrize(
    ("every", "floor", "ceiling", "expected", "bound"),
    [
        (0.5, 1, 600, 2.5, ""),
        (0.5, 30, 600, 30, ", raised to the floor"),  # the contract's default floor
        (200, 1, 600, 600, ", capped at the ceiling"),
        (0.5, 30, 10, 10, ", capped at the ceiling"),  # floor over ceiling: the ceiling wins
    ],
)
def test_the_threshold_is_a_multiple_of_the_longest_silence_within_floor_and_ceiling(
    every: float, floor: float, ceiling: float, expected: float, bound: str
) -> None:
    rhythm = StepRhythm()
    _steps(rhythm, "train", every, WARMUP + 1)
    found = rhythm.threshold("train", floor=floor, ceiling=ceiling)
    assert found.seconds == expected
    assert found.why == f"learned: {MULTIPLE:g} x {every:.3g} s{bound}"


def test_one_long_silence_is_remembered_not_smoothed_away() -> None:
    """A checkpoint save inside the phase, once: forgetting it would kill the next save."""
    rhythm = StepRhythm()
    at = _steps(rhythm, "train", 0.1, 10)
    at = _steps(rhythm, "train", 0.1, 50, start=at + 20)  # a 20 s save, then 49 fast steps
    assert rhythm.threshold("train", floor=1, ceiling=600).seconds == MULTIPLE * 20


def test_a_silence_belongs_to_the_phase_it_was_spent_in() -> None:
    rhythm = StepRhythm()
    at = _steps(rhythm, "train", 0.5, WARMUP + 1)
    for _ in range(WARMUP):  # each evaluation: 60 s in eval, then training goes on
        rhythm.observe("eval", at + 0.5)
        rhythm.observe("train", at + 60.5)
        at += 60.5
    assert rhythm.threshold("eval", floor=1, ceiling=3600).seconds == MULTIPLE * 60
    assert rhythm.threshold("train", floor=1, ceiling=600).seconds == MULTIPLE * 0.5
    assert rhythm.longest() == {"eval": 60.0, "train": 0.5}


def test_a_restart_warms_up_again_and_keeps_what_was_learned() -> None:
    rhythm = StepRhythm()
    _steps(rhythm, "train", 2.0, WARMUP + 1)
    rhythm.started()
    # the time from the start to the first mark is startup_grace's, not a silence of the phase
    rhythm.observe("train", 1000.0)
    assert rhythm.threshold("train", floor=1, ceiling=600).learned is False
    _steps(rhythm, "train", 0.5, WARMUP, start=1000.5)
    found = rhythm.threshold("train", floor=1, ceiling=600)
    assert (found.seconds, found.learned) == (MULTIPLE * 2.0, True)  # the longest, from before


def test_what_the_state_file_keeps_comes_back_and_bad_entries_are_dropped() -> None:
    rhythm = StepRhythm()
    _steps(rhythm, "train", 1.5, WARMUP + 1)
    status = WatchdogStatus(
        "RUNNING",
        step_rhythm=rhythm.longest(),
        hang_threshold=HangThreshold("train", 7.5, True, "learned: 5 x 1.5 s"),
    )
    again = WatchdogStatus.from_json(status.to_json())
    assert again is not None
    assert again.step_rhythm == {"train": 1.5}
    assert again.hang_threshold == status.hang_threshold
    restored = StepRhythm.from_json(again.step_rhythm)
    assert restored.longest() == {"train": 1.5}
    odd = {"train": "fast", "eval": -1, "save": True, "idle": float("nan"), "ok": 3}
    assert StepRhythm.from_json(odd).longest() == {"ok": 3.0}
    assert StepRhythm.from_json(["train"]).longest() == {}


def test_a_silence_killed_as_a_hang_is_learned_so_it_is_not_killed_twice() -> None:
    """A long healthy silence (an epoch boundary under `train`) killed once on a learned
    threshold raises the next threshold: it is not killed again after every restart."""
    rhythm = StepRhythm()
    _steps(rhythm, "train", 1.0, WARMUP + 1)
    assert rhythm.threshold("train", floor=30, ceiling=600).seconds == 30
    rhythm.hung("train", 31.0)
    rhythm.started()
    _steps(rhythm, "train", 1.0, WARMUP + 1, start=100)
    assert rhythm.threshold("train", floor=30, ceiling=600).seconds == MULTIPLE * 31.0


def test_absurd_numbers_in_the_state_file_are_dropped_not_raised() -> None:
    huge = 10**400
    assert StepRhythm.from_json({"train": huge, "eval": 2}).longest() == {"eval": 2.0}
    data = {"state": "RUNNING", "step_rhythm": {"train": huge},
            "hang_threshold": {"phase": "train", "seconds": huge, "learned": True}}  # fmt: skip
    status = WatchdogStatus.from_json(data)
    assert status is not None
    assert status.step_rhythm == {} and status.hang_threshold is None
