"""`study-runner run` and `resume`: the grid becomes tasks of the task-queue engine, one ledger
per study (`OUT/ledger.db`), each experiment a child process in its own folder."""

from __future__ import annotations

import fnmatch
import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from study_runner.display import Display
from study_runner.experiment_dir import OUTPUT_LOG, phase_of, write_state
from study_runner.grid import Experiment, expand
from study_runner.study_file import Study, load_study
from task_queue.ledger import Ledger, Task, TaskSpec, runner_lock
from task_queue.preflight import StepFiles
from trainguard import exitcodes
from trainguard.atomicio import read_json, write_json_atomic
from trainguard.config import Config
from trainguard.errors import TrainguardError

STUDY_RECORD = "study.json"  # in OUT: which STUDY.toml made it, for `resume DIR`
LEDGER = "ledger.db"


@dataclass(frozen=True)
class Step:
    experiment: Experiment
    action: str  # "run" | "skip"
    why: str


def out_dir(study: Study, out: Path | None) -> Path:
    return (out if out is not None else study.folder / study.name).resolve()


def study_of(out: Path) -> Study:
    """The study an OUT folder was made by (`resume DIR`, `status DIR`)."""
    try:
        record = read_json(out / STUDY_RECORD)
        path = Path(record["study_file"])
    except (OSError, ValueError, KeyError, TypeError):
        raise TrainguardError(f"{out}: not a study folder (no readable {STUDY_RECORD})") from None
    return load_study(path)


def plan(experiments: list[Experiment], tasks: dict[str, Task], *, force: str | None) -> list[Step]:
    """What `run` does with each experiment, and why (`--dry-run` prints it)."""
    steps = []
    for exp in experiments:
        task = tasks.get(exp.name)
        forced = force is not None and fnmatch.fnmatchcase(exp.name, force)
        if task is None:
            steps.append(Step(exp, "run", "new"))
            continue
        phase = phase_of(task)
        if phase == "completed":
            steps.append(Step(exp, "run", "completed, forced") if forced
                         else Step(exp, "skip", "completed"))  # fmt: skip
        elif phase == "failed":
            steps.append(Step(exp, "run", "failed before"))
        else:
            steps.append(Step(exp, "run", phase))
    return steps


def run_study(
    study: Study,
    out: Path,
    cfg: Config,
    *,
    force: str | None,
    dry_run: bool,
    backend: str,
    scheduler: str,
    slots: str | int,
    display: Display,
) -> int:
    say = display.say
    experiments = expand(study, out)
    ledger_path = out / LEDGER
    if dry_run and not ledger_path.exists():
        tasks: dict[str, Task] = {}
        return _print_plan(study, out, plan(experiments, tasks, force=force), say)
    out.mkdir(parents=True, exist_ok=True)
    with Ledger.open(ledger_path, create=True) as ledger, runner_lock(ledger_path):
        tasks = {task.name: task for task in ledger.tasks()}
        steps = plan(experiments, tasks, force=force)
        if dry_run:
            return _print_plan(study, out, steps, say)
        write_json_atomic(out / STUDY_RECORD, {"study_file": str(study.path), "name": study.name})
        _submit(ledger, study, out, cfg, steps, tasks)
        wanted = {exp.name for exp in experiments}
        gone = [t.id for t in ledger.tasks() if t.name not in wanted and t.status == "pending"]
        if gone:  # experiments the grid no longer has: not run
            ledger.cancel(gone)
        by_id = {t.id: t for t in ledger.tasks()}
        by_name = {exp.name: exp for exp in experiments}
        for task in by_id.values():
            if task.name in by_name:
                write_state(out / task.name, by_name[task.name], task)
        progress = _Progress(ledger, by_name, out, display.progress)
        say(progress.line(prefix=f"study {study.name}: {len(experiments)} experiments in {out}:"))
        code = _run_manager(ledger, cfg, backend, scheduler, slots, progress.changed, say,
                            study, by_name)  # fmt: skip
        for task in ledger.tasks():
            if task.name in by_name:
                write_state(out / task.name, by_name[task.name], task)
        say(progress.line(prefix="done:"))
        counts = progress.counts()
    if code == exitcodes.INTERRUPTED:
        return code
    if code not in (exitcodes.OK, exitcodes.FAILURE):
        return code  # 69: no worker could take them; 75: the ledger is held
    return exitcodes.FAILURE if counts["failed"] else exitcodes.OK


def _submit(
    ledger: Ledger,
    study: Study,
    out: Path,
    cfg: Config,
    steps: list[Step],
    tasks: dict[str, Task],
) -> None:
    new: list[TaskSpec] = []
    again: list[int] = []
    for step in steps:
        if step.action != "run":
            continue
        task = tasks.get(step.experiment.name)
        if task is None:
            folder = out / step.experiment.name
            new.append(
                TaskSpec(
                    argv=step.experiment.argv,
                    cwd=str(study.folder),
                    name=step.experiment.name,
                    gpus=1,
                    max_retries=study.max_retries + 1,  # attempts: the first and the retries
                    timeout=cfg.queue.task_timeout,
                    env={"TRAINGUARD_EXPERIMENT_DIR": str(folder)},
                    log_file=str(folder / OUTPUT_LOG),
                )
            )
        elif task.status in ("done", "failed", "cancelled"):
            again.append(task.id)
    if new:
        for spec in new:
            Path(spec.env["TRAINGUARD_EXPERIMENT_DIR"]).mkdir(parents=True, exist_ok=True)
        ledger.submit(new)
    if again:
        ledger.retry(again, statuses=("done", "failed", "cancelled"))


def _run_manager(
    ledger: Ledger,
    cfg: Config,
    backend: str,
    scheduler: str,
    slots: str | int,
    on_change: Callable[[int], None],
    say: Callable[[str], None],
    study: Study,
    experiments: dict[str, Experiment],
) -> int:
    def step_files(task: Task) -> StepFiles | None:
        exp = experiments.get(task.name)
        if exp is None or not (exp.inputs or exp.ramdisk):
            return None
        return StepFiles(study.folder, exp.inputs, exp.ramdisk)

    nodes = study.preflight.nodes
    if backend == "dask":
        from task_queue.run_dask import run_dask

        return run_dask(ledger, cfg, scheduler=scheduler, slots=slots, until_done=True,
                        on_change=on_change, say=say, step_files=step_files,
                        nodes=nodes)  # fmt: skip
    from task_queue.run_local import run_local

    return run_local(ledger, cfg, slots=slots, until_done=True, on_change=on_change, say=say,
                     step_files=step_files, nodes=nodes)  # fmt: skip


class _Progress:
    """Keeps each experiment's state.json current and says how far the study is."""

    def __init__(
        self,
        ledger: Ledger,
        experiments: dict[str, Experiment],
        out: Path,
        say: Callable[[str], None],
    ) -> None:
        self.ledger = ledger
        self.experiments = experiments
        self.out = out
        self.say = say
        self.started = time.monotonic()
        self.finished_here = 0

    def changed(self, task_id: int) -> None:
        task = self.ledger.task(task_id)
        if task is None or task.name not in self.experiments:
            return
        write_state(self.out / task.name, self.experiments[task.name], task)
        if task.status in ("done", "failed"):
            self.finished_here += 1
            self.say(self.line(prefix="progress:"))

    def counts(self) -> Counter[str]:
        found: Counter[str] = Counter()
        for task in self.ledger.tasks():
            if task.name in self.experiments:
                found[phase_of(task)] += 1
        return found

    def line(self, *, prefix: str) -> str:
        counts = self.counts()
        parts = [f"{counts[p]} {p}" for p in ("completed", "failed", "running", "pending")]
        if counts["interrupted"]:
            parts.append(f"{counts['interrupted']} interrupted")
        left = counts["running"] + counts["pending"] + counts["interrupted"]
        eta = ""
        if self.finished_here and left:
            per = (time.monotonic() - self.started) / self.finished_here
            eta = f"; ETA {_duration(per * left)}"
        return f"{prefix} {', '.join(parts)}{eta}"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _print_plan(study: Study, out: Path, steps: list[Step], say: Callable[[str], None]) -> int:
    runs = sum(1 for s in steps if s.action == "run")
    say(f"study {study.name}: {len(steps)} experiments in {out}; {runs} would run")
    for step in steps:
        say(f"  {step.action:<4} {step.experiment.name}  ({step.why}): "
            f"{json.dumps(list(step.experiment.argv))}")  # fmt: skip
    return exitcodes.OK
