"""`study-runner optuna NAME`: where a persistent Optuna study stands, read without writing.

Computed once (`view`), rendered as lines or as one JSON object. Viewing never creates a
storage file or a study: a missing one is a one-line error with exit code 66 (EX_NOINPUT).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from study_runner.optuna_storage import (
    StorageError,
    StudyNotFound,
    first_line,
    open_storage,
    require_optuna,
    storage_spec,
)

STATES = ("COMPLETE", "RUNNING", "FAIL", "PRUNED", "WAITING")


@dataclass(frozen=True)
class Best:
    number: int
    value: float
    params: dict[str, Any]


@dataclass(frozen=True)
class StudyView:
    study: str
    storage: str
    direction: str  # "minimize", "maximize"; a multi-objective study's joined by ","
    counts: dict[str, int]
    best: Best | None  # None: no COMPLETE trial yet, or several objectives (no single best)


def view(name: str, storage: str | None) -> StudyView:
    optuna = require_optuna()
    spec = storage_spec(name, storage)
    opened = open_storage(spec, create=False)
    try:
        names = optuna.get_all_study_names(opened)
        if name not in names:
            there = f"studies there: {', '.join(sorted(names))}" if names else "it holds none"
            raise StudyNotFound(f"{spec.shown()}: no study named {name!r} ({there})")
        study = optuna.load_study(study_name=name, storage=opened)
        trials = study.get_trials(deepcopy=False)
    except StudyNotFound:
        raise
    # As when opening it: a broken storage raises whatever its backend raises.
    except Exception as exc:
        why = first_line(exc)
        raise StorageError(f"{spec.shown()}: cannot read study {name!r}: {why}") from None
    counts = dict.fromkeys(STATES, 0)
    for trial in trials:
        counts[trial.state.name] = counts.get(trial.state.name, 0) + 1
    best = None
    if len(study.directions) == 1 and counts["COMPLETE"]:
        top = study.best_trial
        best = Best(top.number, float(top.value), dict(top.params))
    return StudyView(
        study=name,
        storage=spec.shown(),
        direction=",".join(d.name.lower() for d in study.directions),
        counts=counts,
        best=best,
    )


def render_lines(shown: StudyView) -> list[str]:
    counts = ", ".join(f"{n} {state}" for state, n in shown.counts.items())
    lines = [f"study {shown.study} in {shown.storage} ({shown.direction}): {counts}"]
    if shown.best is None:
        lines.append("best: none yet")
        return lines
    lines.append(f"best: trial {shown.best.number}, value {shown.best.value:g}")
    lines += [f"  {key} = {value!r}" for key, value in shown.best.params.items()]
    return lines


def render_json(shown: StudyView) -> dict[str, Any]:
    best = shown.best
    return {
        "study": shown.study,
        "storage": shown.storage,
        "direction": shown.direction,
        "counts": shown.counts,
        "best": None
        if best is None
        else {"number": best.number, "value": best.value, "params": best.params},
    }


def show(name: str, storage: str | None, *, as_json: bool) -> int:
    shown = view(name, storage)
    if as_json:
        print(json.dumps(render_json(shown)))
    else:
        print("\n".join(render_lines(shown)))
    return 0
