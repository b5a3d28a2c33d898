"""The embedded backend: one worker per GPU slot of this machine, each attempt a child process.

Each attempt runs in its own session (a broken CUDA context dies with it) with the slot's GPU
pinned in `CUDA_VISIBLE_DEVICES` / `HIP_VISIBLE_DEVICES` and an owner token every descendant
inherits; its exit is seen at once (SIGCHLD wakes the manager), never polled.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from task_queue.backends.base import Ended, Running
from task_queue.gpu_cleanup import clean_after_attempt
from task_queue.gpu_state import read_gpu_state
from task_queue.ledger import Attempt, Task
from trainguard.child_process import Child, reap_children, spawn_child
from trainguard.config import HealthSection
from trainguard.host import this_host
from trainguard.orphan_sweep import kill_orphans, reparented
from trainguard.process_tree import stop_process_tree
from trainguard.procs import find_any_marked, identify
from trainguard.timestamps import utc_now_iso

STOP_GRACE = 5.0  # seconds between SIGTERM and SIGKILL when an attempt is stopped


@dataclass(frozen=True)
class Slot:
    """A worker of the local backend: `<host>/slot<N>`, with the GPUs it may use (none: no GPU
    on this machine, and the attempt sees none)."""

    name: str
    gpus: tuple[int, ...]

    @property
    def visible(self) -> str:
        """Its GPUs as `CUDA_VISIBLE_DEVICES` lists them."""
        return ",".join(str(gpu) for gpu in self.gpus)


def plan_slots(
    slots: str | int, *, host: str, visible: Sequence[int], excluded: Sequence[int]
) -> list[Slot]:
    """The workers of this machine: "auto" gives one per visible GPU not in `excluded` (one
    without a GPU when there is none); a number N gives N, sharing those GPUs in turn."""
    gpus = [g for g in visible if g not in set(excluded)]
    count = max(1, len(gpus)) if slots == "auto" else int(slots)
    return [
        Slot(f"{host}/slot{index}", (gpus[index % len(gpus)],) if gpus else ())
        for index in range(count)
    ]


def whole_machine(*, host: str, visible: Sequence[int], excluded: Sequence[int]) -> Slot:
    """One worker that sees every visible GPU not in `excluded` (a pipeline's phases run one at
    a time, and a training phase may use them all)."""
    return Slot(f"{host}/all", tuple(g for g in visible if g not in set(excluded)))


def visible_gpus(env: Mapping[str, str], nvml_count: int | None) -> list[int]:
    """GPU indexes this machine offers: `CUDA_VISIBLE_DEVICES` when set (integers only),
    else every device NVML counts, else none."""
    listed = env.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [int(part) for part in listed.split(",") if part.strip().isdigit()]
    return list(range(nvml_count or 0))


@dataclass(frozen=True)
class AfterAttempt:
    """What runs after each attempt on a slot: GPU cleanup (always, on a GPU slot) and the
    `[queue] post_task` hook."""

    post_task: tuple[str, ...] = ()
    post_task_timeout: float = 60.0
    nvml: Any | None = None  # a pynvml-like module; None: import pynvml
    health: HealthSection | None = None  # grades the GPU state of a failed attempt


class LocalBackend:
    subreaper = True

    def __init__(
        self, slots: Sequence[Slot], log_dir: Path, after: AfterAttempt | None = None
    ) -> None:
        self.slots = {slot.name: slot for slot in slots}
        self.log_dir = log_dir
        self.after = after or AfterAttempt()
        self.running: dict[int, Running] = {}  # by attempt id
        self._children: dict[int, tuple[Running, Child]] = {}  # by pid
        self._unswept: set[str] = set()  # tokens of ended attempts not yet swept for
        self._base_env = dict(os.environ)  # copied once: thousands of spawns share it
        self._retired: set[str] = set()  # workers whose GPU was taken out of this run

    def workers(self) -> list[str]:
        return [name for name in self.slots if name not in self._retired]

    def free(self) -> list[str]:
        busy = {r.worker for r in self.running.values()}
        return [name for name in self.workers() if name not in busy]

    def host_of(self, worker: str) -> str:
        return this_host()

    def log_file(self, task: Task) -> Path:
        return Path(task.log_file) if task.log_file else self.log_dir / f"task-{task.id}.log"

    def start(self, worker: str, task: Task, attempt: Attempt, token: str) -> Running:
        slot = self.slots[worker]
        gpu = slot.visible if task.gpus else ""
        env = {
            **task.env,
            "CUDA_VISIBLE_DEVICES": gpu,
            "HIP_VISIBLE_DEVICES": gpu,
            "TRAINGUARD_TASK_ID": str(task.id),
            "TRAINGUARD_ATTEMPT": str(attempt.number),
            "TRAINGUARD_WORKER": slot.name,
        }
        log_file = self.log_file(task)
        child = spawn_child(
            task.argv,
            cwd=Path(task.cwd),
            log_file=log_file,
            token=token,
            started_at=utc_now_iso(),
            env=env,
            what=f"task {task.id}",
            header=attempt_header(task, attempt, slot.name),
            wait_for_exec=False,  # stopped only while unreaped: see `stop`
            base_env=self._base_env,
        )
        running = Running(
            slot.name, task, attempt, token, child.pid, log_file, child.log_offset,
            time.monotonic() + task.timeout,
        )  # fmt: skip
        self.running[attempt.id] = running
        self._children[child.pid] = (running, child)
        return running

    def ended(self) -> list[Ended]:
        found = []
        for pid, code in reap_children():
            known = self._children.pop(pid, None)
            if known is not None:
                del self.running[known[0].attempt.id]
                found.append(Ended(known[0], code))
        return found

    def stop(self, running: Running, why: str) -> None:
        """SIGTERM the attempt's tree, SIGKILL what is left after STOP_GRACE; its exit then
        comes through `ended` like any other. One that has already exited is left as it is
        (not marked stopped): its own exit status says how it ended."""
        assert running.pid is not None
        if _exited(running.pid):
            return
        running.stopping = why
        child = self._children[running.pid][1]
        # Not reaped yet (only `ended` waits for it), so its pid is still its own: the identity
        # read now is its identity, whatever it has exec'd since the spawn.
        identity = identify(running.pid) or child.identity
        stop_process_tree(identity, sig=signal.SIGTERM, timeout=STOP_GRACE, token=running.token)

    def gpu_state(self, ended: Ended) -> Any:
        gpus = self.slots[ended.running.worker].gpus
        if not gpus:
            return None
        return read_gpu_state(
            list(gpus),
            nvml=self.after.nvml,
            before=ended.running.gpu_baseline,
            health=self.after.health,
        )

    def gpus_of(self, worker: str) -> tuple[int, ...] | None:
        return self.slots[worker].gpus

    def retire(self, worker: str) -> None:
        self._retired.add(worker)

    def after_attempt(self, running: Running) -> dict[str, Any]:
        return clean_after_attempt(
            self.slots[running.worker].gpus,
            running.token,
            post_task=self.after.post_task,
            post_task_timeout=self.after.post_task_timeout,
            log_file=running.log_file,
            nvml=self.after.nvml,
        )

    def sweep(self, running: Running) -> list[str]:
        """Kill what an ended attempt left in our process tree: orphans re-parented to us (a
        child subreaper) outside the live attempts' trees. Its token joins those the next
        `sweep_escaped` looks for."""
        self._unswept.add(running.token)
        live = {r.pid for r in self.running.values() if r.pid is not None}
        return _kill(reparented(live))

    def sweep_escaped(self) -> list[str]:
        """Kill processes that left our tree (systemd-run, ssh localhost) still carrying the
        token of an ended attempt: one scan of every process's environment for all of them,
        so it runs when the queue is idle or every few seconds, not after each attempt."""
        tokens, self._unswept = self._unswept, set()
        live = {r.token for r in self.running.values()}
        return _kill(find_any_marked(tokens - live))

    @property
    def unswept(self) -> bool:
        return bool(self._unswept)

    def close(self) -> None:
        pass


def _exited(pid: int) -> bool:
    """Whether our child `pid` has ended (a zombie not yet reaped): WNOWAIT leaves its status
    for `ended` to collect."""
    try:
        found = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True
    return found is not None


def attempt_header(task: Task, attempt: Attempt, worker: str) -> bytes:
    """The line above an attempt's output in its task's log."""
    return (
        f"=== attempt {attempt.number} of task {task.id} ({task.name}) on {worker} "
        f"at {utc_now_iso()}\n"
    ).encode()


def _kill(procs: Sequence[psutil.Process]) -> list[str]:
    if not procs:
        return []
    # Those re-parented to us are reaped by the manager's next `ended` (their SIGCHLD).
    return list(kill_orphans(procs, timeout=STOP_GRACE).names)


def kill_left_by_dead_runner(tokens: Sequence[str]) -> list[str]:
    """Processes of attempts whose runner died (still carrying their tokens): SIGKILLed before
    their tasks run again, so that no task ever runs twice at once."""
    return _kill(find_any_marked(tokens))
