"""Named Optuna studies that survive restarts (extra `trainguard[optuna]`).

`load_or_create` opens or makes a study (storage: see `study_runner.optuna_storage`; by
default a journal file `optuna/<name>.journal` beside the study-runner ledger) and first puts
right what a dead process left: its RUNNING trials are failed and their params enqueued again,
and the best params so far are enqueued ahead of them (warm start: a restarted search, maybe
with a new seed budget, starts by re-measuring its best point). `optimize` runs until the
study holds `n_trials` COMPLETE trials, however many runs and restarts that takes, so a
restarted run never overshoots its budget. Optuna is imported on first use only: `import
study_runner` works without it, and a call without it is a one-line error.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from study_runner.optuna_budget import Budget, BudgetPolicy, Round, next_budget
from study_runner.optuna_storage import first_line, open_storage, require_optuna, storage_spec
from study_runner.trial_owner import OWNER_ATTR, judge, this_host, this_process
from trainguard.errors import TrainguardError, UsageError

if TYPE_CHECKING:
    from optuna import Study, Trial
    from optuna.pruners import BasePruner
    from optuna.samplers import BaseSampler
    from optuna.trial import FrozenTrial

__all__ = [
    "Budget",
    "BudgetPolicy",
    "Recovery",
    "Round",
    "StudyGaveUp",
    "load_or_create",
    "next_budget",
    "optimize",
    "recover",
]

WARM_START_ATTR = "trainguard.warm_start_of"  # on the enqueued trial: the best trial's number
RETRY_ATTR = "trainguard.retry_of"  # on the enqueued trial: the number of the trial it redoes
ERROR_ATTR = "trainguard.error"  # on a trial whose objective raised: the exception, one line

log = logging.getLogger("study_runner")


class StudyGaveUp(TrainguardError):
    """Too many trials in a row ended without a value: more of them would end the same way."""


@dataclass(frozen=True)
class Recovery:
    """What a load did about the trials it found."""

    failed: tuple[int, ...] = ()  # RUNNING trials of dead processes, failed now
    retried: tuple[int, ...] = ()  # failed ones whose params were enqueued again
    running: tuple[int, ...] = ()  # RUNNING trials of live processes on this host
    left: tuple[tuple[int, str], ...] = ()  # RUNNING trials that cannot be judged, and why
    warm_start: int | None = None  # the best trial whose params were enqueued first


def load_or_create(
    name: str,
    storage: str | os.PathLike[str] | None = None,
    direction: str = "minimize",
    warm_start: bool = True,
    *,
    stale_after: float | None = None,
    sampler: BaseSampler | None = None,
    pruner: BasePruner | None = None,
) -> Study:
    """The study `name`, made if it does not exist yet, after `recover` (logged).

    `stale_after` (seconds): also fail RUNNING trials older than this whose owner cannot be
    checked from here (another host's, or one that recorded none); None leaves them RUNNING.
    """
    optuna = require_optuna()
    if direction not in ("minimize", "maximize"):
        raise UsageError(f"direction must be minimize or maximize, got {direction!r}")
    spec = storage_spec(name, storage)
    study: Study = optuna.create_study(
        study_name=name,
        storage=open_storage(spec, create=True),
        direction=direction,
        load_if_exists=True,
        sampler=sampler,
        pruner=pruner,
    )
    directions = [d.name.lower() for d in study.directions]
    if directions != [direction]:
        raise UsageError(
            f"study {name} in {spec.shown()} is to {', '.join(directions)}, not to {direction}"
        )
    done = recover(study, warm_start=warm_start, stale_after=stale_after)
    for number, why in done.left:
        log.warning("study %s: trial %d left RUNNING: %s", name, number, why)
    if done.failed:
        log.warning(
            "study %s: failed trials %s left RUNNING by dead processes; retrying %s",
            name,
            _numbers(done.failed),
            _numbers(done.retried) or "none (no params yet)",
        )
    if done.warm_start is not None:
        log.info(
            "study %s: warm start: the params of best trial %d go first", name, done.warm_start
        )
    return study


def recover(study: Study, *, warm_start: bool, stale_after: float | None) -> Recovery:
    """Fail the RUNNING trials whose process is gone, then enqueue the best params (warm start)
    and the failed trials' params, each unless a WAITING trial already holds them (a second
    restart before they ran). Enqueued trials run in the order enqueued, after any that were
    already WAITING."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    now, host = datetime.now(), this_host()
    failed: list[FrozenTrial] = []
    running: list[int] = []
    left: list[tuple[int, str]] = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        verdict = judge(
            trial.user_attrs.get(OWNER_ATTR),
            trial.datetime_start,
            now=now,
            stale_after=stale_after,
            host=host,
        )
        if verdict.owner == "alive":
            running.append(trial.number)
            continue
        if verdict.owner == "unknown":
            left.append((trial.number, verdict.why))
            continue
        try:
            study.tell(trial.number, state=TrialState.FAIL)
        except (UpdateFinishedTrialError, ValueError):
            continue  # another process restarting at once failed it first, and retries it
        failed.append(trial)
    enqueued: list[tuple[dict[str, Any], dict[str, int]]] = []
    best = _best(study) if warm_start else None
    if best is not None:
        enqueued.append((best.params, {WARM_START_ATTR: best.number}))
    enqueued += [(t.params, {RETRY_ATTR: t.number}) for t in failed if t.params]
    waiting = [
        t.system_attrs.get("fixed_params")
        for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    ]
    for params, attrs in enqueued:
        if params not in waiting:
            study.enqueue_trial(params, user_attrs=attrs)
            waiting.append(params)
    return Recovery(
        failed=tuple(t.number for t in failed),
        retried=tuple(t.number for t in failed if t.params and t.params in waiting),
        running=tuple(running),
        left=tuple(left),
        warm_start=best.number if best is not None else None,
    )


def optimize(
    study: Study,
    objective: Callable[[Trial], float | Sequence[float]],
    n_trials: int,
    *,
    timeout: float | None = None,
    callbacks: Iterable[Callable[[Study, FrozenTrial], None]] = (),
    catch: Iterable[type[Exception]] | type[Exception] = (Exception,),
    max_failures: int = 10,
    max_pruned: int = 1000,
    **kw: Any,
) -> int:
    """Run trials until the study holds `n_trials` COMPLETE ones; return how many it holds.

    COMPLETE trials of earlier runs and of other processes count, so a restart runs only what
    is missing. FAIL and PRUNED trials do not count: more are run in their place, until
    `max_failures` FAIL (or `max_pruned` PRUNED) trials since the last COMPLETE one raise
    StudyGaveUp. `catch`
    defaults to every Exception so that one bad trial is recorded FAIL and the search goes on
    (Ctrl+C is no Exception). Returns early, short of `n_trials`, when `timeout` (seconds, for
    the whole call) runs out or a callback stops the study. `**kw` go to `Study.optimize`.
    """
    from optuna import TrialPruned
    from optuna.trial import TrialState

    if n_trials < 0:
        raise UsageError(f"n_trials must be >= 0, got {n_trials}")
    owner = this_process().to_json()

    def run(trial: Trial) -> float | Sequence[float]:
        trial.set_user_attr(OWNER_ATTR, owner)  # before any work: see trial_owner
        try:
            return objective(trial)
        except TrialPruned:
            raise
        except Exception as exc:
            # Optuna (>= 5) keeps no reason with a FAIL trial: the operator's and StudyGaveUp's.
            trial.set_user_attr(ERROR_ATTR, first_line(exc, with_type=True))
            raise

    def complete() -> int:
        return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))

    watch = _Watch(n_trials, complete, max_failures=max_failures, max_pruned=max_pruned)
    deadline = None if timeout is None else time.monotonic() + timeout
    while (missing := n_trials - complete()) > 0:
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            break
        watch.finished = 0
        study.optimize(
            run,
            n_trials=missing,
            timeout=left,
            callbacks=[*callbacks, watch],
            catch=catch,
            **kw,
        )
        if watch.gave_up is not None:
            raise StudyGaveUp(f"study {study.study_name}: {watch.gave_up}")
        if watch.finished < missing:
            break  # stopped early: budget reached elsewhere, timeout, or a callback's stop()
    return complete()


class _Watch:
    """A callback after each trial: stops the study at the budget (other processes' trials
    count too) or after too many trials in a row without a value."""

    def __init__(
        self, n_trials: int, complete: Callable[[], int], *, max_failures: int, max_pruned: int
    ) -> None:
        self.n_trials = n_trials
        self.complete = complete
        self.limits = {"FAIL": max_failures, "PRUNED": max_pruned}
        self.streak = {"FAIL": 0, "PRUNED": 0}
        self.finished = 0
        self.gave_up: str | None = None

    def __call__(self, study: Study, trial: FrozenTrial) -> None:
        self.finished += 1
        state = trial.state.name
        if state == "COMPLETE":
            self.streak = dict.fromkeys(self.streak, 0)
            if self.complete() >= self.n_trials:
                study.stop()
        elif state in self.streak:
            self.streak[state] += 1
            if self.streak[state] >= self.limits[state]:
                reason = trial.user_attrs.get(ERROR_ATTR)
                why = f": {reason}" if reason else ""
                self.gave_up = (
                    f"{self.streak[state]} trials ended {state} since the last COMPLETE one "
                    f"(last: trial {trial.number}{why}); {self.complete()}/{self.n_trials} COMPLETE"
                )
                study.stop()


def _best(study: Study) -> FrozenTrial | None:
    try:
        best: FrozenTrial = study.best_trial
    except ValueError:  # no COMPLETE trial yet
        return None
    return best


def _numbers(numbers: Iterable[int]) -> str:
    return ", ".join(str(n) for n in numbers)
