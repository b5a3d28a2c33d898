"""`phase-pipeline run`: the phases of a PIPELINE.toml, one at a time, each a task of the
task-queue engine's local backend (its own session, orphans killed, its timeout, its crash
classified), with `.experiment_state` written after every transition.

The state file says what each phase's status is (a person may edit it between runs); the
ledger (`RUN_DIR/ledger.db`) keeps every attempt. Each run of a phase is a new task of the
ledger, so its command is built from the state as it is then (the checkpoint it records).
"""

from __future__ import annotations

import glob
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any, Literal

from phase_pipeline.pipeline_file import Phase, Pipeline
from phase_pipeline.plan import blocked_by, next_phase, plan, statuses_for, wanted, with_checkpoint
from phase_pipeline.recovery_text import (
    PhaseFailure,
    failure_block,
    plan_lines,
    resume_command,
    shown,
    stopped_block,
)
from phase_pipeline.state_file import (
    STATE_FILE,
    PipelineState,
    read_state,
    state_file_of,
    write_state,
)
from task_queue.backends.local import whole_machine
from task_queue.ledger import Ledger, Task, TaskSpec, runner_lock
from task_queue.manager import NO_WORKER, recover_left
from task_queue.run_local import run_local
from task_queue.step_preflight import check_step_files
from trainguard import exitcodes
from trainguard.config import Config
from trainguard.errors import UsageError
from trainguard.host import this_host
from trainguard.timestamps import utc_now_iso

LEDGER = "ledger.db"
LOGS = "logs"
PREFLIGHT_REFUSED = 69  # EX_UNAVAILABLE
NO_TIMEOUT = 10 * 365 * 86400.0  # `timeout = 0`: none (ten years)
STAGED_PREFIX = "tmp-"  # a checkpoint being written, then renamed: never recorded

Outcome = Literal["completed", "failed", "refused", "interrupted"]


@dataclass(frozen=True)
class Options:
    out: Path | None  # where new run dirs go (default: runs/ beside PIPELINE.toml)
    resume: Path | None  # a state file
    only: tuple[str, ...]  # --phase
    checkpoint: Path | None
    dry_run: bool
    config_path: Path | None  # -c, repeated in the resume command


@dataclass(frozen=True)
class PhaseResult:
    outcome: Outcome
    failure: PhaseFailure | None = None
    refusal: str | None = None


def run_pipeline(pipeline: Pipeline, cfg: Config, opts: Options, say: Callable[[str], None]) -> int:
    if opts.checkpoint is not None and not opts.checkpoint.exists():
        raise UsageError(f"--checkpoint {opts.checkpoint}: no such file or folder")
    if opts.resume is not None:
        state_path = state_file_of(opts.resume).resolve()
        state = read_state(state_path, pipeline.names)
        if state.name and state.name != pipeline.name:
            raise UsageError(
                f"--resume {opts.resume}: that run is of pipeline {state.name!r} "
                f"({state.pipeline_file or '?'}), not {pipeline.name!r}"
            )
        # The run dir is where its state file is, even if the folder was moved since.
        state = replace(state, base_output_dir=str(state_path.parent))
    else:
        run_dir = _new_run_dir(pipeline, opts.out, create=False)
        state_path = run_dir / STATE_FILE
        state = PipelineState(
            name=pipeline.name,
            pipeline_file=str(pipeline.path),
            version=pipeline.version,
            start_time=int(time.time()),
            base_output_dir=str(run_dir),
            phases={},
        )
    statuses = statuses_for(pipeline, state.phases)
    if opts.checkpoint is not None:
        statuses = with_checkpoint(pipeline, statuses)
        state = replace(state, checkpoint_path=str(opts.checkpoint.resolve()))
    state = replace(state, phases=statuses)
    want = wanted(pipeline, statuses, opts.only)  # refuses a --phase whose needs are not done
    if opts.dry_run:
        return _print_plan(pipeline, state, state_path, opts, say)
    if opts.resume is None:
        run_dir = _new_run_dir(pipeline, opts.out, create=True)
        state_path = run_dir / STATE_FILE
        state = replace(state, base_output_dir=str(run_dir))
    runner = _Runner(pipeline, cfg, state, state_path, opts, say)
    return runner.run(want)


def _new_run_dir(pipeline: Pipeline, out: Path | None, *, create: bool) -> Path:
    base = (out if out is not None else pipeline.folder / "runs").resolve()
    stamp = datetime.now().strftime("%Y%m%d_%H%M%S")
    candidate = base / f"{pipeline.name}_{stamp}"
    if not create:
        return candidate
    base.mkdir(parents=True, exist_ok=True)
    for number in range(2, 1000):
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:  # two runs started in the same second
            candidate = base / f"{pipeline.name}_{stamp}_{number}"
    raise UsageError(f"{base}: cannot make a new run folder for {pipeline.name}")


def _print_plan(
    pipeline: Pipeline,
    state: PipelineState,
    state_path: Path,
    opts: Options,
    say: Callable[[str], None],
) -> int:
    steps = plan(pipeline, state.phases, opts.only)
    where = "resuming" if opts.resume is not None else "a new run"
    say(f"pipeline {pipeline.name}: {len(steps)} phases; {where}; state {shown(state_path)}")
    for line, step in zip(plan_lines(steps), steps, strict=True):
        command = ""
        if step.action == "run":
            argv = _argv(
                pipeline.phase(step.phase),
                pipeline,
                Path(state.base_output_dir),
                state.checkpoint_path or "<the checkpoint its dependency records>",
            )
            command = "\n        " + " ".join(argv)  # fmt: skip
        say(line + command)
    count = sum(1 for s in steps if s.action == "run")
    say(f"{count} would run; nothing was started (--dry-run)")
    return exitcodes.OK


def _argv(phase: Phase, pipeline: Pipeline, run_dir: Path, checkpoint: str) -> list[str]:
    fill = {"python": sys.executable, "run_dir": str(run_dir), "checkpoint": checkpoint}
    return [arg.format(**fill) for arg in phase.command]


class _Runner:
    def __init__(
        self,
        pipeline: Pipeline,
        cfg: Config,
        state: PipelineState,
        state_path: Path,
        opts: Options,
        say: Callable[[str], None],
    ) -> None:
        self.pipeline = pipeline
        self.cfg = cfg
        self.state = state
        self.state_path = state_path
        self.run_dir = state_path.parent
        self.opts = opts
        self.say = say
        self.signalled: int | None = None  # SIGINT/SIGTERM between phases
        self.ledger: Ledger | None = None

    def _save(self, state: PipelineState) -> None:
        self.state = state
        write_state(self.state_path, state)

    def run(self, want: Sequence[str]) -> int:
        previous = self._install_signal_handlers()
        ledger_path = self.run_dir / LEDGER
        try:
            with Ledger.open(ledger_path, create=True) as ledger, runner_lock(ledger_path):
                self.ledger = ledger
                self._save(self.state)  # the edits honoured, --checkpoint recorded
                recover_left(ledger, self.say)  # a runner killed with its phase: stop it
                stale = [t.id for t in ledger.tasks(status="pending")]
                if stale:  # superseded: this run submits what the state file says to run
                    ledger.cancel(stale)
                return self._phases(want)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _install_signal_handlers(self) -> dict[int, Any]:
        def handle(signum: int, _frame: FrameType | None) -> None:
            self.signalled = signum  # between phases: the loop stops before the next one

        return {s: signal.signal(s, handle) for s in (signal.SIGINT, signal.SIGTERM)}

    def _phases(self, want: Sequence[str]) -> int:
        pipeline = self.pipeline
        self.say(f"pipeline {pipeline.name}: run dir {shown(self.run_dir)}")
        for line in plan_lines(plan(pipeline, self.state.phases, self.opts.only)):
            self.say(line)
        tried: list[str] = []
        failures: list[PhaseFailure] = []
        while True:
            if self.signalled is not None:
                return self._interrupted(None, self.signalled)
            name = next_phase(pipeline, self.state.phases, want, tried)
            if name is None:
                break
            tried.append(name)
            result = self._run_phase(pipeline.phase(name))
            if result.outcome == "interrupted":
                return self._interrupted(name, self.signalled)
            if result.outcome == "refused":
                return self._refused(name, result.refusal or "")
            if result.failure is not None:
                failures.append(result.failure)
        blocked = []
        for name in want:
            if name in tried:
                continue
            waits_for = blocked_by(pipeline, self.state.phases, name) or "?"
            blocked.append((name, waits_for))
            if self.state.phases[name] == "in_progress":  # nothing runs it now
                self._save(self.state.with_phase(name, "pending"))
        if not failures:
            done = ", ".join(tried) or "nothing to run"
            self.say(f"pipeline {pipeline.name}: all completed ({done})")
            return exitcodes.OK
        self.say(failure_block(
            failures, blocked, state_file=self.state_path, command=self._resume_command(),
            resume_plan=plan(pipeline, self.state.phases),
        ))  # fmt: skip
        return exitcodes.FAILURE

    def _resume_command(self) -> str:
        return resume_command(self.pipeline.path, self.state_path, self.opts.config_path)

    # --- one phase ----------------------------------------------------------------------

    def _run_phase(self, phase: Phase) -> PhaseResult:
        assert self.ledger is not None
        ledger = self.ledger
        refusal = self._preflight(phase)
        checkpoint = self._checkpoint()
        argv = _argv(phase, self.pipeline, self.run_dir, str(checkpoint or ""))
        log_file = self.run_dir / LOGS / f"{phase.name}.log"
        log_file.parent.mkdir(parents=True, exist_ok=True)
        env = {"TRAINGUARD_RUN_DIR": str(self.run_dir), "TRAINGUARD_PHASE": phase.name}
        if checkpoint is not None:
            env["TRAINGUARD_CHECKPOINT"] = str(checkpoint)
        [task_id] = ledger.submit([TaskSpec(
            argv=tuple(argv),
            cwd=str(self.pipeline.folder),
            name=phase.name,
            gpus=1,
            max_retries=1,  # a failed phase stops; the operator fixes the cause and resumes
            timeout=phase.timeout or NO_TIMEOUT,
            env=env,
            log_file=str(log_file),
        )])  # fmt: skip
        if refusal is not None:
            worker = whole_machine(host=this_host(), visible=(), excluded=()).name
            ledger.refuse(task_id, worker=worker, host=this_host(), error=refusal)
            return PhaseResult("refused", refusal=refusal)
        self._save(self.state.with_phase(phase.name, "in_progress"))
        self.say(f"phase {phase.name}: started; output in {shown(log_file)}")
        started = time.monotonic()
        code = run_local(
            ledger, self.cfg, slots=1, until_done=True, say=self._engine_line, one_worker=True
        )
        took = _took(time.monotonic() - started)
        task = ledger.task(task_id)
        if code == NO_WORKER and task is not None and task.status == "pending":
            # Preflight refused it before it started (a node unreachable, the disk full, its
            # GPU unhealthy): nothing ran; the resume runs it.
            last = task.attempts[-1] if task.attempts else None
            why = last.error if last is not None and last.error else "no worker could take it"
            ledger.cancel([task_id])
            self._save(self.state.with_phase(phase.name, "pending"))
            return PhaseResult("refused", refusal=why)
        interrupted = code == exitcodes.INTERRUPTED
        if task is None or (interrupted and task.status != "done"):
            # Stopped part-way: not failed, not done; the resume runs it again.
            self._save(self.state.with_phase(phase.name, "pending"))
            return PhaseResult("interrupted")
        result = self._judge(phase, task_id, task, log_file, took)
        return PhaseResult("interrupted") if interrupted else result

    def _judge(
        self, phase: Phase, task_id: int, task: Task, log_file: Path, took: str
    ) -> PhaseResult:
        """How the phase's attempt ended, its outputs looked at: its status saved."""
        assert self.ledger is not None
        if task.status == "done":
            missing = self._missing(phase)
            if not missing:
                found = self._provided(phase)
                state = self.state.with_phase(phase.name, "completed")
                if found is not None:
                    state = replace(state, checkpoint_path=str(found))
                    self.say(f"phase {phase.name}: checkpoint {shown(found)}")
                self._save(state)
                self.say(f"phase {phase.name}: completed in {took}")
                return PhaseResult("completed")
            error = f"exited 0 but {missing}"
            self.ledger.fail_done(task_id, category="missing_outputs", error=error)
            return self._failed(phase, error, "missing_outputs", log_file, took)
        last = task.attempts[-1] if task.attempts else None
        error = (last.error if last else None) or f"ended {task.status}"
        return self._failed(phase, error, last.category if last else None, log_file, took)

    def _failed(
        self, phase: Phase, error: str, category: str | None, log_file: Path, took: str
    ) -> PhaseResult:
        self._save(self.state.failed(phase.name, utc_now_iso("seconds")))
        kind = f" [{category}]" if category else ""
        self.say(f"phase {phase.name}: FAILED after {took}{kind}: {error}")
        dependants = self.pipeline.dependants(phase.name)
        if dependants:
            self.say(f"phase {phase.name}: not running what depends on it: {', '.join(dependants)}")
        return PhaseResult("failed", PhaseFailure(phase.name, error, category, log_file))

    def _engine_line(self, line: str) -> None:
        if not line.startswith("all settled:"):  # the ledger's totals: not this phase's
            self.say(f"  {line}")

    def _preflight(self, phase: Phase) -> str | None:
        """Why the phase cannot start now (its files, its checkpoint), or None."""
        result = check_step_files(self.pipeline.folder, phase.inputs, phase.ramdisk)
        for warning in result.warnings:
            self.say(f"phase {phase.name}: preflight warning: {warning}")
        if result.checked:
            verdict = "passed" if result.passed else "REFUSED"
            self.say(f"phase {phase.name}: preflight {verdict} ({result.checked} file entries)")
        if not result.passed:
            return result.refusals[0]
        if phase.uses_checkpoint:
            checkpoint = self._checkpoint()
            if checkpoint is None:
                return (
                    "{checkpoint}: no checkpoint is recorded: run the phase that provides one, "
                    "or pass --checkpoint PATH"
                )
            if not checkpoint.exists():
                return (
                    f"{{checkpoint}}: {checkpoint} does not exist: fix [checkpoints] "
                    f"checkpoint_path in {shown(self.state_path)}, or pass --checkpoint PATH"
                )
        return None

    def _checkpoint(self) -> Path | None:
        """The recorded checkpoint; a relative one (a hand edit) is below the pipeline's folder."""
        recorded = self.state.checkpoint_path
        return self.pipeline.folder / recorded if recorded else None

    def _missing(self, phase: Phase) -> str | None:
        """What the phase should have left in the run dir and did not, said in one line."""
        absent = [entry for entry in phase.outputs if not _matches(self.run_dir, entry)]
        if absent:
            return f"its outputs are missing: {', '.join(absent)} (outputs in PIPELINE.toml)"
        if phase.provides_checkpoint and self._provided(phase) is None:
            return f"no checkpoint matches {phase.provides_checkpoint} (provides_checkpoint)"
        return None

    def _provided(self, phase: Phase) -> Path | None:
        """The newest checkpoint the phase's `provides_checkpoint` matches (not a staged one)."""
        if not phase.provides_checkpoint:
            return None
        found = [
            path for path in _matches(self.run_dir, phase.provides_checkpoint)
            if not path.name.startswith(STAGED_PREFIX)
        ]  # fmt: skip
        return max(found, key=_mtime, default=None)

    # --- stopping short -----------------------------------------------------------------

    def _interrupted(self, phase: str | None, signum: int | None) -> int:
        name = signal.Signals(signum).name if signum else "SIGINT/SIGTERM"
        during = f"during phase {phase}" if phase else "between phases"
        self.say(stopped_block(
            f"INTERRUPTED by {name} {during}: its phase was stopped; nothing is lost.",
            state_file=self.state_path, command=self._resume_command(),
            resume_plan=plan(self.pipeline, self.state.phases),
        ))  # fmt: skip
        return exitcodes.INTERRUPTED

    def _refused(self, phase: str, refusal: str) -> int:
        self.say(stopped_block(
            f"PREFLIGHT REFUSED phase {phase} (nothing was started): {refusal}",
            state_file=self.state_path, command=self._resume_command(),
            resume_plan=plan(self.pipeline, self.state.phases),
        ))  # fmt: skip
        return PREFLIGHT_REFUSED


def _matches(run_dir: Path, entry: str) -> list[Path]:
    path = run_dir / entry  # an absolute entry stays absolute
    if os.path.exists(path):
        return [path]
    if not any(char in entry for char in "*?["):
        return []
    return [Path(p) for p in glob.glob(str(path))]


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _took(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{int(seconds) // 60} min {int(seconds) % 60} s"
    return f"{int(seconds) // 3600} h {int(seconds) % 3600 // 60} min"
