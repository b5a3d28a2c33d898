"""What the manager asks of a backend: workers, starting an attempt, hearing how it ended."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from task_queue.ledger import Attempt, Task
from task_queue.preflight import Refusal


@dataclass
class Running:
    """An attempt under way on `worker`."""

    worker: str
    task: Task
    attempt: Attempt
    token: str  # the owner token its processes carry
    pid: int | None  # on the worker's machine; None until known
    log_file: Path
    log_offset: int  # where its own output begins in `log_file`
    deadline: float  # monotonic time its timeout ends
    stopping: str | None = None  # "timeout" | "cancelled" | "interrupted" once we stopped it
    # Findings on its GPUs when it started (preflight): what is new at its end appeared while
    # it ran.
    gpu_baseline: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Ended:
    """How an attempt's process ended: `code` as subprocess gives it (negative: a signal), or
    None with `lost` saying why when its worker died under it."""

    running: Running
    code: int | None
    tail: bytes | None = None  # the end of its output, when its log is on another machine
    lost: str | None = None
    gpu_state: Any = None  # read where it ran, when it failed there
    after: dict[str, Any] | None = None  # GPU cleanup and post_task, done where it ran
    refused: Refusal | None = None  # the worker's own preflight refused it: nothing ran


class Backend(Protocol):
    running: dict[int, Running]  # by attempt id
    # Whether the runner becomes a child subreaper: the local backend reaps what is re-parented
    # to it; under Dask the runner's children are the local cluster's nannies, whose exits
    # belong to them, so orphans there go to init as usual.
    subreaper: bool

    def workers(self) -> list[str]:
        """Names of the workers alive now."""
        ...

    def free(self) -> list[str]:
        """Workers that can take an attempt now (a name once per attempt it can take)."""
        ...

    def host_of(self, worker: str) -> str:
        """The machine `worker` runs on, for the ledger."""
        ...

    def log_file(self, task: Task) -> Path: ...

    def start(self, worker: str, task: Task, attempt: Attempt, token: str) -> Running:
        """Start the attempt (SpawnError when its program cannot be started at all)."""
        ...

    def ended(self) -> list[Ended]:
        """Attempts that ended since the last call; the backend calls its `wake` when any did."""
        ...

    def stop(self, running: Running, why: str) -> None:
        """Stop the attempt's processes; its end then comes through `ended`."""
        ...

    def gpu_state(self, ended: Ended) -> Any:
        """The state of the GPU the attempt ran on, after it failed (None: no GPU there)."""
        ...

    def gpus_of(self, worker: str) -> tuple[int, ...] | None:
        """The GPUs `worker` hands its attempts, where this machine can check them (None: on
        another machine, checked there)."""
        ...

    def retire(self, worker: str) -> None:
        """Take `worker` out of this run (its GPU failed): it gets no more attempts."""
        ...

    def after_attempt(self, running: Running) -> dict[str, Any]:
        """GPU cleanup and the post_task hook, after its end; what happened, for the ledger."""
        ...

    def sweep(self, running: Running) -> list[str]:
        """Kill what an ended attempt left behind, where that is cheap; returns what."""
        ...

    def sweep_escaped(self) -> list[str]:
        """The costly sweep (every process's environment), for all attempts ended since."""
        ...

    @property
    def unswept(self) -> bool: ...

    def close(self) -> None: ...


Wake = Callable[[], None]
