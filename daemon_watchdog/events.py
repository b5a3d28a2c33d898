"""What the supervisor's one loop reacts to. Threads and signal handlers only post these; the
periodic work (checks, pruning) runs on the loop's own deadlines; the checkpoint work that
reads gigabytes runs on worker threads that post its result here."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from trainguard.checkpoints import CheckpointInfo


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


@dataclass(frozen=True)
class CheckpointChosen:
    """The checkpoint worker chose what to resume from (`checkpoint_jobs.choose`)."""

    seq: int  # which request this answers: a stale answer is dropped
    checkpoint: CheckpointInfo | None  # None: start from scratch
    error: str | None  # the checkpoints cannot be used: FATAL with this reason
    disk_low: str | None  # what pruning for room did, when the disk was low
    refused_stuck: bool = False  # the refused checkpoint could not be moved into quarantine/
    rewound: tuple[str, ...] = ()  # checkpoints moved aside for a nan_loss rewind
    pruned: int | None = None  # checkpoints pruned for a disk_full crash (None: not asked)


@dataclass(frozen=True)
class PruneDone:
    removed: tuple[Path, ...]
    error: str | None


Event = (
    SignalReceived | ChildExited | AdoptedExited | ProgressChanged | CheckpointChosen | PruneDone
)
