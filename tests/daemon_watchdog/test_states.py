"""The state table: every listed edge passes the guard, anything else raises."""

from __future__ import annotations

import json

import pytest

from daemon_watchdog.states import (
    ALLOWED,
    TERMINAL,
    InvalidTransition,
    State,
    check_transition,
    status_exit_code,
)

EDGES = [(old, new) for old, targets in ALLOWED.items() for new in sorted(targets)]


def test_states_are_the_contract_names_and_serialise_as_them() -> None:
    names = ["STARTING", "RUNNING", "BACKOFF", "HUNG", "STOPPING", "STOPPED", "FATAL"]
    assert [s.value for s in State] == names
    assert json.dumps({"state": State.HUNG}) == '{"state": "HUNG"}'
    assert State("FATAL") is State.FATAL
    assert str(State.RUNNING) == "RUNNING"
    assert f"{State.BACKOFF}" == "BACKOFF"


def test_every_state_has_a_row_and_no_self_loops() -> None:
    assert set(ALLOWED) == set(State)
    for old, targets in ALLOWED.items():
        assert old not in targets


@pytest.mark.parametrize(("old", "new"), EDGES, ids=[f"{o}->{n}" for o, n in EDGES])
def test_every_listed_edge_is_allowed(old: State, new: State) -> None:
    check_transition(old, new)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (State.RUNNING, State.RUNNING),
        (State.RUNNING, State.STARTING),  # a restart always goes through BACKOFF
        (State.HUNG, State.BACKOFF),  # the hung tree is killed before any restart
        (State.HUNG, State.RUNNING),
        (State.BACKOFF, State.RUNNING),
        (State.FATAL, State.RUNNING),
        (State.STOPPED, State.BACKOFF),
        (State.STOPPING, State.RUNNING),  # a new daemon always starts in STARTING
    ],
    ids=lambda s: str(s),
)
def test_unlisted_transitions_raise(old: State, new: State) -> None:
    with pytest.raises(InvalidTransition, match=f"from {old.value} to {new.value}"):
        check_transition(old, new)


def test_invalid_transition_is_a_value_error_naming_the_allowed_targets() -> None:
    with pytest.raises(ValueError, match=r"\(allowed: STARTING, STOPPED\)$"):
        check_transition(State.FATAL, State.RUNNING)


def test_terminal_states_only_leave_by_an_operator_restart_or_stop() -> None:
    assert frozenset({State.FATAL, State.STOPPED}) == TERMINAL
    assert ALLOWED[State.FATAL] == {State.STARTING, State.STOPPED}
    assert ALLOWED[State.STOPPED] == {State.STARTING, State.FATAL}


def test_every_state_is_reachable_from_starting_and_can_reach_a_terminal_state() -> None:
    def reachable(start: State) -> set[State]:
        seen, todo = {start}, [start]
        while todo:
            for nxt in ALLOWED[todo.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    assert reachable(State.STARTING) == set(State)
    for state in State:
        assert reachable(state) & TERMINAL


@pytest.mark.parametrize(
    ("state", "code"),
    [
        (State.RUNNING, 0),
        (State.STARTING, 1),
        (State.BACKOFF, 1),
        (State.HUNG, 1),
        (State.STOPPING, 1),
        (State.FATAL, 2),
        (State.STOPPED, 4),
        (None, 3),
    ],
)
def test_status_exit_code(state: State | None, code: int) -> None:
    assert status_exit_code(state) == code
