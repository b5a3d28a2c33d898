"""What a check returns: a status, one line, details, numbers and an optional fix.

Checks compute these; `report` renders them (human table, JSON, Nagios, Prometheus).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import IntEnum


class Status(IntEnum):
    """Nagios plugin codes: the process exits with the worst one."""

    OK = 0
    WARNING = 1
    CRITICAL = 2
    UNKNOWN = 3


# A CRITICAL is certain and outranks a check that could not tell (UNKNOWN).
_SEVERITY = {Status.OK: 0, Status.WARNING: 1, Status.UNKNOWN: 2, Status.CRITICAL: 3}


def worst(statuses: Iterable[Status]) -> Status:
    return max(statuses, key=_SEVERITY.__getitem__, default=Status.OK)


@dataclass(frozen=True)
class Fix:
    """A repair a check proposes; applied only with --fix, and never with --dry-run.

    `apply` does it and returns what it did, in words; it raises OSError (or FixError) when
    it cannot. Every fix must be idempotent: applying it twice is the same as once. Fixes with
    the same `key` (two checks proposing one prune) are applied once.
    """

    action: str
    apply: Callable[[], str]
    key: str = ""
    # Set when the fix runs past its deadline: a fix that can take long (pruning) watches it
    # and stops cleanly at its next step, rather than going on in an abandoned thread.
    stop: threading.Event | None = None


class FixError(Exception):
    """A fix that refused to act (e.g. it could not prove a file or process disposable)."""


@dataclass(frozen=True)
class FixOutcome:
    action: str
    applied: bool
    message: str


@dataclass(frozen=True)
class Metric:
    """A number for Nagios perfdata and the Prometheus textfile (`label` names the thing)."""

    name: str
    value: float
    unit: str = ""
    warn: float | None = None
    crit: float | None = None
    label: str = ""


@dataclass
class CheckResult:
    name: str
    status: Status
    summary: str
    details: list[str] = field(default_factory=list)
    fix: Fix | None = None
    metrics: list[Metric] = field(default_factory=list)
    duration_s: float = 0.0
    fix_outcome: FixOutcome | None = None
