"""The restart policy on a hand-driven clock: no processes, no sleeping."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon_watchdog.restart_policy import Decision, RestartPolicy


class FakeClock:
    """A monotonic clock the test moves by hand; the policy only ever reads it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make(clock: FakeClock, **overrides: Any) -> RestartPolicy:
    knobs: dict[str, Any] = {
        "max_restarts": 3,
        "window": 300.0,
        "backoff_base": 2.0,
        "backoff_max": 120.0,
        "reset_after": 600.0,
        "max_without_progress": 1000,
    }
    knobs.update(overrides)
    return RestartPolicy(**knobs, clock=clock)


def crash(
    policy: RestartPolicy,
    step: int | None = None,
    *,
    retryable: bool = True,
    reached: int | None = None,
    category: str = "cuda_oom",
) -> Decision:
    return policy.decide(
        retryable=retryable, category=category, checkpoint_step=step, reached_step=reached
    )


def crash_and_restart(policy: RestartPolicy, clock: FakeClock, step: int | None = None) -> Decision:
    decision = crash(policy, step)
    assert decision.action == "restart", decision.reason
    clock.advance(decision.delay)
    policy.started()
    return decision


STUCK_AT_20 = "restarts make no progress: checkpoint step stuck at 20 for 3 restarts"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


# -- rate limit --------------------------------------------------------------------------


def test_max_restarts_allows_exactly_that_many_and_the_next_crash_gives_up(
    clock: FakeClock,
) -> None:
    policy = make(clock)
    for _ in range(3):
        crash_and_restart(policy, clock)
        clock.advance(10)
    decision = crash(policy)
    assert decision == Decision("give_up", 0.0, "3 restarts within 300 s")
    assert len(policy.restart_times) == 3


def test_max_restarts_zero_never_restarts(clock: FakeClock) -> None:
    decision = crash(make(clock, max_restarts=0))
    assert decision.action == "give_up"
    assert decision.delay == 0
    assert "max_restarts = 0" in decision.reason


def test_restarts_age_out_of_the_window(clock: FakeClock) -> None:
    policy = make(clock, backoff_base=0)
    for _ in range(3):
        crash_and_restart(policy, clock)
    clock.advance(300)  # all three happened exactly `window` ago: they still count
    assert crash(policy).action == "give_up"
    clock.advance(0.001)
    assert not policy.restart_times
    assert crash(policy).action == "restart"
    assert policy.restart_times == (clock.now,)


def test_a_give_up_records_nothing(clock: FakeClock) -> None:
    policy = make(clock, max_restarts=1, backoff_base=0)
    crash_and_restart(policy, clock)
    assert crash(policy).action == "give_up"
    assert crash(policy).action == "give_up"
    assert policy.restart_times == (clock.now,)
    assert policy.consecutive == 1


# -- backoff -----------------------------------------------------------------------------


def test_the_first_crash_restarts_at_once_then_the_backoff_doubles_up_to_the_cap(
    clock: FakeClock,
) -> None:
    policy = make(clock, max_restarts=100, backoff_base=2, backoff_max=20)
    delays = [crash_and_restart(policy, clock).delay for _ in range(6)]
    assert delays == [0, 2, 4, 8, 16, 20]
    assert policy.consecutive == 6


def test_a_healthy_run_resets_the_backoff(clock: FakeClock) -> None:
    policy = make(clock, max_restarts=100, backoff_base=2, reset_after=600)
    assert [crash_and_restart(policy, clock).delay for _ in range(3)] == [0, 2, 4]
    clock.advance(599)  # not quite healthy long enough
    assert crash_and_restart(policy, clock).delay == 8
    clock.advance(600)
    decision = crash_and_restart(policy, clock)
    assert decision.delay == 0  # an isolated crash after a healthy spell: at once
    assert policy.consecutive == 1
    assert crash_and_restart(policy, clock).delay == 2


def test_uptime_counts_only_from_started_so_a_restart_that_never_came_up_keeps_backing_off(
    clock: FakeClock,
) -> None:
    policy = make(clock, max_restarts=100, reset_after=600)
    crash_and_restart(policy, clock)
    clock.advance(700)
    assert crash(policy).delay == 0  # ran 700 s: healthy
    clock.advance(700)  # the new daemon never called started()
    assert crash(policy).delay == 2


def test_backoff_base_zero_restarts_at_once(clock: FakeClock) -> None:
    policy = make(clock, max_restarts=100, backoff_base=0)
    assert {crash_and_restart(policy, clock).delay for _ in range(10)} == {0}


def test_a_very_long_crash_streak_stays_at_the_cap(clock: FakeClock) -> None:
    policy = make(clock, max_restarts=10_000, window=1, backoff_max=120)
    for step in range(2000):
        clock.advance(2)
        decision = crash(policy, step)
    assert decision.delay == 120


# -- non-retryable -----------------------------------------------------------------------


def test_a_non_retryable_crash_gives_up_at_once(clock: FakeClock) -> None:
    policy = make(clock)
    decision = policy.decide(retryable=False, category="import_error", checkpoint_step=20)
    assert decision == Decision("give_up", 0.0, "non-retryable crash (import_error)")
    assert policy.restart_times == ()


# -- progress ----------------------------------------------------------------------------


def test_restarts_from_the_same_checkpoint_give_up_after_max_without_progress(
    clock: FakeClock,
) -> None:
    policy = make(clock, max_restarts=100, max_without_progress=3)
    crash_and_restart(policy, clock, 20)  # scratch -> 20 is progress
    for _ in range(3):
        crash_and_restart(policy, clock, 20)
    decision = crash(policy, 20)
    assert decision.action == "give_up"
    assert decision.reason == STUCK_AT_20


def test_a_run_that_never_reaches_its_first_checkpoint_makes_no_progress(
    clock: FakeClock,
) -> None:
    policy = make(clock, max_restarts=100, max_without_progress=2)
    crash_and_restart(policy, clock, None)
    crash_and_restart(policy, clock, None)
    decision = crash(policy, None)
    assert decision.reason == "restarts make no progress: still no checkpoint for 2 restarts"


def test_an_advancing_checkpoint_keeps_restarting(clock: FakeClock) -> None:
    policy = make(clock, max_restarts=100, max_without_progress=1)
    for step in (None, 10, 20, 30, 40, 50, 60):
        crash_and_restart(policy, clock, step)
        clock.advance(1)


def test_progress_resets_the_no_progress_count(clock: FakeClock) -> None:
    policy = make(clock, max_restarts=100, max_without_progress=2)
    for step in (10, 10, 10, 20, 20, 20, 30):
        crash_and_restart(policy, clock, step)
    assert [crash(policy, 30).action for _ in range(3)] == ["restart", "restart", "give_up"]


def test_falling_back_to_an_older_checkpoint_is_no_progress(clock: FakeClock) -> None:
    # The newest checkpoint keeps being found corrupt: 20, 10, 20, 10... never gets past 20.
    policy = make(clock, max_restarts=100, max_without_progress=3)
    for step in (20, 10, 20, 10):
        crash_and_restart(policy, clock, step)
    decision = crash(policy, 20)
    assert decision.reason == STUCK_AT_20


def test_the_window_limit_is_reported_before_the_progress_limit(clock: FakeClock) -> None:
    policy = make(clock, max_restarts=1, max_without_progress=1)
    crash_and_restart(policy, clock, None)
    assert crash(policy, None).reason == "1 restart within 300 s"


# -- reset -------------------------------------------------------------------------------


def test_reset_forgets_the_history(clock: FakeClock) -> None:
    policy = make(clock, max_without_progress=2)
    for _ in range(3):
        crash_and_restart(policy, clock, 5)
    assert crash(policy, 5).action == "give_up"
    policy.reset()
    assert policy.restart_times == ()
    assert policy.consecutive == 0
    decision = crash(policy, 5)
    assert decision.action == "restart"
    assert decision.delay == 0


def test_a_restart_decision_says_why_and_when() -> None:
    policy = make(FakeClock())
    decision = crash(policy)
    assert decision.reason == "cuda_oom crash: restart 1 of 3 within 300 s, after 0 s"
    assert crash(policy).reason == "cuda_oom crash: restart 2 of 3 within 300 s, after 2 s"


@pytest.mark.parametrize(
    "bad",
    [
        {"max_restarts": -1},
        {"window": -1},
        {"backoff_base": -0.5},
        {"backoff_max": -1},
        {"reset_after": -1},
        {"max_without_progress": 0},
    ],
)
def test_nonsense_settings_are_refused(bad: dict[str, Any]) -> None:
    (name,) = bad
    with pytest.raises(ValueError, match=f"^{name}: must be >="):
        make(FakeClock(), **bad)


# -- property ----------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    max_restarts=st.integers(0, 5),
    window=st.floats(0, 500, allow_nan=False),
    gaps=st.lists(st.floats(0, 200, allow_nan=False), max_size=60),
    healthy_after=st.lists(st.booleans(), max_size=60),
)
def test_never_more_than_max_restarts_in_any_window(
    max_restarts: int, window: float, gaps: list[float], healthy_after: list[bool]
) -> None:
    clock = FakeClock()
    policy = make(clock, max_restarts=max_restarts, window=window, backoff_base=1.0)
    restarts: list[float] = []
    for i, gap in enumerate(gaps):
        clock.advance(gap)
        decision = crash(policy, step=i)  # steps advance: only the window limits
        if decision.action == "restart":
            restarts.append(clock.now)
            assert 0 <= decision.delay <= 120
            if i < len(healthy_after) and healthy_after[i]:
                policy.started()
        else:
            assert decision.delay == 0
    for j, last in enumerate(restarts):
        inside = [t for t in restarts[: j + 1] if last - t <= window]
        assert len(inside) <= max_restarts


def test_restarts_a_replaced_watchdog_made_still_count_within_the_window() -> None:
    clock = FakeClock()
    policy = make(clock)
    policy.remember([10.0, 250.0, 301.0, -5.0])  # 301 s ago is outside the window; -5 is bogus
    assert len(policy.restart_times) == 2
    assert crash(policy, 10).action == "restart"
    assert crash(policy, 20).action == "give_up"
    clock.advance(51)  # the restart 250 s ago leaves the window
    assert crash(policy, 30).action == "restart"


def test_retune_changes_the_limits_and_keeps_the_restarts_that_count() -> None:
    now = [0.0]
    policy = RestartPolicy(
        max_restarts=3, window=300, backoff_base=2, backoff_max=120, reset_after=600,
        max_without_progress=5, clock=lambda: now[0],
    )  # fmt: skip
    policy.started()
    assert policy.decide(retryable=True, category="unknown", checkpoint_step=None).delay == 0
    policy.retune(
        max_restarts=1, window=300, backoff_base=5, backoff_max=120, reset_after=600,
        max_without_progress=5,
    )  # fmt: skip
    now[0] = 1.0
    policy.started()
    decision = policy.decide(retryable=True, category="unknown", checkpoint_step=None)
    assert decision.action == "give_up"  # the restart before the reload still counts
    with pytest.raises(ValueError, match="max_restarts: must be >= 0"):
        policy.retune(
            max_restarts=-1, window=300, backoff_base=5, backoff_max=120, reset_after=600,
            max_without_progress=5,
        )  # fmt: skip


# -- a restart that changed something (recovery actions, #20) ----------------------------------


def test_after_a_change_only_getting_past_the_step_it_died_at_is_progress(
    clock: FakeClock,
) -> None:
    policy = make(clock, max_restarts=100, window=1.0, max_without_progress=2)
    assert crash(policy, 20).action == "restart"  # first crash: checkpoint 20 is progress
    policy.changed_for_restart(29)  # e.g. batch 64 -> 32: it died after step 29
    # The same checkpoint again, but the run got past step 29 this time: progress.
    for _ in range(5):
        clock.advance(2.0)
        decision = crash(policy, 20, reached=35)
        assert decision.action == "restart", decision.reason
        policy.changed_for_restart(35)
        clock.advance(2.0)
        decision = crash(policy, 20, reached=41)
        assert decision.action == "restart", decision.reason
        policy.changed_for_restart(29)


def test_after_a_change_dying_before_that_step_again_is_no_progress(clock: FakeClock) -> None:
    policy = make(clock, max_restarts=100, window=1.0, max_without_progress=2)
    assert crash(policy, 20).action == "restart"
    for _ in range(2):  # halved twice, and each run died before step 29 again
        policy.changed_for_restart(29)
        clock.advance(2.0)
        decision = crash(policy, 30, reached=29)
        assert decision.action == "restart", decision.reason
    policy.changed_for_restart(29)
    clock.advance(2.0)
    # A newer checkpoint (30) would be progress without the change; with it, it is not.
    decision = crash(policy, 30, reached=29)
    assert decision == Decision(
        "give_up",
        0.0,
        "restarts make no progress: 2 restarts in a row with a recovery change did not get the "
        "run past step 29, where it died",
    )


def test_a_restart_without_a_change_is_judged_by_checkpoints_again(clock: FakeClock) -> None:
    policy = make(clock, max_restarts=100, window=1.0, max_without_progress=1)
    assert crash(policy, 20).action == "restart"
    policy.changed_for_restart(29)
    clock.advance(2.0)
    assert (
        crash(policy, 20, reached=30).action == "restart"
    )  # past 29; and this restart changes nothing
    clock.advance(2.0)
    assert crash(policy, 20).action == "restart"  # stuck at 20: one allowed
    clock.advance(2.0)
    assert crash(policy, 20).action == "give_up"


def test_the_bar_never_falls_until_the_run_gets_past_it(clock: FakeClock) -> None:
    """A NaN that strikes anywhere between steps 950 and 1000 after each rewind to 900: dying
    at 980, then 970, then 995 is no progress, as none got past 980 and then 995 only by
    chance... the bar is the highest step died at, so only passing 995 would be."""
    policy = make(clock, max_restarts=100, window=1.0, max_without_progress=2)
    assert crash(policy, 900).action == "restart"
    policy.changed_for_restart(980)
    for died in (970, 975):
        clock.advance(2.0)
        decision = crash(policy, 900, reached=died, category="nan_loss")
        assert decision.action == "restart", decision.reason
        policy.changed_for_restart(died)  # lower than 980: the bar stays at 980
    clock.advance(2.0)
    decision = crash(policy, 900, reached=979, category="nan_loss")
    assert decision.action == "give_up" and "past step 980" in decision.reason


def test_a_trainer_that_reports_no_step_is_judged_by_its_checkpoints_after_a_change(
    clock: FakeClock,
) -> None:
    policy = make(clock, max_restarts=100, window=1.0, max_without_progress=1)
    assert crash(policy, 20).action == "restart"
    policy.changed_for_restart(20)  # no step known: the checkpoint's
    for step in (30, 40, 50):  # hours later, checkpoints far on: progress every time
        clock.advance(2.0)
        decision = crash(policy, step, reached=None)
        assert decision.action == "restart", decision.reason
        policy.changed_for_restart(step)
