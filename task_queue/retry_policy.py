"""Where a task goes after an attempt: done, back to pending for another worker, or failed.

Pure, like the watchdog's RestartPolicy: attempt history in, a verdict out; it knows nothing of
processes, SQLite or Dask, so every rule is tested without running anything.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Literal, Protocol


class AttemptLike(Protocol):
    @property
    def worker(self) -> str: ...
    @property
    def outcome(self) -> str | None: ...
    @property
    def counted(self) -> bool: ...


@dataclass(frozen=True)
class Verdict:
    status: Literal["done", "pending", "failed"]
    reason: str


def failed_attempts(attempts: Iterable[AttemptLike]) -> list[AttemptLike]:
    """Those that count against `max_retries`: ended, not ok, not interrupted or lost with
    their runner (`counted` false), not from before an operator's `retry`."""
    return [a for a in attempts if a.outcome not in (None, "ok") and a.counted]


def judge(
    attempts: Iterable[AttemptLike],
    *,
    outcome: str,
    counted: bool,
    retryable: bool | None,
    category: str | None,
    max_retries: int,
) -> Verdict:
    """The verdict on a task whose attempt just ended with `outcome`; `attempts` are its
    earlier ones (closed)."""
    if outcome == "ok":
        return Verdict("done", "finished (exit 0)")
    if not counted:
        return Verdict("pending", f"{outcome}: not counted against its retries")
    if retryable is False:
        return Verdict("failed", f"non-retryable crash ({category}): failed at once")
    failures = len(failed_attempts(attempts)) + 1
    if failures >= max_retries:
        return Verdict(
            "failed",
            f"{failures} failed attempt{'s' * (failures != 1)} (max_retries {max_retries})",
        )
    return Verdict(
        "pending", f"attempt {failures} of {max_retries} failed: retried, elsewhere if it can be"
    )


def may_run(worker: str, failed_by: Collection[str], workers: Collection[str]) -> bool:
    """Whether `worker` may take a task the workers `failed_by` have failed: not again while a
    live worker (of `workers`) exists that has not failed it."""
    return worker not in failed_by or set(workers) <= set(failed_by)


def excluded_workers(failed_by: Collection[str], workers: Collection[str]) -> frozenset[str]:
    """Workers a retry must avoid: those that failed it, unless that is all of them."""
    return frozenset() if set(workers) <= set(failed_by) else frozenset(failed_by)
