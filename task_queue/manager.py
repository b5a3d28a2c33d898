"""`task-queue run`: the one loop that hands tasks to workers and records how each attempt ended.

The house shape of the watchdog: signal handlers only enqueue; one loop owns all state and
waits on its queue, woken by a child's exit (SIGCHLD), a signal, or the nearest deadline (a
task's timeout, the next look at the ledger for new, cancelled or retried tasks).
"""

from __future__ import annotations

import logging
import queue
import signal
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import FrameType
from typing import Any

import psutil

from crash_detector.scanner import Scanner
from task_queue.attempt_diagnosis import diagnose_attempt
from task_queue.backends.base import Backend, Ended, Running
from task_queue.backends.local import kill_left_by_dead_runner
from task_queue.gpu_state import hardware_errors
from task_queue.ledger import Attempt, AttemptEnd, Ledger, LedgerError, Task, TaskStatus
from task_queue.preflight import Preflight, Refusal, StepFiles, Verdict
from task_queue.retry_policy import judge
from trainguard import exitcodes
from trainguard.child_process import SpawnError, become_subreaper, new_token
from trainguard.procs import decode_wait_status, has_owner_mark

log = logging.getLogger("task_queue")

NO_WORKER = 69  # EX_UNAVAILABLE: no worker can take the tasks left
LEDGER_LOOK_INTERVAL = 1.0  # seconds between looks at the ledger for new or cancelled tasks
ESCAPED_SWEEP_INTERVAL = 5.0  # at most this long between token sweeps while attempts run
RUNNER_DIED = "its runner died while it ran (task-queue run was killed); not counted"


@dataclass(frozen=True)
class _Signal:
    signum: int


@dataclass(frozen=True)
class _Wake:
    """A child exited (SIGCHLD), or a remote attempt ended: ask the backend what ended."""


def recover_left(ledger: Ledger, say: Callable[[str], None]) -> list[int]:
    """Attempts a dead runner left open: their processes stopped, then closed as worker_lost
    (not counted) and their tasks back to pending; returns those tasks."""
    left = ledger.open_attempts()
    if not left:
        return []
    killed = kill_left_by_dead_runner([a.token or "" for a in left])
    if killed:
        say(f"stopped {len(killed)} processes left by a dead runner: {killed}")
    tasks = ledger.close_running(AttemptEnd("worker_lost", error=RUNNER_DIED, counted=False))
    closed = ", ".join(str(a.task_id) for a in left)
    again = f"; back to pending: {tasks}" if tasks else ""
    say(f"attempts of tasks {closed} were left by a dead runner: worker_lost{again}")
    return tasks


class Manager:
    def __init__(
        self,
        ledger: Ledger,
        backend: Backend,
        *,
        host: str,
        scanner: Callable[[], Scanner],
        until_done: bool,
        say: Callable[[str], None] = print,
        on_change: Callable[[int], None] | None = None,
        preflight: Preflight | None = None,
        step_files: Callable[[Task], StepFiles | None] | None = None,
        exclude_gpu_on: Collection[str] = (),
    ) -> None:
        self.ledger = ledger
        self.backend = backend
        self.host = host
        self._load_scanner = scanner
        self._scanner: Scanner | None = None
        self.until_done = until_done
        self.say = say
        # Told the task's id after each of its attempts starts or ends (the study runner writes
        # its experiment's state.json then).
        self.on_change = on_change or (lambda _task_id: None)
        self.events: queue.SimpleQueue[_Signal | _Wake] = queue.SimpleQueue()
        self.next_look = 0.0
        self.stopping: int | None = None  # the signal that ends the run
        self.next_escaped_sweep = 0.0
        self.preflight = preflight
        self.step_files = step_files or (lambda _task: None)
        self.exclude_gpu_on = frozenset(exclude_gpu_on)
        # Why the run cannot go on (a node unreachable, the disk full, no GPU left): nothing
        # more starts, and the run ends with 69 once what runs has ended.
        self.refused: str | None = None

    @property
    def scanner(self) -> Scanner:
        if self._scanner is None:
            self._scanner = self._load_scanner()
        return self._scanner

    # --- the loop -------------------------------------------------------------------------

    def run(self) -> int:
        previous = self._install_signal_handlers()
        try:
            if self.backend.subreaper:
                become_subreaper()
            self._recover()
            while True:
                self._dispatch()
                if not self.backend.running and self.backend.unswept:
                    self._sweep_escaped()  # idle: the scan delays no attempt now
                if self.refused is not None and not self.backend.running:
                    self.say(f"preflight refused the run: {self.refused}")
                    return NO_WORKER
                if self.until_done and self._all_settled():
                    return self._final_code()
                if self.until_done and not self.backend.running:
                    return self._stuck()
                try:
                    event = self.events.get(timeout=self._wait_timeout())
                except queue.Empty:
                    event = None
                self._handle(event)
                if self.stopping is not None:
                    return self._interrupt()
        except LedgerError:
            # The ledger cannot record what happens (a full disk, a damaged file): nothing may
            # run unrecorded. Their attempts stay open in the ledger; the next runner closes
            # them as worker_lost and runs their tasks again.
            self._stop_all("the ledger cannot be written", record=False)
            raise
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            self.backend.close()

    def _wait_timeout(self) -> float:
        deadlines = [self.next_look]
        deadlines += [r.deadline for r in self.backend.running.values() if r.stopping is None]
        return max(0.0, min(deadlines) - time.monotonic())

    def wake(self) -> None:
        """For a backend whose attempts end elsewhere (a Dask future's callback thread)."""
        self.events.put(_Wake())

    def _handle(self, event: _Signal | _Wake | None) -> None:
        if isinstance(event, _Signal):
            self.stopping = event.signum
            return
        for ended in self.backend.ended():
            self._ended(ended)
        now = time.monotonic()
        for running in list(self.backend.running.values()):
            if running.stopping is None and now >= running.deadline:
                self.say(
                    f"task {running.task.id} ({running.task.name}) on {running.worker}: "
                    f"timed out after {running.task.timeout:g} s; stopping it"
                )
                self.backend.stop(running, "timeout")
        if now >= self.next_look:
            self.next_look = now + LEDGER_LOOK_INTERVAL
            self._stop_cancelled()
            if now >= self.next_escaped_sweep:
                self._sweep_escaped()

    def _install_signal_handlers(self) -> dict[int, Any]:
        def handle_signal(signum: int, _frame: FrameType | None) -> None:
            self.events.put(_Signal(signum))

        def handle_sigchld(_signum: int, _frame: FrameType | None) -> None:
            self.events.put(_Wake())

        previous: dict[int, Any] = {}
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, handle_signal)
        previous[signal.SIGCHLD] = signal.signal(signal.SIGCHLD, handle_sigchld)
        return previous

    # --- start and end of attempts ----------------------------------------------------------

    def _recover(self) -> None:
        recover_left(self.ledger, self.say)

    def _dispatch(self) -> None:
        for worker in self.backend.free():
            if self.refused is not None:
                return
            token = new_token()  # in the ledger before any process carries it
            claimed = self.ledger.claim(
                worker,
                self.backend.host_of(worker),
                workers=self.backend.workers(),
                token=token,
                max_gpus=1,
            )
            if claimed is None:
                continue  # none this worker may take; the next one may
            task, attempt = claimed
            verdict = self._preflight(worker, task)
            if verdict is not None and not verdict.passed:
                self._refused(task, attempt, worker, verdict.refusals)
                continue
            try:
                running = self.backend.start(worker, task, attempt, token)
            except SpawnError as exc:
                self._record(task.id, attempt.id, AttemptEnd(
                    "failed", category="config_error", retryable=False, error=str(exc),
                ), worker, task.name, task.max_retries)  # fmt: skip
                continue
            if verdict is not None:
                running.gpu_baseline = verdict.gpu_findings
            if running.pid is not None:
                self.ledger.started(
                    attempt.id,
                    pid=running.pid,
                    log_file=str(running.log_file),
                    log_offset=running.log_offset,
                )
            self.on_change(task.id)
            where = f", pid {running.pid}" if running.pid is not None else ""
            self.say(
                f"task {task.id} ({task.name}) attempt {attempt.number} on {worker}: started{where}"
            )

    def _preflight(self, worker: str, task: Task) -> Verdict | None:
        """The checks before `task` starts on `worker`; None when there is no preflight."""
        if self.preflight is None:
            return None
        gpus = self.backend.gpus_of(worker) if task.gpus else ()
        return self.preflight.check(
            step=f"task {task.id} ({task.name})",
            worker=worker,
            gpus=gpus or (),
            files=self.step_files(task),
            folder=Path(task.cwd),
            ours=self._ours,
        )

    def _ours(self, pid: int) -> bool:
        """Whether `pid` belongs to one of the attempts running now (for GPU findings)."""
        tokens = [r.token for r in self.backend.running.values()]
        try:
            proc = psutil.Process(pid)
            return any(has_owner_mark(proc, token) for token in tokens)
        except psutil.Error:
            return False

    def _refused(
        self, task: Task, attempt: Attempt, worker: str, refusals: Sequence[Refusal]
    ) -> None:
        """Record a refusal as an attempt that started nothing (not counted): a step's own
        files fail it (a retry or resume runs it again); a GPU takes its worker out of the run;
        anything else ends the run."""
        first = refusals[0]
        error = "; ".join(r.line for r in refusals)
        status: TaskStatus = "failed" if first.scope == "step" else "pending"
        end = AttemptEnd("failed", category="preflight", retryable=True, error=error,
                         counted=False)  # fmt: skip
        self.ledger.finish(attempt.id, end, task_status=status)
        then = {"step": "failed (resume or retry runs it again)", "gpu": "back to pending",
                "run": "back to pending"}[first.scope]  # fmt: skip
        self.say(f"task {task.id} ({task.name}) on {worker}: preflight refused: {error} -> {then}")
        self.on_change(task.id)
        if first.scope == "run":
            self.refused = first.line
        elif first.scope == "gpu":
            self._retire(worker, first.line)

    def _retire(self, worker: str, why: str) -> None:
        """Take `worker` out of the run; what else it runs (a Dask worker's next attempt, sent
        ahead) is stopped, not counted, and runs elsewhere."""
        self.backend.retire(worker)
        for running in list(self.backend.running.values()):
            if running.worker == worker and running.stopping is None:
                self.say(f"task {running.task.id} on {worker}: stopped, to run elsewhere")
                self.backend.stop(running, "interrupted")
        left = self.backend.workers()
        self.say(f"{worker} takes no more tasks in this run ({why}); workers left: "
                 f"{', '.join(left) or 'none'}")  # fmt: skip
        if not left:
            self.refused = f"no worker left: the GPU of each was taken out of this run ({why})"

    def _ended(self, ended: Ended) -> None:
        running, code = ended.running, ended.code
        how = decode_wait_status(code) if code is not None else f"lost: {ended.lost}"
        left = self.backend.sweep(running)
        if left:
            self.say(f"task {running.task.id}: stopped processes it left: {left}")
        if ended.refused is not None:  # its worker's own preflight (Dask) started nothing
            self._refused(running.task, running.attempt, running.worker, [ended.refused])
            return
        if running.stopping == "timeout":
            end = AttemptEnd(
                "timeout",
                exit_code=code,
                category="timeout",
                retryable=True,
                error=f"timed out after {running.task.timeout:g} s ({how})",
                gpu_state=self.backend.gpu_state(ended),
            )
        elif running.stopping in ("cancelled", "interrupted"):
            end = AttemptEnd("interrupted", exit_code=code, error=running.stopping, counted=False)
        elif code is None:
            end = AttemptEnd("worker_lost", category="worker_lost", retryable=True, error=how)
            self._sweep_escaped()  # its processes there, before its task runs anywhere again
        elif code == 0:
            end = AttemptEnd("ok", exit_code=0)
        else:
            found = diagnose_attempt(
                self.scanner,
                running.log_file,
                since=running.log_offset,
                exit_code=code,
                how=how,
                tail=ended.tail,
            )
            end = AttemptEnd(
                "failed",
                exit_code=code,
                category=found.category,
                retryable=found.retryable,
                error=found.error,
                traceback_tail=found.traceback_tail,
                gpu_state=self.backend.gpu_state(ended),
            )
        after = self.backend.after_attempt(running) if code is not None else {}
        after.update(ended.after or {})
        if after:
            end = replace(end, gpu_state={**(end.gpu_state or {}), **after})
            self._tell_after(running, after)
        task = running.task
        self._record(task.id, running.attempt.id, end, running.worker, task.name, task.max_retries)
        self._exclude_gpu(running, end)

    def _tell_after(self, running: Running, after: dict[str, Any]) -> None:
        where = f"task {running.task.id} on {running.worker}"
        if after.get("gpu_leftovers_killed"):
            self.say(f"{where}: killed processes of ours still holding GPU memory: "
                     f"{after['gpu_leftovers_killed']}")  # fmt: skip
        if after.get("gpu_held_by_others"):
            self.say(f"{where}: GPU memory still held by others: {after['gpu_held_by_others']}")
        hook = after.get("post_task")
        if hook and (hook.get("error") or hook.get("exit_code")):
            what = hook.get("error") or f"exited {hook['exit_code']}"
            self.say(f"{where}: post_task {hook['argv']}: {what}")

    def _exclude_gpu(self, running: Running, end: AttemptEnd) -> None:
        """[queue] exclude_gpu_on: a crash of those categories, or (for gpu_hardware) GPU
        errors that appeared while the attempt ran, take its worker's GPU out of the run."""
        if not self.exclude_gpu_on or running.worker not in self.backend.workers():
            return
        if self.backend.gpus_of(running.worker) == ():
            return  # a worker without a GPU: nothing to take out
        state = end.gpu_state if isinstance(end.gpu_state, dict) else {}
        new_errors = hardware_errors(state.get("new_errors", ()))
        if end.category in self.exclude_gpu_on:
            self._retire(running.worker, f"its attempt crashed with {end.category}")
        elif "gpu_hardware" in self.exclude_gpu_on and new_errors and end.outcome != "ok":
            self._retire(running.worker, f"GPU errors appeared while it ran: {new_errors[0]}")

    def _record(
        self, task_id: int, attempt_id: int, end: AttemptEnd, worker: str, name: str,
        max_retries: int,
    ) -> None:  # fmt: skip
        earlier = [a for a in self.ledger.attempts(task_id) if a.id != attempt_id]
        verdict = judge(
            earlier,
            outcome=end.outcome,
            counted=end.counted,
            retryable=end.retryable,
            category=end.category,
            max_retries=max_retries,
        )
        self.ledger.finish(attempt_id, end, task_status=verdict.status)
        detail = f" ({end.error})" if end.error and end.outcome != "ok" else ""
        self.say(f"task {task_id} ({name}) on {worker}: {end.outcome}{detail} -> {verdict.reason}")
        self.on_change(task_id)

    def _sweep_escaped(self) -> None:
        self.next_escaped_sweep = time.monotonic() + ESCAPED_SWEEP_INTERVAL
        left = self.backend.sweep_escaped()
        if left:
            self.say(f"stopped processes that left the tree of ended attempts: {left}")

    def _stop_cancelled(self) -> None:
        running = {r.task.id: r for r in self.backend.running.values() if r.stopping is None}
        if not running:
            return
        statuses = self.ledger.statuses(list(running))
        for task_id, status in statuses.items():
            if status == "cancelled":
                self.say(f"task {task_id}: cancelled; stopping it")
                self.backend.stop(running[task_id], "cancelled")

    def _interrupt(self) -> int:
        """Ctrl+C or SIGTERM: stop every attempt, close them as interrupted (not counted),
        their tasks back to pending; nothing is lost."""
        self._stop_all("interrupted")
        tasks = self.ledger.close_running(
            AttemptEnd("interrupted", error="the runner was stopped", counted=False)
        )
        name = signal.Signals(self.stopping or signal.SIGINT).name
        self.say(f"{name}: stopped; tasks {tasks} back to pending" if tasks else f"{name}: stopped")
        return exitcodes.INTERRUPTED

    def _stop_all(self, why: str, *, record: bool = True) -> None:
        """Stop every attempt. One that ended by itself before it was signalled (its exit
        may be waiting behind the signal in our queue) keeps its own outcome (`record`): a
        task that finished is done, never run again."""
        if record:
            for ended in self.backend.ended():
                self._ended(ended)
        for running in list(self.backend.running.values()):
            self.backend.stop(running, why)
        for ended in self.backend.ended():
            if record and ended.running.stopping is None:
                self._ended(ended)  # it exited before the signal reached it
            else:
                self.backend.sweep(ended.running)
        self.backend.sweep_escaped()
        self.backend.running.clear()  # what has not ended by now is closed all the same

    def _all_settled(self) -> bool:
        if self.backend.running:
            return False
        counts = self.ledger.counts()
        return counts["pending"] == 0 and counts["running"] == 0

    def _stuck(self) -> int:
        """Pending tasks, nothing running, and no worker here took any: they need more GPUs
        than one worker of this machine has."""
        pending = self.ledger.tasks(status="pending")
        needs = ", ".join(f"task {t.id} ({t.gpus} GPUs)" for t in pending[:5])
        failed = self.ledger.counts()["failed"]
        also = f" (and {failed} failed for good)" if failed else ""
        self.say(f"no worker here can take {len(pending)} pending tasks: {needs}{also}")
        return NO_WORKER

    def _final_code(self) -> int:
        counts = self.ledger.counts()
        self.say(
            "all settled: " + ", ".join(f"{counts[s]} {s}" for s in ("done", "failed", "cancelled"))
        )
        return exitcodes.FAILURE if counts["failed"] else exitcodes.OK
