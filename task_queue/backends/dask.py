"""Many machines: Dask distributed carries each attempt to a named worker, one per GPU.

Dask is only the transport. Its own retries are off (`retries=0`, the scheduler's
allowed-failures 0): a worker that dies under a task fails that future at once (KilledWorker)
and the ledger decides where it runs again, by worker *name*, which a nanny's restart keeps.
The attempt's processes on the dead worker's machine are swept by their owner token from the
worker that comes back there (or any other on that machine).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import queue
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from task_queue.backends.base import Ended, Running, Wake
from task_queue.backends.local import attempt_header
from task_queue.ledger import Attempt, Task
from task_queue.preflight import Refusal
from task_queue.remote_attempt import WorkerChecks, kill_tokens, run_attempt
from trainguard.child_process import SpawnError

DEPTH = 2  # attempts handed to one worker at once: one running, one waiting its turn
WORKERS_FRESH = 1.0  # seconds the scheduler's list of workers is trusted
LOST_SWEEPS = 12  # sweeps (one every few seconds) for a dead worker's leftovers, on every worker


class DaskBackend:
    subreaper = False

    def __init__(
        self,
        client: Any,
        log_dir: Path,
        wake: Wake,
        *,
        gpu_of: Callable[[str], str | None] = lambda _name: None,
        checks: WorkerChecks | None = None,
    ) -> None:
        self.client = client
        self.checks = checks or WorkerChecks()
        self._retired: set[str] = set()  # workers whose GPU was taken out of this run
        self.log_dir = log_dir
        self.wake = wake
        self.gpu_of = gpu_of  # the GPU a worker of our own LocalCluster is pinned to
        self.running: dict[int, Running] = {}  # by attempt id
        self._futures: dict[int, Any] = {}  # by attempt id
        self._unswept: set[str] = set()  # tokens of ended attempts not yet swept for
        # (attempt, its result, or the error instead), as the client's loop fetched them
        self._done: queue.SimpleQueue[tuple[Running, Any, BaseException | None]] = (
            queue.SimpleQueue()
        )
        self._lost: dict[str, int] = {}  # token of an attempt whose worker died: sweeps left
        self._workers: dict[str, dict[str, Any]] | None = None
        self._workers_at = 0.0

    # --- workers ----------------------------------------------------------------------------

    def _by_name(self) -> dict[str, dict[str, Any]]:
        """Live workers by name. Asking the scheduler is a round trip: the answer is kept for
        WORKERS_FRESH seconds, or until a worker is found dead."""
        now = time.monotonic()
        if self._workers is None or now - self._workers_at > WORKERS_FRESH:
            workers = self.client.scheduler_info(n_workers=-1)["workers"]
            self._workers = {
                str(info["name"]): {"address": addr, **info} for addr, info in workers.items()
            }
            self._workers_at = now
        return self._workers

    def workers(self) -> list[str]:
        return sorted(name for name in self._by_name() if name not in self._retired)

    def free(self) -> list[str]:
        """Each worker up to DEPTH times: one attempt running, the next already there, so
        that a worker never waits for a round trip to the manager between two attempts."""
        load = Counter(r.worker for r in self.running.values())
        return [name for name in self.workers() for _ in range(max(0, DEPTH - load[name]))]

    def host_of(self, worker: str) -> str:
        info = self._by_name().get(worker)
        return str(info.get("host", "?")) if info else "?"

    def log_file(self, task: Task) -> Path:
        return Path(task.log_file) if task.log_file else self.log_dir / f"task-{task.id}.log"

    # --- attempts ---------------------------------------------------------------------------

    def start(self, worker: str, task: Task, attempt: Attempt, token: str) -> Running:
        info = self._by_name().get(worker)
        if info is None:
            raise SpawnError(f"worker {worker} is gone")
        env = {
            **task.env,
            "TRAINGUARD_TASK_ID": str(task.id),
            "TRAINGUARD_ATTEMPT": str(attempt.number),
        }
        gpu = self.gpu_of(worker)
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = env["HIP_VISIBLE_DEVICES"] = gpu
        log_file = self.log_file(task)
        # Queued behind another attempt on that worker: its timeout counts from when that one
        # ends (`ended` moves the deadline), not from now.
        waiting = any(r.worker == worker for r in self.running.values())
        deadline = math.inf if waiting else time.monotonic() + task.timeout
        running = Running(worker, task, attempt, token, None, log_file, 0, deadline)
        future = self.client.submit(
            run_attempt,
            list(task.argv),
            cwd=task.cwd,
            env=env,
            token=token,
            log_file=str(log_file),
            header=attempt_header(task, attempt, worker),
            checks=replace(self.checks, gpu=self.checks.gpu and task.gpus > 0),
            key=f"task-{task.id}-attempt-{attempt.number}-{token[:8]}",
            workers=[info["address"]],
            allow_other_workers=False,
            retries=0,
            pure=False,
        )
        self.running[attempt.id] = running
        self._futures[attempt.id] = future

        def done(finished: Any, running: Running = running) -> None:
            # On Dask's callback thread. Fetching the result is a round trip to the worker:
            # done on the client's event loop, where many fetches overlap, so that neither
            # this thread nor the manager's loop waits for each one in turn.
            async def fetch() -> None:
                try:
                    result = await self.client.gather(finished, asynchronous=True)
                except BaseException as exc:  # KilledWorker, CancelledError, a lost connection
                    self._done.put((running, None, exc))
                else:
                    self._done.put((running, result, None))
                self.wake()

            self.client.loop.add_callback(fetch)

        future.add_done_callback(done)
        return running

    def ended(self) -> list[Ended]:
        found: list[Ended] = []
        while True:
            try:
                running, result, error = self._done.get_nowait()
            except queue.Empty:
                return found
            self.running.pop(running.attempt.id, None)
            self._futures.pop(running.attempt.id, None)
            for queued in self.running.values():  # the next on that worker starts now
                if queued.worker == running.worker and queued.deadline == math.inf:
                    queued.deadline = time.monotonic() + queued.task.timeout
                    break
            found.append(self._outcome(running, result, error))

    def _outcome(self, running: Running, result: Any, error: BaseException | None) -> Ended:
        if error is None:
            if "spawn_error" in result:
                return Ended(running, 127, tail=str(result["spawn_error"]).encode())
            if "refused" in result:
                refusal = Refusal("gpu", str(result["refused"]), "gpu", tuple(result["gpus"]))
                return Ended(running, None, refused=refusal)
            running.pid = result["pid"]
            running.log_offset = result["log_offset"]
            return Ended(
                running,
                int(result["code"]),
                tail=result["tail"],
                gpu_state=result["gpu_state"],
                after=result.get("after"),
            )
        self._lost[running.token] = LOST_SWEEPS
        self._workers = None  # a worker may be gone: ask again
        if type(error).__name__ == "KilledWorker":
            return Ended(running, None, lost=f"worker {running.worker} died while it ran")
        if isinstance(error, asyncio.CancelledError) or type(error).__name__ == "CancelledError":
            return Ended(running, None, lost=f"its Dask task was cancelled on {running.worker}")
        return Ended(running, None, lost=f"{type(error).__name__}: {error}")

    def stop(self, running: Running, why: str) -> None:
        running.stopping = why
        info = self._by_name().get(running.worker)
        if info is None:
            return  # the worker is gone: its death ends the future
        # A worker dying meanwhile raises here; its future then ends all the same.
        with contextlib.suppress(Exception):
            self.client.run(kill_tokens, [running.token], workers=[info["address"]])

    def gpu_state(self, ended: Ended) -> Any:
        return ended.gpu_state  # read on the worker's machine by `run_attempt`

    def gpus_of(self, worker: str) -> tuple[int, ...] | None:
        return None  # checked on the worker's machine, by `run_attempt`

    def retire(self, worker: str) -> None:
        self._retired.add(worker)

    def after_attempt(self, running: Running) -> dict[str, Any]:
        return {}  # done on the worker's machine, by `run_attempt` (`Ended.after`)

    def sweep(self, running: Running) -> list[str]:
        """Its process group was killed on the worker (`run_attempt`); what left the group is
        looked for by token in the next `sweep_escaped`."""
        self._unswept.add(running.token)
        return []

    def sweep_escaped(self) -> list[str]:
        """Processes carrying the token of an ended attempt, on every worker: one scan per
        worker for all of them. Those of attempts whose worker died are looked for over several
        sweeps, so that the worker restarted on that machine finds them."""
        tokens = set(self._unswept) | set(self._lost)
        if not tokens:
            return []
        self._unswept = set()
        self._lost = {t: n - 1 for t, n in self._lost.items() if n > 1}
        # This machine first (a local cluster's workers, or a worker beside the runner): no
        # round trip, and it reaches a dead worker's orphans before its nanny restarts it.
        here = [f"here: {pid}" for pid in kill_tokens(sorted(tokens), polite=False)]
        try:
            killed = self.client.run(kill_tokens, sorted(tokens), polite=False)
        except Exception:  # no worker reachable now: the next sweep tries again
            return here
        return here + [f"{worker}: {pid}" for worker, pids in killed.items() for pid in pids]

    @property
    def unswept(self) -> bool:
        return bool(self._lost or self._unswept)

    def close(self) -> None:
        self.client.close()
