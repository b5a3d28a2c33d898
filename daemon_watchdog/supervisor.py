"""The one loop that owns all supervision state.

Signal handlers, the progress observer and the adopted-pid waiter only put events on a queue;
`run` takes them off one at a time and alone changes state. Waiting for the next event is
bounded by the nearest deadline (hang, end of backoff, the periodic check, checkpoint pruning),
so nothing polls. The periodic work runs on those deadlines rather than on an APScheduler
thread: the loop computes them anyway, and APScheduler (with the asyncio it imports) cost
~4.4 MiB, a tenth of the watchdog's memory, and a thread.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import queue
import shutil
import signal
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from crash_detector.oom_counters import OomSnapshot
from daemon_watchdog import events as ev
from daemon_watchdog.checkpoint_jobs import CheckpointJobs
from daemon_watchdog.checkpoint_refusal import CheckpointRefusal
from daemon_watchdog.config_reload import plan_reload
from daemon_watchdog.crash_actions import Applied, CrashActions, action_for
from daemon_watchdog.daemon_process import (
    DaemonHandle,
    SpawnError,
    Unprovable,
    find_daemon,
    forget_daemon,
    spawn,
    unprovable_pid,
)
from daemon_watchdog.diagnosis import (
    Diagnosis,
    diagnose_crash,
    diagnose_hang,
    load_scanner,
    record_crash,
)
from daemon_watchdog.incidents import capture_stacks, write_incident
from daemon_watchdog.log_liveness import LogLiveness, compile_step_regex
from daemon_watchdog.progress_watch import ProgressWatch
from daemon_watchdog.reporting import Reporter
from daemon_watchdog.restart_policy import RestartPolicy
from daemon_watchdog.states import TERMINAL, State, check_transition
from daemon_watchdog.step_rhythm import StepRhythm
from trainguard.atomicio import read_json, write_json_atomic
from trainguard.checkpoints import CheckpointInfo
from trainguard.child_process import become_subreaper, new_token, reap_children, watch_exit
from trainguard.config import Config
from trainguard.errors import TrainguardError
from trainguard.orphan_sweep import LATE_FORK_ROUNDS, kill_orphans, orphans_of
from trainguard.orphan_sweep import reparented as reparented_to_us
from trainguard.process_tree import stop_process_tree
from trainguard.procs import (
    OWNER_ENV,
    decode_wait_status,
    descendants,
    find_marked,
    identify,
    stopped_pids,
)
from trainguard.progress import (
    SAVE_REQUEST_NAME,
    Progress,
    ProgressError,
    is_progress,
    read_progress,
    save_request_file,
)
from trainguard.timestamps import parse_iso_utc
from trainguard.watchdog_status import (
    CrashRecord,
    HangThreshold,
    ProgressMark,
    RecoveryState,
    WatchdogStatus,
    read_watchdog_status,
    restart_request_file,
    utc_now,
)
from trainguard.workspace import Workspace

if TYPE_CHECKING:
    from crash_detector.scanner import Scanner
    from health_check.checks.gpu_model import GpuReading

log = logging.getLogger("daemon_watchdog")

LOG_TICK = 1.0  # seconds between looks at the log of a daemon that has shown no life yet
MAX_RESTARTS_KEPT = 50  # in the state file; the crash history keeps everything
PROGRESS_PUBLISH_INTERVAL = 1.0  # seconds; state changes are published at once
# Seconds between looks for the answer to a save request: with inotify the trainer's removal
# of the request wakes the loop at once; this covers a lost event and a polled filesystem.
SAVE_ANSWER_POLL = 1.0


@dataclass(frozen=True)
class _Crash:
    """A crash waiting for the checkpoint worker's choice before the policy decides."""

    diagnosis: Diagnosis
    code: int | None
    hang: bool
    refused: str | None  # "NAME: why", the checkpoint quarantined as the trainer could not use it
    died_at: int | None  # the last step the crashed daemon reported
    recovery: list[str]  # what recovery changed for it (texts), for the crash history


GPU_SURVEY_BUDGET = 10.0  # seconds the GPU survey after a GPU crash may take (rocm-smi, dmesg)


def survey_gpus(ws: Workspace) -> Sequence[GpuReading]:
    """This machine's GPUs, graded as health-check grades them (NVML, AMD, kernel-log Xids)."""
    from health_check.checks.gpu import survey

    return survey(ws.config.health, budget=GPU_SURVEY_BUDGET, ours=lambda _pid: True).gpus


class Supervisor:
    def __init__(
        self,
        ws: Workspace,
        *,
        exit_when_done: bool = False,
        reporter: Reporter | None = None,
        reload_config: Callable[[], Config] | None = None,
        gpu_survey: Callable[[], Sequence[GpuReading]] | None = None,
    ) -> None:
        self.ws = ws
        # What [watchdog.recovery] changed (knobs, kept across restarts), and the one who acts.
        self.recovery = RecoveryState()
        self.actions = CrashActions(
            ws, gpu_survey or (lambda: survey_gpus(self.ws)), record=self._record_recovery
        )
        self.reload_config = reload_config  # SIGHUP reads the config again with it
        self.reload_note: str | None = None  # what the last SIGHUP applied
        self.reporter = reporter or Reporter(ws)
        self.last_status: WatchdogStatus | None = None  # what /metrics reads (swapped whole)
        self.next_ping: float | None = None  # monotonic time of the next systemd WATCHDOG=1
        self.cfg = ws.config
        self.exit_when_done = exit_when_done
        self.events: queue.SimpleQueue[ev.Event] = queue.SimpleQueue()
        self.policy = RestartPolicy(**_policy_limits(self.cfg))
        self._scanner: Scanner | None = None  # loaded once the daemon has started
        self.state: State | None = None
        self.daemon: DaemonHandle | None = None
        self.oom_before: OomSnapshot | None = None  # the daemon's OOM-kill counters at its start
        self.last_progress: Progress | None = None
        self.last_progress_mono = 0.0
        # Liveness from the log (`log_liveness`): when this daemon last wrote output, and
        # whether it (or any daemon of this run) has written the progress file.
        self.log_watch: LogLiveness | None = None
        self.last_output_mono: float | None = None
        self.progress_file_seen = False
        self.run_progress_file_seen = False
        self.last_progress_at: str | None = None
        self.restart_at: float | None = None  # monotonic time the backoff ends
        self.state_reason: str | None = None
        self.stopping_for: str | None = None  # "hang" | "operator" | "restart" while STOPPING
        # A planned stop waiting for the checkpoint it asked for: until then (monotonic), and
        # the step that checkpoint must hold at least.
        self.save_wait_until: float | None = None
        self.save_asked_at_step: int | None = None
        self.restart_requests = 0  # operator restarts handled: `restart` waits for its own
        self.hang_reason = ""
        self.restarts: list[CrashRecord] = []  # the newest MAX_RESTARTS_KEPT
        # Every restart ever, by crash category: the metric's counter, which never goes down.
        self.restart_totals: Counter[str] = Counter()
        self.rhythm = StepRhythm()  # the trainer's step rhythm: the learned hang thresholds
        self.last_crash: CrashRecord | None = None
        # Recorded in the state file before a daemon is started with it (no record, no spawn):
        # a later watchdog then recognises that daemon even if we die before recording it.
        self.pending_token: str | None = None
        self.pending_log_offset: int | None = None
        self.fatal_reason: str | None = None
        self.exit_code: int | None = None  # set when run() should return
        self.published_mono = 0.0
        self.stale_progress: tuple[int, int, int] | None = None
        self.me = identify(os.getpid())  # lets `stop` prove which process it signals
        self.subreaper = False  # whether orphans of our daemons are re-parented to us
        self.unswept_token: str | None = None  # a dead daemon's token not yet swept for
        # Crashes diagnosed but not yet in the crash history: appended once the restart is
        # under way (the append takes a lock that a cron crash-detector may hold, and fsyncs).
        self.unrecorded: list[tuple[Diagnosis, str, int | None, list[str]]] = []
        self.next_check = self.next_prune = 0.0  # monotonic deadlines of the periodic work
        self.log_tick_at = 0.0
        self.diagnosed = False  # a crash was diagnosed while handling this event
        self.jobs = CheckpointJobs(ws, self.events.put)
        # What to resume from is chosen on a worker thread: `choosing` says a choice is awaited
        # (request `choice_seq`) and what for; a crash waits for it in `pending_crash`.
        self.choice_seq = 0
        self.choosing: str | None = None  # "spawn" | "recover"
        self.pending_crash: _Crash | None = None
        self.chosen: CheckpointInfo | None = None
        self.start_when_chosen = False  # an operator's restart during BACKOFF skips the wait
        self.refusal = CheckpointRefusal()
        self.ready_sent = False  # systemd's READY=1

    @property
    def scanner(self) -> Scanner:
        if self._scanner is None:
            started = time.monotonic()
            self._scanner = load_scanner()
            _release_free_heap()  # what loading it freed: ~0.8 MiB
            log.info(
                "crash detector loaded: %d rules (%s) in %.0f ms",
                len(self._scanner.rules),
                self._scanner.engine,
                (time.monotonic() - started) * 1e3,
            )
        return self._scanner

    # --- the loop -------------------------------------------------------------------------

    def run(self) -> int:
        self._install_signal_handlers()
        self.subreaper = become_subreaper()
        watch = ProgressWatch(
            self.ws.progress_file,
            lambda: self.events.put(ev.ProgressChanged()),
            also=(SAVE_REQUEST_NAME,),  # its removal: the checkpoint asked for is complete
        )
        watch.start()
        now = time.monotonic()
        self.next_check = now + self.cfg.watchdog.check_interval
        self.next_prune = now + self.cfg.watchdog.prune_interval
        self.reporter.start_metrics(lambda: self.last_status)
        try:
            self._start_or_adopt()  # READY goes out with the first state (`_transition`)
            # The crash detector, now that training has started, rather than at the first crash:
            # that crash, often the only one, then restarts as fast as any later one (~20 ms,
            # not ~60), and where the cache lacks the compiled rules they are built now (~0.5 s).
            # A daemon that exits meanwhile is handled just after, from the event queue.
            _ = self.scanner
            if self.reporter.ping_interval is not None:
                self.next_ping = time.monotonic()
            while self.exit_code is None:
                try:
                    event: ev.Event | None = self.events.get(timeout=self._wait_timeout())
                except queue.Empty:
                    event = None  # a deadline came: `_handle` sees which
                self._handle(event)
        finally:
            self._record_crashes()
            self.reporter.stopping()
            self.jobs.close()
            watch.stop()
            self.reporter.close()
        return self.exit_code

    def _wait_timeout(self) -> float:
        deadlines = [self.next_check, self.next_prune]
        if self.next_ping is not None:
            deadlines.append(self.next_ping)
        if self.restart_at is not None:
            deadlines.append(self.restart_at)
        if self.save_wait_until is not None:
            # The answer wakes us (inotify); a look a second covers a lost event and polling.
            deadlines.append(min(self.save_wait_until, time.monotonic() + SAVE_ANSWER_POLL))
        hang = self._hang_deadline()
        if hang is not None:
            deadlines.append(hang)
        tick = self._log_tick()
        if tick is not None:
            deadlines.append(tick)
        return max(0.0, min(deadlines) - time.monotonic())

    def _handle(self, event: ev.Event | None) -> None:
        if isinstance(event, ev.SignalReceived):
            self._on_signal(event.signum)
        elif isinstance(event, ev.ChildExited):
            self._reap()
        elif isinstance(event, ev.AdoptedExited):
            if self.daemon is not None and self.daemon.pid == event.pid:
                self._on_daemon_exit(None)
        elif isinstance(event, ev.ProgressChanged):
            self._on_progress()
            self._check_save_answer()
        elif isinstance(event, ev.CheckpointChosen):
            self._on_chosen(event)
        elif isinstance(event, ev.PruneDone):
            self._on_pruned(event)
        now = time.monotonic()
        if self.next_ping is not None and now >= self.next_ping:
            self._ping()
        if now >= self.next_prune:
            self.next_prune = now + self.cfg.watchdog.prune_interval
            self._prune()
        self._check_deadlines()
        if now >= self.next_check:
            self.next_check = now + self.cfg.watchdog.check_interval
            self._reap()  # a lost SIGCHLD costs at most one check_interval
            self._on_progress()  # and so does a lost inotify event (a recreated folder)
            self._look_at_log()
            self._publish()
        if self.unswept_token is not None and self.choosing is None:
            # After the restart this event may have made: while the checkpoint is being chosen,
            # the sweep (~20 ms of reading environments) would only delay the new daemon.
            self._sweep_marked(self.unswept_token)
        if self.unrecorded and self.choosing is None:
            self._record_crashes()  # after the restart, like the sweep
        if self.diagnosed:
            self.diagnosed = False
            _release_free_heap()  # what reading and classifying the log tail freed

    # --- start, adopt, restart ------------------------------------------------------------

    def _start_or_adopt(self) -> None:
        previous = self._read_previous()
        found = find_daemon(self.ws, previous)
        self._restore(previous)
        if isinstance(found, DaemonHandle):
            self.daemon = found
            self.oom_before = OomSnapshot.read_for(found.pid)
            watch_exit(found.pid, lambda: self.events.put(ev.AdoptedExited(found.pid)))
            self._watch_log(found, from_now=True)
            self.rhythm.started()
            self._drop_save_request()  # one a killed watchdog left: not asked of this daemon
            self._transition(State.STARTING, "adopted the running daemon")
            self.last_progress_mono = time.monotonic()  # its grace starts now
            return
        if previous is not None and previous.owner_token is not None:
            # Not our child: its orphans went to init, only the token finds them.
            self._kill_orphans(previous.owner_token, "left by the previous daemon", tree=False)
        if isinstance(found, Unprovable):
            self._refuse_unprovable(found)
            return
        # Published at once, so `status`, `stop` and health-check see this watchdog while the
        # checkpoint (every byte of a huge one) is checked, not the state an earlier one left.
        self._transition(State.STARTING, "choosing the checkpoint to resume from")
        self._choose(then="spawn", room=False)

    def _read_previous(self) -> WatchdogStatus | None:
        """The state an earlier watchdog left. One that exists but cannot be read is kept aside
        (it will be replaced), so that what it held is not lost."""
        previous = read_watchdog_status(self.ws.state_file)
        if previous is None and os.path.lexists(self.ws.state_file):
            aside = self.ws.state_file.with_name(
                f"{self.ws.state_file.name}.unreadable-{utc_now().replace(':', '')}"
            )
            try:
                shutil.move(self.ws.state_file, aside)
                log.warning("state file %s cannot be read: kept as %s", self.ws.state_file, aside)
            except OSError as exc:
                log.warning("state file %s cannot be read (%s)", self.ws.state_file, exc)
        for problem in previous.problems if previous is not None else ():
            log.warning("state file %s: ignoring %s", self.ws.state_file, problem)
        return previous

    def _refuse_unprovable(self, found: Unprovable) -> None:
        """A trainer may be running that we cannot prove ours: start nothing beside it."""
        reason = found.reason(self.ws)
        self.fatal_reason = reason
        log.error("FATAL: %s", reason)
        self.reporter.fatal("spawn", reason, found.advice(self.ws))
        self._finish(State.FATAL, reason)

    def _restore(self, previous: WatchdogStatus | None) -> None:
        if previous is None:
            return
        self.recovery = previous.recovery  # the knobs stay turned until --reset-recovery
        self.restarts = list(previous.restarts)
        self.restart_totals = Counter(previous.restart_totals)
        self.rhythm = StepRhythm.from_json(previous.step_rhythm)
        if previous.state != State.STOPPED.value:
            # The same run goes on (this watchdog replaces one that died): its restarts still
            # count against max_restarts and the backoff. After a stop, a `run` starts afresh.
            now = datetime.now(timezone.utc)
            ages = [
                (now - at).total_seconds()
                for at in (parse_iso_utc(r.at) for r in self.restarts)
                if at is not None
            ]
            self.policy.remember(ages)
        self.last_crash = previous.last_crash

    def _choose(
        self,
        *,
        then: str,
        room: bool,
        refused: tuple[Path, str] | None = None,
        skip: int = 0,
        prune: bool = False,
    ) -> None:
        """Ask the checkpoint worker what to resume from; `_on_chosen` goes on from there."""
        self.choice_seq += 1
        self.choosing = then
        self.chosen = None
        self.jobs.choose(self.choice_seq, room=room, refused=refused, skip=skip, prune=prune)

    def _on_chosen(self, event: ev.CheckpointChosen) -> None:
        if event.seq != self.choice_seq or self.choosing is None:
            return  # answers a request that a stop or a newer request made moot
        then, self.choosing = self.choosing, None
        if event.disk_low is not None:
            self.reporter.disk_low(event.disk_low)
        if event.error is not None:
            self.pending_crash = None
            self._cannot_start(event.error)
            return
        self.chosen = event.checkpoint
        if then == "recover":
            if event.refused_stuck and self.pending_crash is not None:
                crash = self.pending_crash
                self.pending_crash = replace(crash, refused=f"{crash.refused} (NOT moved: see log)")
            self._decide(event.checkpoint, event.rewound, event.pruned)
        else:
            self._spawn(event.checkpoint)

    def _cannot_start(self, reason: str) -> None:
        self.fatal_reason = reason
        log.error("FATAL: %s", reason)
        self.reporter.fatal("spawn", reason, "Fix [daemon] or [checkpoints] in the config or the "
                            "workspace, then run `daemon-watchdog restart`.")  # fmt: skip
        self._finish(State.FATAL, reason)

    def _spawn(self, checkpoint: CheckpointInfo | None) -> None:
        """Start the daemon from `checkpoint` (None: from scratch); FATAL if it cannot be."""
        self.start_when_chosen = False
        path = checkpoint.path if checkpoint is not None else None
        if path is not None and not os.path.lexists(path):
            self._choose(then="spawn", room=False)  # moved since it was chosen: choose again
            return
        stranger = unprovable_pid(self.ws)
        if stranger is not None:
            self._refuse_unprovable(stranger)
            return
        token = new_token()
        if not self._record_token(token):
            return
        self._drop_save_request()  # one a killed watchdog left: not for this daemon
        try:
            # A resumed run starts below the last run's step: until the new daemon replaces the
            # progress file, what it holds is history, not this daemon's first progress.
            self.stale_progress = _stamp(self.ws.progress_file)
            self.daemon = spawn(self.ws, checkpoint=path, token=token, started_at=utc_now(),
                                env_changes=self.recovery.env())  # fmt: skip
            self.oom_before = OomSnapshot.read_for(self.daemon.pid)
        except SpawnError as exc:
            self.pending_token = None
            self._cannot_start(str(exc))
            return
        self.pending_token = None
        self.policy.started()
        self.rhythm.started()
        self.last_progress = None
        self.last_progress_mono = time.monotonic()
        self._watch_log(self.daemon, from_now=False)
        where = f"from {path.name}" if path is not None else "from the start"
        self._transition(State.STARTING, f"daemon pid {self.daemon.pid} started {where}")

    def _record_token(self, token: str) -> bool:
        """Write the new daemon's owner token into the state file before the daemon exists:
        a watchdog that dies between the spawn and the state update leaves a record that lets
        the next one recognise that daemon, rather than start a second one beside it."""
        self.pending_token = token
        try:
            self.pending_log_offset = self.ws.daemon_log.stat().st_size
        except OSError:
            self.pending_log_offset = 0
        try:
            # Atomic, not fsync'd: it must survive this process being killed, which the page
            # cache does; a power cut ends the daemon too. STARTING, just after the fork, is.
            self._publish(strict=True, durable=False)
        except OSError as exc:
            self.pending_token = None
            self._cannot_start(
                f"cannot record the new daemon's owner token in {self.ws.state_file} "
                f"({exc.strerror or exc}): not starting a daemon that no record would name"
            )
            return False
        return True

    def _restart_now(self) -> None:
        self.restart_at = None
        self._spawn(self.chosen)

    # --- events -----------------------------------------------------------------------------

    def _on_signal(self, signum: int) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT):
            log.info("received %s: stopping the daemon", signal.Signals(signum).name)
            self._operator_stop()
        elif signum == signal.SIGHUP:
            # A closed terminal sends SIGHUP too: it reloads the config, and restarts only when
            # `daemon-watchdog restart` left its request file first.
            self._reload()
            request = self._take_restart_request()
            if request is not None:
                if request.get("reset_recovery") is True:
                    self._reset_recovery()
                self._operator_restart()
            else:
                self._publish()

    def _reload(self) -> None:
        if self.reload_config is None:
            return
        try:
            new = self.reload_config()
        except TrainguardError as exc:
            self.reload_note = f"{utc_now()}: config NOT reloaded, the running one stays: {exc}"
            log.error("SIGHUP: %s", self.reload_note)
            return
        plan = plan_reload(self.cfg, new)
        self.cfg = plan.config
        self.ws = Workspace(plan.config)
        self.jobs.ws = self.ws
        self.actions.ws = self.ws  # [watchdog.recovery] applies from the next crash
        self.policy.retune(**_policy_limits(plan.config))
        now = time.monotonic()
        w = plan.config.watchdog
        self.next_check = min(self.next_check, now + w.check_interval)
        self.next_prune = min(self.next_prune, now + w.prune_interval)
        self.reload_note = f"{utc_now()}: {plan.summary()}"
        (log.warning if plan.kept else log.info)("SIGHUP: %s", plan.summary())
        self.reporter.status(plan.summary()[:200])

    def _take_restart_request(self) -> dict[str, Any] | None:
        """What `daemon-watchdog restart` asked for (its file, consumed here), or None."""
        path = restart_request_file(self.ws)
        try:
            request = read_json(path)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:  # a request all the same, if a plain one
            log.warning("restart request %s unreadable (%s): a plain restart", path, exc)
            request = {}
        try:
            os.unlink(path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.error("cannot remove the restart request %s: %s", path, exc)
            return None
        return request if isinstance(request, dict) else {}

    def _reset_recovery(self) -> None:
        """`restart --reset-recovery`: every knob recovery turned goes back (crash_actions)."""
        applied = self.actions.reset(self.recovery)
        self.recovery = applied.state

    def _operator_stop(self) -> None:
        self.restart_at = None
        if self.daemon is None:
            # Nothing runs: in BACKOFF, or while the checkpoint for a (re)start is being chosen
            # (`_finish` makes that choice moot: no daemon starts after the stop).
            self._finish(State.STOPPED, "stopped by the operator", leave=True)
            return
        if self.state == State.STOPPING:
            self.stopping_for = "operator"  # once the tree is gone: STOPPED, not a restart
            if self.save_wait_until is not None:
                self._end_save_wait("stop requested again: not waiting for the checkpoint")
            return
        self.stopping_for = "operator"
        self.reporter.stopping()
        if self._ask_to_save():
            return
        self._transition(State.STOPPING, "stop requested")
        self._stop_tree()

    # --- a planned stop asks for a checkpoint first (#20) -----------------------------------

    def _ask_to_save(self) -> bool:
        """Ask the trainer for a checkpoint before stopping it, if it answers such requests
        (its progress says so) and `save_on_stop_timeout` allows; True when asked."""
        timeout = self.cfg.daemon.save_on_stop_timeout
        p = self.last_progress
        if timeout == 0 or self.state != State.RUNNING or p is None or not p.saves_on_request:
            return False
        request = save_request_file(self.ws.progress_file)
        try:
            write_json_atomic(request, {"requested_at": utc_now(), "step": p.step})
        except OSError as exc:
            log.error("cannot ask the trainer to save (%s): stopping it now", exc)
            return False
        self.save_wait_until = time.monotonic() + timeout
        self.save_asked_at_step = p.step
        self._transition(
            State.STOPPING,
            f"stop requested: asking the trainer for a checkpoint first (step {p.step}; "
            f"waiting up to {timeout:g} s)",
        )
        return True

    def _check_save_answer(self) -> None:
        """The trainer removed the request (its checkpoint is complete), or the wait is over."""
        if self.save_wait_until is None:
            return
        if not save_request_file(self.ws.progress_file).exists():
            step = self.last_progress.step if self.last_progress is not None else None
            self._end_save_wait(f"the trainer saved a checkpoint (asked at step "
                                f"{self.save_asked_at_step}, now at {step})")  # fmt: skip
        elif time.monotonic() >= self.save_wait_until:
            timeout = self.cfg.daemon.save_on_stop_timeout
            self._end_save_wait(f"no checkpoint within save_on_stop_timeout ({timeout:g} s)")

    def _end_save_wait(self, why: str) -> None:
        self._forget_save_request()
        log.info("%s: stopping the daemon", why)
        if self.daemon is not None:
            self._stop_tree()

    def _forget_save_request(self) -> None:
        """No request outlives its stop: a daemon started later must not save at once."""
        self.save_wait_until = None
        self.save_asked_at_step = None
        self._drop_save_request()

    def _drop_save_request(self) -> None:
        with contextlib.suppress(OSError):
            os.unlink(save_request_file(self.ws.progress_file))

    def _operator_restart(self) -> None:
        """`daemon-watchdog restart`: start the daemon again, whatever state it is in. Not a
        crash: nothing is classified or counted, and no backoff is waited out."""
        self.restart_requests += 1  # published with the state change below
        if self.daemon is None and self.choosing is not None:
            log.info("restart requested by the operator: starting once the checkpoint is chosen")
            self.start_when_chosen = True  # no backoff after the choice
            self._publish()
        elif self.state in TERMINAL and self.daemon is None:
            log.info("restart requested by the operator: clearing %s", self.state)
            self.policy.reset()
            self.fatal_reason = None
            self.refusal.reset()
            self._transition(State.STARTING, "restart requested: choosing the checkpoint")
            self._choose(then="spawn", room=False)
        elif self.state == State.BACKOFF:
            log.info("restart requested by the operator: starting now, not after the backoff")
            self._restart_now()
        elif self.state in (State.STARTING, State.RUNNING) and self.daemon is not None:
            self.stopping_for = "restart"
            self._transition(State.STOPPING, "restart requested by the operator")
            self._stop_tree()  # its exit starts the new daemon (`_on_daemon_exit`)
        else:
            log.info(
                "restart request ignored: the daemon is already being stopped (%s)", self.state
            )
            self._publish()

    def _reap(self) -> None:
        for pid, code in reap_children():
            if self.daemon is not None and pid == self.daemon.pid:
                if self.daemon.proc is not None:
                    self.daemon.proc.returncode = code  # we reaped it: tell Popen
                self._on_daemon_exit(code)
            elif pid in self.reporter.alert_senders():
                pass  # an alert's delivery child: its thread reads the outcome from its pipe
            else:
                log.info("reaped orphaned process %d (%s)", pid, decode_wait_status(code))

    def _on_progress(self) -> None:
        try:
            progress = read_progress(self.ws.progress_file)
        except (ProgressError, OSError) as exc:
            log.warning("ignoring unreadable progress file %s: %s", self.ws.progress_file, exc)
            return
        if progress is None or self.daemon is None:
            return
        if self.last_progress is not None and not is_progress(self.last_progress, progress):
            return
        if self.last_progress is None and _stamp(self.ws.progress_file) == self.stale_progress:
            return  # the file the previous run left: this daemon has not written yet
        self.progress_file_seen = self.run_progress_file_seen = True
        self._accept_progress(progress, "progress")

    def _accept_progress(self, progress: Progress, source: str) -> None:
        self.last_progress = progress
        self.last_progress_mono = time.monotonic()
        if source == "progress":  # log lines are seen a check_interval apart: no rhythm there
            self.rhythm.observe(progress.phase, self.last_progress_mono)
        self.refusal.progressed()
        self.last_progress_at = utc_now()
        if self.state == State.STARTING:
            self._transition(State.RUNNING, f"{source}: step {progress.step} ({progress.phase})")
        elif self.last_progress_mono - self.published_mono >= PROGRESS_PUBLISH_INTERVAL:
            self._publish()  # a fast trainer steps many times a second: one fsync'd write a second

    # --- liveness from the log --------------------------------------------------------------

    def _watch_log(self, daemon: DaemonHandle, *, from_now: bool) -> None:
        """Follow this daemon's output: from its start, or (adopted) from what is there now."""
        offset = daemon.log_offset
        if from_now:
            with contextlib.suppress(OSError):
                offset = self.ws.daemon_log.stat().st_size
        regex = compile_step_regex(self.cfg.watchdog.progress_regex)
        self.log_watch = LogLiveness(self.ws.daemon_log, offset, regex)
        self.last_output_mono = None
        self.progress_file_seen = False

    def _log_counts(self) -> bool:
        """Whether new log output shows the trainer alive (see [watchdog] liveness)."""
        mode = self.cfg.watchdog.liveness
        return mode == "log" or (mode in ("auto", "off") and not self.progress_file_seen)

    def _look_at_log(self) -> None:
        """New output since the last look: alive, and maybe a step (`progress_regex`)."""
        if self.daemon is None or self.log_watch is None:
            return
        counts = self._log_counts()
        if not counts and self.log_watch.step_regex is None:
            return
        seen = self.log_watch.look()
        if not seen.grew:
            return
        if counts:
            now = time.monotonic()
            # When it was written, not when we looked: the hang clock runs from the output.
            ago = max(0.0, time.time() - (seen.written_at or time.time()))
            self.last_output_mono = max(self.last_output_mono or 0.0, now - ago)
        last = self.last_progress
        if seen.step is not None and (last is None or seen.step > last.step):
            self._accept_progress(Progress(seen.step, "log"), "log")
        elif counts and self.state == State.STARTING:
            self._transition(State.RUNNING, "output in the daemon log (no progress file yet)")

    def _no_progress_file_advice(self) -> str:
        return (
            f"the trainer never wrote a progress file ({self.cfg.daemon.progress_file}): write "
            'one (README: Progress protocol), or set [watchdog] liveness = "log" (new log '
            'output = alive, with progress_regex to read the step) or "off"'
        )

    def _liveness(self) -> tuple[str, str | None]:
        """What `status` says about how the trainer is known alive, and a warning if due."""
        mode = self.cfg.watchdog.liveness
        if mode == "off":
            return "off: hangs are not detected", None
        if self._log_counts():
            note = None
            if mode == "auto" and self.daemon is not None:
                note = (
                    f"no progress file ({self.cfg.daemon.progress_file}) from this trainer: "
                    "alive = new output in its log; write progress (README: Progress "
                    "protocol) to have hangs seen by step, or set [watchdog] liveness"
                )
            return "log output", note
        return "progress file", None

    def _on_daemon_exit(self, code: int | None) -> None:
        daemon = self.daemon
        assert daemon is not None
        # Its last progress, which its exit may have overtaken in the queue: the step it died
        # at (what recovery and the restart policy judge by) and whether it got going at all.
        self._on_progress()
        self.daemon = None
        how = (
            decode_wait_status(code) if code is not None else "ended (adopted: exit status unknown)"
        )
        log.info("daemon pid %d %s", daemon.pid, how)
        forget_daemon(self.ws, daemon.pid)  # its pid file would soon name a stranger
        saving = self.save_wait_until is not None
        if saving:  # it ended while we waited for its checkpoint, before any signal of ours
            self._forget_save_request()
        # A daemon we spawned is our child, and we are a child subreaper: whenever a process of
        # its tree loses its parent (the daemon dying, a worker double-forking), the kernel
        # re-parents it to its nearest living subreaper ancestor, which is us or a subreaper
        # inside the tree (our descendant too); setsid(), new process groups and daemon(3) do
        # not change that. So every survivor is among our descendants, found without reading
        # every process's environment (~20 ms on a 75-process VM, far more on a busy node).
        # What leaves our tree is a process some other, older process starts on the daemon's
        # behalf (systemd-run, at, ssh localhost, a container runtime): it rarely carries the
        # token, but for one that does the token sweep still runs, at the end of this event's
        # handling (just after the new daemon's fork when the backoff is 0: long before that
        # daemon can have a worker up). An adopted daemon is not our child, so its orphans went
        # to init: for it the sweep runs now, before any restart.
        in_our_tree = daemon.proc is not None and self.subreaper
        self._kill_orphans(daemon.token, "orphaned by the daemon", tree=in_our_tree)
        if self.stopping_for == "operator":
            self.stopping_for = None
            if saving and code != 0:  # it died writing the checkpoint asked for: a crash
                self._record_crash_while_saving(daemon, code, how)
            self._finish(State.STOPPED, f"stopped by the operator; daemon {how}", leave=True)
            return
        if self.stopping_for == "hang":
            self.stopping_for = None
            self._recover(daemon, None, self.hang_reason, hang=True)
            return
        if self.stopping_for == "restart":
            self.stopping_for = None
            self._choose(then="spawn", room=True)
            return
        if code == 0:
            self._finish(State.STOPPED, "daemon finished (exit 0)")
            return
        self._recover(daemon, code, how, hang=False)

    def _record_crash_while_saving(self, daemon: DaemonHandle, code: int | None, how: str) -> None:
        """Diagnosed, recorded and alerted like any crash, but not restarted: the operator
        asked for the stop."""
        d = diagnose_crash(self.ws, self.scanner, code, how, since=daemon.log_offset,
                           oom_before=self.oom_before)  # fmt: skip
        log.error("the daemon died while saving for the stop: %s", d.reason)
        self.last_crash = CrashRecord(at=utc_now(), reason=d.reason, category=d.category,
                                      exit_code=code, evidence=d.evidence[:300],
                                      suggestion=d.suggestion)  # fmt: skip
        self.reporter.crash(d.category, d.reason, d.suggestion, d.evidence, "not restarted: a stop")
        record_crash(self.ws, d, occurrence=_occurrence(daemon), exit_code=code)

    def _recover(self, daemon: DaemonHandle, code: int | None, how: str, *, hang: bool) -> None:
        """Diagnose and record the crash, then have the worker choose the checkpoint (pruning
        when the disk is low); `_decide` restarts or gives up once it has."""
        diagnosis = (
            diagnose_hang(how)
            if hang
            else diagnose_crash(
                self.ws,
                self.scanner,
                code,
                how,
                since=daemon.log_offset,
                oom_before=self.oom_before,
            )
        )
        self.diagnosed = True
        recovery: list[str] = []
        self.unrecorded.append((diagnosis, _occurrence(daemon), code, recovery))
        refused = None
        if not hang and daemon.resumed_from is not None and self.last_progress is None:
            why = self.refusal.judge(
                daemon.resumed_from,
                category=diagnosis.category,
                evidence=diagnosis.evidence,
                last_lines=diagnosis.last_lines,
                killed=diagnosis.killed,
            )
            if why is not None:
                why = f"the trainer could not resume from it ({why}): {diagnosis.reason}"
                refused = (Path(daemon.resumed_from), why)
        died_at = self.last_progress.step if self.last_progress is not None else None
        self.pending_crash = _Crash(
            diagnosis, code, hang, f"{refused[0].name}: {refused[1]}" if refused else None,
            died_at, recovery,
        )  # fmt: skip
        rules = self.cfg.watchdog.recovery
        entry = action_for(rules, diagnosis.category, diagnosis.evidence)
        skip = rules.nan_loss.rewind if entry == "nan_loss" and rules.nan_loss else 0
        prune = entry == "disk_full" and rules.disk_full is not None and rules.disk_full.prune
        # The worker first: it runs while this thread writes the state file (I/O frees the GIL).
        # Not fsync'd: the restart must not wait on a disk busy with a checkpoint write; the
        # state after it (STARTING, or BACKOFF with a delay, or FATAL) is.
        self._choose(then="recover", room=True, refused=refused, skip=skip, prune=prune)
        self._transition(
            State.BACKOFF, f"{diagnosis.reason}; choosing the checkpoint to resume", durable=False
        )

    def _decide(
        self,
        checkpoint: CheckpointInfo | None,
        rewound: tuple[str, ...] = (),
        pruned: int | None = None,
    ) -> None:
        crash, self.pending_crash = self.pending_crash, None
        assert crash is not None
        diagnosis = crash.diagnosis
        step = checkpoint.step if checkpoint is not None else None
        operator, self.start_when_chosen = self.start_when_chosen, False
        if operator:
            # `restart` came while this crash's checkpoint was being chosen: the operator's
            # word, as from FATAL (a fresh restart budget, no backoff), not the policy's.
            self.policy.reset()
            self.refusal.reset()
            acted = self._act_on(crash, checkpoint, rewound, pruned)
            self.last_crash = self._crash_entry(crash, checkpoint)
            if acted.fatal is not None:
                self._recovery_fatal(crash, acted.fatal)
                return
            self._count_restart(self.last_crash)
            log.info("%s; restarting now, as the operator asked", diagnosis.reason)
            self._spawn(checkpoint)
            return
        decision = self.policy.decide(
            # a refused checkpoint is what failed, not the run: the previous one may well work
            retryable=diagnosis.retryable or crash.refused is not None,
            category=diagnosis.category,
            checkpoint_step=step,
            reached_step=crash.died_at,
        )
        applied: Applied | None = None
        if decision.action == "restart":
            applied = self._act_on(crash, checkpoint, rewound, pruned)
        elif rewound or pruned is not None:  # done already: said, though no restart follows
            applied = self._act_on(crash, checkpoint, rewound, pruned, knobs=False)
        entry = self._crash_entry(crash, checkpoint)
        self.last_crash = entry
        if applied is not None and applied.fatal is not None:
            self._recovery_fatal(crash, applied.fatal)
            return
        if decision.action == "give_up":
            self.fatal_reason = f"{decision.reason}; last crash: {diagnosis.reason}"
            advice = diagnosis.suggestion
            if crash.hang and not self.run_progress_file_seen:
                advice = f"{self._no_progress_file_advice()} {advice}"
                self.fatal_reason += f" ({self._no_progress_file_advice()})"
            log.error("FATAL: %s. %s", self.fatal_reason, advice)
            self.reporter.fatal(diagnosis.category, self.fatal_reason, advice)
            self._finish(State.FATAL, self.fatal_reason)
            return
        delay = decision.delay
        if not crash.hang:  # a hang was alerted when it was seen
            then = f"restarting in {delay:g} s from " + (
                checkpoint.path.name if checkpoint is not None else "the start"
            )
            if crash.recovery:
                then += "\nrecovery: " + "\nrecovery: ".join(crash.recovery)
            self.reporter.crash(
                diagnosis.category, diagnosis.reason, diagnosis.suggestion, diagnosis.evidence, then
            )
        self._count_restart(entry)
        if delay == 0:
            # No wait: straight to STARTING, sparing the state file one more fsync'd write.
            log.info("%s; restarting now", diagnosis.reason)
            self._spawn(checkpoint)
            return
        self.restart_at = time.monotonic() + delay
        self._transition(State.BACKOFF, f"{diagnosis.reason}; restarting in {delay:g} s")

    def _act_on(
        self,
        crash: _Crash,
        checkpoint: CheckpointInfo | None,
        rewound: tuple[str, ...],
        pruned: int | None,
        *,
        knobs: bool = True,
    ) -> Applied:
        """The [watchdog.recovery] action for this crash, before its restart (`recovery`)."""
        d = crash.diagnosis
        died = crash.died_at if crash.died_at is not None else (
            checkpoint.step if checkpoint is not None else None
        )  # fmt: skip
        self._ping()  # a GPU survey may take seconds
        # An action that raises is caught there, what it changed kept and said.
        applied = self.actions.apply(
            self.recovery, category=d.category, evidence=d.evidence, step=died,
            rewound=rewound, pruned=pruned, knobs=knobs,
        )  # fmt: skip
        self.recovery = applied.state
        crash.recovery.extend(e.text for e in applied.events)
        if applied.changed and applied.fatal is None:
            self.policy.changed_for_restart(died if died is not None else 0)
        return applied

    def _record_recovery(self, state: RecoveryState) -> None:
        """A knob's change, in the state file before config.json is written (atomic, not
        fsync'd: it must survive this process being killed; the crash's own state follows)."""
        self.recovery = state
        self._publish(durable=False)

    def _recovery_fatal(self, crash: _Crash, reason: str) -> None:
        """An action says a restart cannot help (a floor reached, too few GPUs left)."""
        self.fatal_reason = f"{reason}; last crash: {crash.diagnosis.reason}"
        advice = crash.diagnosis.suggestion
        log.error("FATAL: %s. %s", self.fatal_reason, advice)
        self.reporter.fatal(crash.diagnosis.category, self.fatal_reason, advice)
        self._finish(State.FATAL, self.fatal_reason)

    def _count_restart(self, entry: CrashRecord) -> CrashRecord:
        self.restarts = [*self.restarts, entry][-MAX_RESTARTS_KEPT:]
        self.restart_totals[entry.category] += 1
        return entry

    @staticmethod
    def _crash_entry(crash: _Crash, checkpoint: CheckpointInfo | None) -> CrashRecord:
        """The crash as the state file's `restarts` and `last_crash` hold it."""
        d = crash.diagnosis
        return CrashRecord(
            at=utc_now(),
            reason=d.reason,
            category=d.category,
            exit_code=crash.code,
            evidence=d.evidence[:300],
            suggestion=d.suggestion,
            resume_from=checkpoint.path.name if checkpoint is not None else None,
            quarantined=crash.refused,
            recovery=tuple(crash.recovery),
        )

    def _check_deadlines(self) -> None:
        now = time.monotonic()
        if self.save_wait_until is not None:
            self._check_save_answer()
        if self.restart_at is not None and now >= self.restart_at and self.state == State.BACKOFF:
            self._restart_now()
        tick = self._log_tick()
        if tick is not None and now >= tick:
            self.log_tick_at = now + LOG_TICK
            self._look_at_log()
        hang = self._hang_deadline()
        if hang is not None and now >= hang:
            self._look_at_log()  # output since the last look moves the deadline
            hang = self._hang_deadline()
            if hang is not None and time.monotonic() >= hang:
                self._on_hang()

    def _hang_deadline(self) -> float | None:
        if self.daemon is None or self.state not in (State.STARTING, State.RUNNING):
            return None
        w = self.cfg.watchdog
        if w.liveness == "off":
            return None
        alive = self.last_progress_mono
        output = self.last_output_mono if self._log_counts() else None
        if self.last_progress is None and output is None:
            return alive + w.startup_grace
        if output is not None:
            alive = max(alive, output)
        timeout = self._hang_threshold().seconds
        return None if timeout is None else alive + timeout

    def _hang_threshold(self) -> HangThreshold:
        """How long a silence in the current phase may last: the phase's configured timeout,
        or (`adaptive_timeout`) what the trainer's rhythm taught, within the floor and it."""
        w = self.cfg.watchdog
        phase = self.last_progress.phase if self.last_progress is not None else ""
        configured = w.phase_timeouts.get(phase, w.progress_timeout)
        if configured == 0:
            return HangThreshold(phase, None, False, "no hang detection in this phase")
        if w.liveness == "off":
            return HangThreshold(phase, None, False, "no hang detection (liveness off)")
        if not w.adaptive_timeout:
            return HangThreshold(phase, configured, False, "configured")
        return self.rhythm.threshold(phase, floor=w.progress_timeout_min, ceiling=configured)

    def _log_tick(self) -> float | None:
        """Once a second, while a started daemon has shown no sign of life that the log would
        show (one stat): it turns RUNNING when its first output appears."""
        if (
            self.daemon is None
            or self.state != State.STARTING
            or self.last_output_mono is not None
            or not (self._log_counts() or self.cfg.watchdog.progress_regex)
        ):
            return None
        return self.log_tick_at

    def _on_hang(self) -> None:
        assert self.daemon is not None
        if self.last_output_mono is not None and self._log_counts():
            idle = time.monotonic() - self.last_output_mono
            what = f"no new output in the daemon log for {idle:.0f} s"
        elif self.last_progress is None:
            what = (
                f"no first progress within startup_grace ({self.cfg.watchdog.startup_grace:.0f} s)"
            )
        else:
            p = self.last_progress
            idle = time.monotonic() - self.last_progress_mono
            limit = self._hang_threshold()
            what = (
                f"no progress for {idle:.0f} s at step {p.step} ({p.phase}; threshold "
                f"{limit.seconds:g} s, {limit.why})"
            )
            if limit.learned:  # perhaps a long healthy silence: never killed twice alike
                self.rhythm.hung(p.phase, idle)
        tree = [self.daemon.pid, *(p.pid for p in descendants(self.daemon.pid))]
        frozen = stopped_pids(tree)
        if frozen:
            # SIGSTOP (a debugger, `kill -STOP`, a job-control ^Z): it cannot answer a stack
            # dump, and the SIGTERM that follows reaches it with a SIGCONT.
            whole = "the daemon's whole tree is" if len(frozen) == len(tree) else "processes"
            what += f"; {whole} stopped (SIGSTOP): {frozen}"
        self.hang_reason = f"hang: {what}"
        self._transition(State.HUNG, self.hang_reason)
        pythons = [pid for pid in tree if _is_python(pid)]
        self._ping()
        capture = capture_stacks(
            pythons, timeout=self.cfg.watchdog.hang_dump_timeout, log_path=self.ws.daemon_log
        )
        incidents = self.ws.path("status/incidents")
        try:
            where = str(write_incident(
                incidents,
                kind="hang",
                payload={"reason": self.hang_reason, "pids": tree, "method": capture.method,
                         "details": capture.details, "stacks": capture.text,
                         "stopped": sorted({*frozen, *capture.stopped})},
            ))  # fmt: skip
        except OSError as exc:  # the hung tree is killed and restarted all the same
            log.error("%s; stacks (%s):\n%s", self.hang_reason, capture.method, capture.text)
            where = (
                f"{self.ws.path('logs/watchdog.log')} (no incident file: cannot write in "
                f"{incidents}: {exc.strerror or exc})"
            )
        log.error("%s; stacks (%s) saved to %s", self.hang_reason, capture.method, where)
        self.reporter.hang(self.hang_reason, where)
        self.stopping_for = "hang"
        self._transition(State.STOPPING, "stopping the hung daemon")
        self._stop_tree()

    def _stop_tree(self) -> None:
        assert self.daemon is not None
        d = self.cfg.daemon
        self._ping()
        report = stop_process_tree(
            self.daemon.identity,
            sig=signal.Signals[d.stop_signal],
            timeout=d.stop_timeout,
            token=self.daemon.token,
        )
        if report.killed:
            log.warning(
                "processes %s ignored %s for %.0f s: killed",
                list(report.killed),
                d.stop_signal,
                d.stop_timeout,
            )
        if self.daemon is not None and self.daemon.proc is None and not report.survivors:
            self._on_daemon_exit(None)  # adopted: no SIGCHLD will come
        else:
            self._reap()

    def _kill_orphans(self, token: str, why: str, *, tree: bool) -> None:
        """SIGKILL what a dead daemon left: processes re-parented to us (ours by ancestry, even
        if they scrubbed their environment) and, unless `tree` says our process tree holds them
        all, the processes carrying its token. Nothing else is ours to signal."""
        if tree:
            self.unswept_token = token  # swept by `_handle`, off the restart's critical path
        orphans = orphans_of(token, live=self._live(), exclude=self._helpers(), tree=tree)
        if orphans:
            self._kill(orphans, why)
            # A process that forked between our snapshot and its SIGKILL left that child to us.
            for _ in range(LATE_FORK_ROUNDS):
                late = reparented_to_us(self._live(), self._helpers())
                if not late:
                    break
                self._kill(late, f"{why} (forked while it was being killed)")

    def _live(self) -> set[int]:
        return {self.daemon.pid} if self.daemon is not None else set()

    def _helpers(self) -> set[int]:
        # Read after the caller's snapshot: every alert sender in it is registered by now.
        return set(self.reporter.alert_senders())

    def _record_crashes(self) -> None:
        for diagnosis, occurrence, code, recovery in self.unrecorded:
            record_crash(self.ws, diagnosis, occurrence=occurrence, exit_code=code,
                         recovery=recovery)  # fmt: skip
        self.unrecorded = []

    def _sweep_marked(self, token: str) -> None:
        self.unswept_token = None
        escaped = find_marked(token)
        if escaped:
            self._kill(escaped, "that escaped our process tree, carrying a dead daemon's token")

    def _kill(self, procs: list[psutil.Process], why: str) -> None:
        swept = kill_orphans(procs, timeout=self.cfg.daemon.stop_timeout)
        log.warning(
            "stopped %d processes %s: %s (killed: %s)",
            len(procs),
            why,
            list(swept.names),
            list(swept.report.killed),
        )
        self._reap()

    def _prune(self) -> None:
        self.jobs.prune()  # on a worker thread: its deep checks read every byte

    def _on_pruned(self, event: ev.PruneDone) -> None:
        if event.removed:
            log.info("pruned checkpoints: %s", [p.name for p in event.removed])
        if event.error is not None:
            log.warning("pruning checkpoints: %s", event.error)

    # --- state ------------------------------------------------------------------------------

    def _transition(self, new: State, reason: str, *, durable: bool = True) -> None:
        if self.state is not None and self.state != new:
            check_transition(self.state, new)
        old = self.state.value if self.state else "-"
        self.state = new
        self.state_reason = reason
        log.info("state %s -> %s: %s", old, new.value, reason)
        self._publish(durable=durable)
        if not self.ready_sent and (self.daemon is not None or new in TERMINAL):
            # Ready once the daemon is started (or cannot be): the checkpoint to resume from is
            # chosen first, on a worker thread, which for a huge one can take a while.
            self.ready_sent = True
            self.reporter.ready(self._status_line())
        else:
            self.reporter.status(f"{new.value}: {reason}")

    def _finish(self, state: State, reason: str, *, leave: bool = False) -> None:
        """FATAL or STOPPED: no more restarts. The watchdog stays up to report (an operator's
        `restart` clears it) unless it is leaving, or runs with --exit-when-done."""
        self.choosing = None  # an answer still on its way changes nothing now
        self.pending_crash = None
        self.start_when_chosen = False
        self._transition(state, reason)
        if leave or self.exit_when_done:
            self.exit_code = 0 if state == State.STOPPED else 1

    def _publish(self, *, strict: bool = False, durable: bool = True) -> None:
        """Replace the state file with the current state; with `strict`, a failure raises
        OSError (the caller must not go on without the record), else it is logged. Not
        `durable`: atomic but not fsync'd (`write_bytes_atomic`)."""
        if self.state is None:
            return  # before the first state: nothing true to say yet
        d = self.daemon
        p = self.last_progress
        liveness, note = self._liveness()
        status = WatchdogStatus(
            state=self.state.value,
            watchdog_pid=os.getpid(),
            watchdog=self.me,
            daemon_pid=d.pid if d else None,
            daemon=d.identity if d else None,
            daemon_started_at=d.started_at if d else None,
            owner_token=d.token if d else self.pending_token,
            daemon_log_offset=d.log_offset if d else self.pending_log_offset,
            resumed_from=d.resumed_from if d else None,
            restart_count=sum(self.restart_totals.values()),
            restart_totals=dict(self.restart_totals),
            restarts=tuple(self.restarts),
            last_progress=ProgressMark(p.step, p.phase, self.last_progress_at) if p else None,
            last_crash=self.last_crash,
            fatal_reason=self.fatal_reason,
            restart_requests=self.restart_requests,
            reload_note=self.reload_note,
            state_reason=self.state_reason,
            restart_at=self._restart_at_wall(),
            liveness=liveness,
            liveness_note=note,
            step_rhythm=self.rhythm.longest(),
            hang_threshold=self._hang_threshold() if p is not None else None,
            recovery=self.recovery,
        )
        self.published_mono = time.monotonic()
        self.last_status = status
        try:
            self.last_status = status.write(self.ws.state_file, durable=durable)
        except OSError as exc:
            if strict:
                raise
            log.error("cannot write %s: %s", self.ws.state_file, exc)

    def _restart_at_wall(self) -> str | None:
        """The end of the backoff, as a wall-clock time a person can read."""
        if self.restart_at is None or self.state != State.BACKOFF:
            return None
        left = max(0.0, self.restart_at - time.monotonic())
        when = datetime.now(timezone.utc) + timedelta(seconds=left)
        return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def _ping(self) -> None:
        """WATCHDOG=1 from the loop itself: if it wedges, the pings stop and systemd restarts
        us. Also sent just before each wait that may block the loop for long (stack dump, tree
        stop), so one such wait, not it plus a ping interval, must fit in WatchdogSec."""
        interval = self.reporter.ping_interval
        if interval is not None:
            self.reporter.ping()
            self.next_ping = time.monotonic() + interval

    def _status_line(self) -> str:
        state = self.state.value if self.state else "?"
        daemon = f"daemon pid {self.daemon.pid}" if self.daemon else "no daemon"
        return f"{state}: {daemon}, {len(self.restarts)} restarts"

    def _install_signal_handlers(self) -> None:
        def handle_signal(signum: int, _frame: object) -> None:
            self.events.put(ev.SignalReceived(signum))  # enqueue only: no I/O in a handler

        def handle_sigchld(_signum: int, _frame: object) -> None:
            self.events.put(ev.ChildExited(0, 0))

        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, handle_signal)
        signal.signal(signal.SIGCHLD, handle_sigchld)


def _policy_limits(cfg: Config) -> dict[str, Any]:
    w = cfg.watchdog
    return {
        "max_restarts": w.max_restarts,
        "window": w.restart_window,
        "backoff_base": w.backoff_base,
        "backoff_max": w.backoff_max,
        "reset_after": w.backoff_reset_after,
        "max_without_progress": w.max_restarts_without_progress,
    }


def _release_free_heap() -> None:
    """Hand freed heap pages back to the OS (glibc keeps them otherwise); ~1 ms."""
    trim = getattr(ctypes.CDLL(None), "malloc_trim", None)  # glibc only
    if trim is not None:
        trim(0)


def _occurrence(daemon: DaemonHandle) -> str:
    """One crash, one history record: pid and kernel start time (ticks since boot), so that a
    stepped clock or a second watchdog recording the same daemon's crash makes no second."""
    started = daemon.identity.start_ticks or daemon.identity.create_time
    return f"daemon-watchdog:{daemon.pid}:{started}"


def _stamp(path: Path) -> tuple[int, int, int] | None:
    """Which version of a file this is: inode, mtime, size (an atomic replace changes them)."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_ino, info.st_mtime_ns, info.st_size


def _is_python(pid: int) -> bool:
    try:
        return "python" in psutil.Process(pid).name().lower()
    except psutil.Error:
        return False


__all__ = ["OWNER_ENV", "Supervisor"]
