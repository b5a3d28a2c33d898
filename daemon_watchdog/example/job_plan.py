"""What the example daemon does with an inbox job it owns: refuse it, finish it, or train it.

Decided before any worker starts, so a job that cannot be trained as written is moved to
`inbox/failed/` at once instead of crashing a worker on every restart; and a job whose final
checkpoint is already complete (the daemon died between that checkpoint and the move to
`inbox/done/`) is finished without training it again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from daemon_watchdog.example.inbox import Job
from daemon_watchdog.example.train import Config, JobFileError, load_config
from trainguard.checkpoints import find_candidates, inspect
from trainguard.config import CheckpointsSection

# The worker stages each save and renames it into place, with trainer_state.json inside.
_RULES = CheckpointsSection(required_files=["trainer_state.json"])


@dataclass(frozen=True)
class Plan:
    action: Literal["refuse", "finish", "train"]
    reason: str = ""  # why it is refused
    checkpoint: Path | None = None  # finish: the complete final one; train: where to resume


def plan(base: Path, job: Job) -> Plan:
    """Raises ValueError / OSError when config.json itself is broken: not the job's fault, so it
    stays claimed for the run that follows the fix."""
    try:
        cfg = load_config(base, job.path)
    except JobFileError as exc:
        return Plan("refuse", str(exc))
    newest = _newest_own_checkpoint(cfg, base)
    if newest is None:
        if not cfg.base_model.is_file():
            return Plan("refuse", f"{job.path.name}: base_model: no such file: {cfg.base_model}")
        return Plan("train")
    path, step = newest
    if step >= cfg.total_steps:
        return Plan("finish", checkpoint=path)
    return Plan("train", checkpoint=path)


def _newest_own_checkpoint(cfg: Config, base: Path) -> tuple[Path, int] | None:
    """The newest valid checkpoint of this job (by its trainer_state.json), and its step."""
    for candidate in reversed(find_candidates(cfg.checkpoint_root(base))):
        if candidate.staged:
            continue
        info = inspect(candidate, _RULES)
        if info is None or not info.valid:
            continue  # a newer save that is broken: the worker saves that step again
        try:
            state = json.loads((candidate.path / "trainer_state.json").read_bytes())
        except (OSError, ValueError):
            continue
        step = state.get("global_step") if isinstance(state, dict) else None
        if isinstance(step, int) and state.get("job") == cfg.job and state.get("seed") == cfg.seed:
            return candidate.path, step
    return None
