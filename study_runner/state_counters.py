"""The executor's two counters in an experiment's state.json, a file the study runner owns.

Only `predictions_complete` and `total_questions` are ours: the file is read, those two keys
set, and the whole written back atomically, so every other key the runner keeps stays. A
problem with it is a warning, never the end of a run whose predictions are safe elsewhere.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

from trainguard.atomicio import read_json, write_json_atomic

log = logging.getLogger("study_runner")

EXPERIMENT_DIR_ENV = "TRAINGUARD_EXPERIMENT_DIR"
STATE_FILE = "state.json"


def experiment_dir(env: Mapping[str, str] = os.environ) -> Path | None:
    folder = env.get(EXPERIMENT_DIR_ENV)
    return Path(folder) if folder else None


def state_file(env: Mapping[str, str] = os.environ) -> Path | None:
    """state.json of the experiment this process runs under study-runner, if it has one."""
    folder = experiment_dir(env)
    path = None if folder is None else folder / STATE_FILE
    return path if path is not None and path.is_file() else None


def write_counters(path: Path, *, complete: int, total: int) -> None:
    try:
        state = read_json(path)
    except (OSError, ValueError) as exc:
        log.warning("%s: not updated, cannot read it: %s", path, exc)
        return
    if not isinstance(state, dict):
        log.warning("%s: not updated, not a JSON object", path)
        return
    if state.get("predictions_complete") == complete and state.get("total_questions") == total:
        return
    state["predictions_complete"] = complete
    state["total_questions"] = total
    try:
        write_json_atomic(path, state)
    except OSError as exc:
        log.warning("%s: not updated: %s", path, exc)
