"""The watchdog's states and the only transitions between them.

Dependency-free so that the supervisor, the status command and the tests share one table
(Supervisor's `states.py`). A transition not listed here is a bug in the caller, and
`check_transition` says so loudly instead of writing a state file nobody can explain.
A watchdog's first state (STARTING, also for an adopted daemon) is not a transition: a state
left in `status/watchdog.json` by an earlier watchdog is history, not a start point.
"""

from __future__ import annotations

from enum import Enum


class State(str, Enum):
    """Values are the upper-case names because they are what `status/watchdog.json` holds."""

    STARTING = "STARTING"  # daemon spawned, no progress seen yet (startup_grace applies)
    RUNNING = "RUNNING"  # progress seen; progress_timeout applies
    BACKOFF = "BACKOFF"  # daemon gone, waiting out the backoff delay before a restart
    HUNG = "HUNG"  # alive but no progress in time; stacks are being dumped
    STOPPING = "STOPPING"  # the daemon's process tree is being signalled and reaped
    STOPPED = "STOPPED"  # finished (exit 0) or stopped by the operator; no restart
    FATAL = "FATAL"  # gave up restarting; only an operator clears it

    def __str__(self) -> str:
        # Plain "RUNNING" in human text on every Python version, not "State.RUNNING".
        return self.value


ALLOWED: dict[State, frozenset[State]] = {
    State.STARTING: frozenset(
        {
            State.RUNNING,  # first progress seen
            State.HUNG,  # no first progress within startup_grace
            State.BACKOFF,  # daemon crashed while starting; the policy allows a restart
            State.FATAL,  # non-retryable crash, the policy gave up, or the command cannot spawn
            State.STOPPED,  # exit 0 right away: resumed from the final checkpoint, nothing to do
            State.STOPPING,  # operator stop while the daemon starts
        }
    ),
    State.RUNNING: frozenset(
        {
            State.HUNG,  # no progress within progress_timeout (or the phase's own timeout)
            State.BACKOFF,  # crash; the policy allows a restart
            State.FATAL,  # crash that is non-retryable or one too many: no restart at all
            State.STOPPING,  # operator stop
            State.STOPPED,  # daemon exit 0: training finished
        }
    ),
    State.HUNG: frozenset(
        {
            # Killing the hung tree, whoever asked; an exit seen meanwhile is handled there.
            State.STOPPING,
        }
    ),
    State.STOPPING: frozenset(
        {
            State.BACKOFF,  # the hung tree is gone; the policy allows a restart
            State.FATAL,  # after a hang the policy gave up, or the tree could not be killed
            State.STOPPED,  # operator stop done (or the daemon finished with exit 0 meanwhile)
            State.STARTING,  # operator restart: the old tree is gone, the new daemon starts
        }
    ),
    State.BACKOFF: frozenset(
        {
            State.STARTING,  # the delay is over: spawn again
            State.FATAL,  # the restart cannot be attempted (spawn fails, pre-start check fails)
            State.STOPPED,  # operator stop: nothing is running, so the stop is immediate
            State.STOPPING,  # operator stop while leftover workers of the crash are swept
        }
    ),
    # Terminal: the watchdog stays up and keeps reporting; only an operator leaves these, with
    # `restart` (which also resets the restart policy) or, from FATAL, `stop` (nothing runs).
    State.FATAL: frozenset({State.STARTING, State.STOPPED}),
    # From STOPPED too, an operator's restart that cannot start the daemon is FATAL.
    State.STOPPED: frozenset({State.STARTING, State.FATAL}),
}

TERMINAL: frozenset[State] = frozenset({State.FATAL, State.STOPPED})


class InvalidTransition(ValueError):
    """A transition the table does not allow: a supervisor bug, never an operator error."""


def check_transition(old: State, new: State) -> None:
    """Raise InvalidTransition unless `old -> new` is an edge of ALLOWED (self-loops are not)."""
    if new not in ALLOWED[old]:
        allowed = ", ".join(sorted(s.value for s in ALLOWED[old]))
        raise InvalidTransition(
            f"watchdog state cannot go from {old.value} to {new.value} (allowed: {allowed})"
        )


def status_exit_code(state: State | None) -> int:
    """Exit code of `daemon-watchdog status`: 0 healthy, 1 in flux, 2 FATAL, 3 unknown,
    4 STOPPED (finished, or stopped by the operator): a script tells a finished run from a
    failed one."""
    if state is None:
        return 3
    if state is State.RUNNING:
        return 0
    if state is State.FATAL:
        return 2
    if state is State.STOPPED:
        return 4
    # STARTING, BACKOFF, HUNG and STOPPING. The contract's table omits STOPPING; it is
    # transient like the others (the daemon is on its way to BACKOFF or STOPPED), so it is 1.
    return 1
