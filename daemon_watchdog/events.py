"""What the supervisor's one loop reacts to. Threads and signal handlers only post these; the
periodic work (checks, pruning) runs on the loop's own deadlines."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SignalReceived:
    signum: int


@dataclass(frozen=True)
class ChildExited:
    """A child reaped by waitpid; `status` is the raw wait status."""

    pid: int
    status: int


@dataclass(frozen=True)
class AdoptedExited:
    """An adopted daemon (not our child) ended: its exit status is unknowable."""

    pid: int


@dataclass(frozen=True)
class ProgressChanged:
    pass


Event = SignalReceived | ChildExited | AdoptedExited | ProgressChanged
