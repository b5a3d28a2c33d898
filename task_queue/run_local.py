"""`task-queue run --backend local`: the slots of this machine, wired to the manager loop."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from crash_detector.rules import load_rules
from crash_detector.scanner import Scanner
from task_queue.backends.local import (
    AfterAttempt,
    LocalBackend,
    plan_slots,
    visible_gpus,
    whole_machine,
)
from task_queue.ledger import Ledger, Task
from task_queue.manager import Manager
from task_queue.preflight import StepFiles, runner_preflight
from trainguard.config import Config
from trainguard.host import this_host


def run_local(
    ledger: Ledger,
    cfg: Config,
    *,
    slots: str | int,
    until_done: bool,
    on_change: Callable[[int], None] | None = None,
    say: Callable[[str], None] | None = None,
    one_worker: bool = False,
    step_files: Callable[[Task], StepFiles | None] | None = None,
    nodes: Sequence[str] = (),
    nvml: Any | None = None,
) -> int:
    """Run the ledger's tasks on this machine's GPU slots (`slots`), or with `one_worker` on a
    single worker that sees every GPU not excluded (the pipeline's phases). Before each task,
    preflight (with `step_files`, the task's own files; `nodes`, ssh targets besides
    [preflight] nodes); after each, GPU cleanup and [queue] post_task. `nvml`: a pynvml-like
    module (None: import pynvml)."""
    host = this_host()
    excluded = cfg.excluded_gpus(host)
    visible = visible_gpus(os.environ, _nvml_count())
    if one_worker:
        planned = [whole_machine(host=host, visible=visible, excluded=excluded)]
    else:
        planned = plan_slots(slots, host=host, visible=visible, excluded=excluded)
    after = AfterAttempt(
        post_task=tuple(cfg.queue.post_task),
        post_task_timeout=cfg.queue.post_task_timeout,
        nvml=nvml,
        health=cfg.health,
    )
    backend = LocalBackend(planned, Path(ledger.path).parent / "logs", after)
    say = say or _say
    if not one_worker:
        workers = ", ".join(
            f"{s.name} (GPU {s.visible})" if s.gpus else f"{s.name} (no GPU)" for s in planned
        )
        say(f"task-queue: ledger {ledger.path}; workers: {workers}")
    manager = Manager(
        ledger,
        backend,
        host=host,
        scanner=lambda: Scanner(load_rules()),
        until_done=until_done,
        say=say,
        on_change=on_change,
        preflight=runner_preflight(cfg, Path(ledger.path), nodes=nodes, nvml=nvml),
        step_files=step_files,
        exclude_gpu_on=cfg.queue.exclude_gpu_on,
    )
    return manager.run()


def _say(line: str) -> None:
    print(line, flush=True)


def _nvml_count() -> int | None:
    """NVIDIA GPUs NVML counts; None without the library or a driver."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:
        return None
    try:
        return int(pynvml.nvmlDeviceGetCount())
    finally:
        pynvml.nvmlShutdown()
