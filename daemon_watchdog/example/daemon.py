"""The example training daemon: starts the workspace's `train.py` worker and supervises it.

    python -m daemon_watchdog.example.daemon --base-dir DIR [--resume-from CHECKPOINT_DIR]
        [--watch-inbox] [--fault KIND@STEP] [--fault-every-run] [--worker-stop-timeout SECONDS]

Its work, in order (one worker at a time):
1. the workspace's own job, config.json, exactly as without an inbox: `--resume-from` (what the
   watchdog passes: the newest valid `checkpoints/checkpoint-*`) is always this job's, and a run
   resumed from its final checkpoint has nothing left to train;
2. a job in `inbox/claimed/` that no process holds: left by a daemon that died mid-job, resumed
   from the newest valid checkpoint in its own `checkpoints/jobs/<name>/`, or just moved to
   `inbox/done/` when its final checkpoint is already complete;
3. the jobs in `inbox/`, in name order, each claimed by an atomic rename into `inbox/claimed/`,
   trained, and moved to `inbox/done/` once its final checkpoint is complete. A job file is a
   JSON object overriding config.json's knobs (`{"total_steps": 200, "seed": 3}`); one that
   cannot be trained as written goes to `inbox/failed/` with `<name>.reason.txt`.
Then it exits 0: finished, so the watchdog stops (STOPPED) as it always did. With
`--watch-inbox` it waits for more jobs instead, reporting phase `idle` in status/progress.json
(give it `idle = 0` in [watchdog.phase_timeouts], as `daemon-watchdog init` does).

It is shaped like the daemons users run under the watchdog:
- SIGTERM / SIGINT are forwarded to the worker, which stops at its next step boundary; a worker
  that does not stop within `--worker-stop-timeout` is SIGKILLed and the daemon exits 128+signal.
- The daemon mirrors its worker's fate: exit code N -> exit N; killed by signal S -> the daemon
  kills itself with S, so whoever supervises it sees the same death.
- The worker gets no PR_SET_PDEATHSIG: if the daemon is SIGKILLed the worker is orphaned and keeps
  running, as real workers do. Cleaning it up is the supervisor's job.
- Log lines go to stdout with UTC timestamps, flushed per line (a supervisor appends them to a
  log file, together with the worker's output).
- A stop signal between two jobs ends the daemon before the next one (exit 128+signal); a
  worker's failure ends it at once, its job left claimed for the next run to resume.

`--fault KIND@STEP` (exception, segfault, hang, exit:N, cuda_oom, nan) is SIMULATION for tests and
demos, passed to the worker; see train.py. By default a fault fires once per workspace.
"""

from __future__ import annotations

import argparse
import logging
import os
import queue
import resource
import signal
import subprocess
import sys
import threading
import time
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from daemon_watchdog.example.inbox import Inbox, Job
from daemon_watchdog.example.job_plan import plan
from daemon_watchdog.example.train import FAULT_KINDS, JOBS_DIR, parse_fault
from trainguard.progress import write_progress

log = logging.getLogger("daemon")

IDLE_POLL = 1.0  # seconds between looks at an empty inbox under --watch-inbox

# A core dump is useless for a signal the daemon only re-raises to mirror its worker.
_CORE_SIGNALS = {signal.SIGSEGV, signal.SIGABRT, signal.SIGBUS, signal.SIGFPE, signal.SIGILL}


@dataclass(frozen=True)
class Event:
    """What the main loop reacts to: a signal to forward, or the worker's exit."""

    kind: str  # "signal" | "exit"
    value: int  # the signal number | Popen's returncode (negative: killed by that signal)


class EventQueue:
    """Signal handlers and the reaper thread only put events here; `supervise` owns all state."""

    def __init__(self) -> None:
        self.events: queue.SimpleQueue[Event] = queue.SimpleQueue()

    def handle_sigterm(self, signum: int, frame: FrameType | None) -> None:
        self.events.put(Event("signal", signum))

    def handle_sigint(self, signum: int, frame: FrameType | None) -> None:
        self.events.put(Event("signal", signum))

    def reap(self, worker: subprocess.Popen[bytes]) -> None:
        self.events.put(Event("exit", worker.wait()))

    def stop_signal(self, timeout: float = 0.0) -> int | None:
        """A stop signal received while no worker runs (within `timeout` s), if any."""
        try:
            event = self.events.get(timeout=timeout) if timeout > 0 else self.events.get_nowait()
        except queue.Empty:
            return None
        return event.value  # no worker, no reaper: only signals are queued


def supervise(worker: subprocess.Popen[bytes], events: EventQueue, stop_timeout: float) -> int:
    """Forward stop signals until the worker exits; return the daemon's exit code."""
    threading.Thread(target=events.reap, args=(worker,), name="reaper", daemon=True).start()
    stop_signal: int | None = None
    kill_at: float | None = None
    killed = False
    while True:
        timeout = None if kill_at is None else max(0.0, kill_at - time.monotonic())
        try:
            event = events.events.get(timeout=timeout)
        except queue.Empty:
            log.warning(
                "worker pid %d did not stop within %gs: sending SIGKILL", worker.pid, stop_timeout
            )
            worker.kill()
            kill_at, killed = None, True
            continue
        if event.kind == "exit":
            if killed and stop_signal is not None and event.value == -signal.SIGKILL:
                # Our own SIGKILL: report the stop we were asked for, not a death to mirror.
                log.info("worker pid %d killed; exiting %d", worker.pid, 128 + stop_signal)
                return 128 + stop_signal
            return mirror(event.value, worker.pid)
        log.info("received %s: asking worker pid %d to stop", _signal_name(event.value), worker.pid)
        worker.send_signal(event.value)
        if stop_signal is None:
            stop_signal = event.value
            kill_at = time.monotonic() + stop_timeout


def mirror(returncode: int, pid: int) -> int:
    """Exit like the worker did: its code, or death by its signal (128+signal as a fallback)."""
    if returncode >= 0:
        log.info("worker exited with code %d", returncode)
        return returncode
    signum = -returncode
    log.error("worker pid %d terminated by %s", pid, _signal_name(signum))
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    if signum in _CORE_SIGNALS:
        resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))
    with suppress(OSError, ValueError):  # SIGKILL and SIGSTOP cannot be caught: nothing to reset
        signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
    return 128 + signum  # the signal is ignored or blocked: the shell's convention


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m daemon_watchdog.example.daemon",
        description=(
            "Example training daemon: runs DIR/train.py (a NumPy MLP trainer) and supervises it."
        ),
        epilog=(
            "--fault is SIMULATION for tests and demos: KIND is one of "
            f"{', '.join(FAULT_KINDS)}; it fires when the worker is about to run step STEP, once "
            "per workspace (marker status/fault-fired-KIND@STEP) unless --fault-every-run."
        ),
    )
    parser.add_argument("--base-dir", required=True, type=Path, metavar="DIR", help="the workspace")
    parser.add_argument(
        "--resume-from", metavar="CHECKPOINT_DIR", help="continue training from this checkpoint"
    )
    parser.add_argument(
        "--watch-inbox",
        action="store_true",
        help="when inbox/ is empty, wait for more jobs (phase idle) instead of exiting 0",
    )
    parser.add_argument(
        "--fault",
        type=parse_fault,
        metavar="KIND@STEP",
        help="SIMULATION: inject a fault into the worker at step STEP",
    )
    parser.add_argument(
        "--fault-every-run",
        action="store_true",
        help="SIMULATION: fire the fault on every run, not once per workspace (a crash loop)",
    )
    parser.add_argument(
        "--worker-stop-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="after a stop signal, SIGKILL a worker that has not exited by then (default: 10)",
    )
    return parser


def _setup_logging() -> None:
    handler = logging.StreamHandler(sys.stdout)  # flushes after every record
    formatter = logging.Formatter(
        "%(asctime)s.%(msecs)03dZ daemon[%(process)d] %(message)s", "%Y-%m-%dT%H:%M:%S"
    )
    formatter.converter = time.gmtime
    handler.setFormatter(formatter)
    log.addHandler(handler)
    log.setLevel(logging.INFO)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging()
    base: Path = args.base_dir
    script = base / "train.py"
    if not script.is_file():
        log.error("%s: No such file or directory (seed the workspace first)", script)
        return 1
    events = EventQueue()
    # Handlers first: a stop request that arrives while the worker starts is queued, not lost.
    signal.signal(signal.SIGTERM, events.handle_sigterm)
    signal.signal(signal.SIGINT, events.handle_sigint)

    code = run_worker(args, events, resume_from=args.resume_from)  # config.json's job
    if code != 0:
        return code
    return serve_inbox(args, events)


def run_worker(
    args: argparse.Namespace,
    events: EventQueue,
    *,
    resume_from: str | Path | None = None,
    job: Job | None = None,
) -> int:
    """Run one train.py worker to its end: config.json's job, or the inbox `job`."""
    base: Path = args.base_dir
    command = [sys.executable, str(base / "train.py"), "--base-dir", str(base)]
    if job is not None:
        command += ["--job", str(job.path)]
    if resume_from is not None:
        command += ["--resume-from", str(resume_from)]
    if args.fault is not None:
        command += ["--fault", args.fault.spec]
    if args.fault_every_run:
        command.append("--fault-every-run")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # keep worker lines in order in a shared log
    # The worker inherits the job's lock: if this daemon dies, its orphaned worker still holds
    # the job, and no other daemon resumes it while that worker trains.
    held = (job.fd,) if job is not None else ()
    worker = subprocess.Popen(command, env=env, pass_fds=held)
    log.info("started worker pid %d: %s", worker.pid, " ".join(command))
    return supervise(worker, events, args.worker_stop_timeout)


def serve_inbox(args: argparse.Namespace, events: EventQueue) -> int:
    """Work through inbox/ until nothing is left (exit 0) or a stop signal (128+signal)."""
    base: Path = args.base_dir
    inbox = Inbox(base / "inbox", base / "checkpoints" / JOBS_DIR)
    idle = False
    while True:
        signum = events.stop_signal()
        if signum is not None:
            log.info("received %s: stopping before the next job", _signal_name(signum))
            return 128 + signum
        job, refused = inbox.next_job()
        for line in refused:
            log.error("refused %s (moved to inbox/failed/)", line)
        if job is None:
            if not args.watch_inbox:
                return 0
            if not idle:
                # A phase of its own: [watchdog.phase_timeouts] idle = 0 is never a hang.
                write_progress(base / "status" / "progress.json", 0, "idle")
                log.info("inbox/ is empty: waiting for jobs (--watch-inbox)")
                idle = True
            signum = events.stop_signal(IDLE_POLL)
            if signum is not None:
                log.info("received %s while idle: exiting", _signal_name(signum))
                return 128 + signum
            continue
        idle = False
        try:
            code = work_on(job, inbox, args, events)
        finally:
            job.release()
        if code != 0:
            return code


def work_on(job: Job, inbox: Inbox, args: argparse.Namespace, events: EventQueue) -> int:
    """Refuse, finish or train one owned job; the daemon's exit code if it must stop, else 0."""
    how = "left claimed by an earlier run" if job.adopted else "claimed"
    log.info("job %s: %s (%s)", job.name, how, job.path)
    try:
        chosen = plan(args.base_dir, job)
    except (OSError, ValueError) as exc:  # config.json itself: the job stays claimed
        log.error("job %s: cannot read the workspace's config: %s", job.name, exc)
        return 1
    if chosen.action == "refuse":
        where = inbox.fail(job, chosen.reason)
        shown = "; ".join(chosen.reason.splitlines())  # one log line: the file keeps them all
        log.error("job %s: refused, moved to %s: %s", job.name, where, shown)
        return 0
    if chosen.action == "finish":
        log.info(
            "job %s: its final %s is already complete: not training it again",
            job.name,
            chosen.checkpoint,
        )
    else:
        code = run_worker(args, events, resume_from=chosen.checkpoint, job=job)
        if code != 0:
            return code
    # Only now: the worker has renamed the final checkpoint into place before exiting 0.
    where = inbox.finish(job)
    log.info("job %s: done, moved to %s", job.name, where)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
