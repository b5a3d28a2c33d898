"""Persistent Optuna studies on real journal and SQLite storages: restarts after SIGKILL,
budgets that do not overshoot, owners that are judged before their trials are failed."""

from __future__ import annotations

import dataclasses
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from study_runner.optuna_budget import Budget, BudgetPolicy, Round, next_budget
from study_runner.optuna_storage import OptunaMissing
from study_runner.optuna_study import (
    RETRY_ATTR,
    WARM_START_ATTR,
    StudyGaveUp,
    load_or_create,
    optimize,
    recover,
)
from study_runner.trial_owner import OWNER_ATTR, Owner, this_process
from tests.polling import wait_until
from trainguard import exitcodes
from trainguard.errors import UsageError

WORKER = Path(__file__).resolve().parents[1] / "children" / "optuna_worker.py"


def parabola(trial: optuna.Trial) -> float:
    return (trial.suggest_float("x", -10.0, 10.0) - 2.0) ** 2


def start_trial(study: optuna.Study, owner: Owner | None) -> None:
    """A RUNNING trial with a param, as a process that is still in its objective leaves it."""
    trial = study.ask()
    trial.suggest_float("x", 0.0, 1.0)
    if owner is not None:
        trial.set_user_attr(OWNER_ATTR, owner.to_json())


def states(study: optuna.Study) -> list[str]:
    return [t.state.name for t in study.get_trials(deepcopy=False)]


@pytest.fixture
def worker() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


@pytest.mark.e2e
def test_sigkilled_study_restarts_with_best_first_retries_killed_trial_and_meets_budget(
    tmp_path: Path, worker: list[subprocess.Popen[bytes]]
) -> None:
    storage, go, budget, hang_at = tmp_path / "s.journal", tmp_path / "go", 6, 3
    child = subprocess.Popen(
        [sys.executable, str(WORKER), str(storage), "killed", str(budget), str(hang_at), str(go)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    worker.append(child)
    wait_until(lambda: go.exists() or child.poll() is not None, timeout=30, message="go file")
    assert go.exists(), child.communicate()[0].decode(errors="replace")
    child.send_signal(signal.SIGKILL)
    assert child.wait(timeout=10) == -signal.SIGKILL

    # What the SIGKILL left: a RUNNING trial that no heartbeat will ever fail.
    left = optuna.load_study(study_name="killed", storage=journal(storage))
    assert states(left) == ["COMPLETE"] * hang_at + ["RUNNING"]
    killed = left.trials[hang_at]
    assert killed.user_attrs[OWNER_ATTR]["pid"] == child.pid
    best_before = left.best_trial

    study = load_or_create("killed", str(storage))
    assert optimize(study, parabola, budget) == budget

    trials = study.trials
    assert TrialState.RUNNING not in [t.state for t in trials]
    assert states(study).count("COMPLETE") == budget
    assert trials[hang_at].state == TrialState.FAIL
    first, retry = trials[hang_at + 1], trials[hang_at + 2]
    assert first.user_attrs[WARM_START_ATTR] == best_before.number
    assert first.system_attrs["fixed_params"] == first.params == best_before.params
    assert first.value == best_before.value
    assert retry.user_attrs[RETRY_ATTR] == hang_at
    assert retry.params == killed.params
    assert len(trials) == budget + 1  # the killed trial is the only one not COMPLETE


def journal(path: Path) -> optuna.storages.JournalStorage:
    return optuna.storages.JournalStorage(JournalFileBackend(str(path)))


@pytest.mark.parametrize(
    ("storage", "file"),
    [
        (None, "optuna/same.journal"),
        ("runs/same.journal", "runs/same.journal"),
        ("same", "same"),
        ("same.db", "same.db"),
        ("same.sqlite3", "same.sqlite3"),
        ("sqlite:///url.db", "url.db"),
    ],
)
def test_study_reloads_the_same_trials_from_each_kind_of_storage(
    tmp_path: Path, storage: str | None, file: str
) -> None:
    study = load_or_create("same", storage)
    assert optimize(study, parabola, 3) == 3
    assert (tmp_path / file).is_file()

    again = load_or_create("same", storage, warm_start=False)
    assert [(t.number, t.state, t.params, t.value) for t in again.trials] == [
        (t.number, t.state, t.params, t.value) for t in study.trials
    ]
    assert states(again) == ["COMPLETE"] * 3


def test_default_journal_lies_beside_the_study_runner_ledger(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRAINGUARD_EXPERIMENT_DIR", str(tmp_path / "OUT" / "lr_sweep"))
    optimize(load_or_create("beside"), parabola, 1)
    assert (tmp_path / "OUT" / "optuna" / "beside.journal").is_file()
    assert not (tmp_path / "optuna").exists()


def test_optimize_twice_does_not_overshoot_and_a_larger_budget_adds_only_the_missing(
    tmp_path: Path,
) -> None:
    study = load_or_create("twice", "s.journal")
    assert optimize(study, parabola, 4) == 4
    assert optimize(study, parabola, 4) == 4
    assert len(study.trials) == 4
    restarted = load_or_create("twice", "s.journal", warm_start=False)
    assert optimize(restarted, parabola, 6) == 6
    assert states(restarted) == ["COMPLETE"] * 6


def test_failed_and_pruned_trials_are_replaced_until_the_budget_is_complete(
    tmp_path: Path,
) -> None:
    def flaky(trial: optuna.Trial) -> float:
        value = parabola(trial)
        if trial.number % 3 == 1:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        if trial.number % 3 == 2:
            raise optuna.TrialPruned()
        return value

    study = load_or_create("flaky", "s.journal")
    assert optimize(study, flaky, 4) == 4
    assert states(study) == ["COMPLETE", "FAIL", "PRUNED"] * 3 + ["COMPLETE"]


def test_too_many_failures_since_the_last_complete_trial_give_up_with_the_reason(
    tmp_path: Path,
) -> None:
    def broken(trial: optuna.Trial) -> float:
        raise ValueError("bad config: lr must be > 0")

    study = load_or_create("broken", "s.journal")
    with pytest.raises(StudyGaveUp) as gave_up:
        optimize(study, broken, 5, max_failures=3)
    message = str(gave_up.value)
    assert "3 trials ended FAIL" in message
    assert "(last: trial 2: ValueError: bad config: lr must be > 0)" in message
    assert "0/5 COMPLETE" in message
    assert states(study) == ["FAIL"] * 3


def test_running_trial_of_a_live_process_is_left_running(tmp_path: Path) -> None:
    study = load_or_create("live", "s.journal")
    start_trial(study, this_process())

    load_or_create("live", "s.journal")
    done = recover(study, warm_start=False, stale_after=0.0)

    assert states(study) == ["RUNNING"]
    assert (done.failed, done.running, done.left) == ((), (0,), ())


def test_running_trial_whose_pid_now_names_another_process_is_failed_and_retried(
    tmp_path: Path,
) -> None:
    study = load_or_create("recycled", "s.journal")
    me = this_process()
    earlier = dataclasses.replace(
        me.process,
        create_time=me.process.create_time - 60,
        start_ticks=None if me.process.start_ticks is None else me.process.start_ticks - 6000,
    )
    start_trial(study, Owner(me.host, earlier))

    done = recover(study, warm_start=False, stale_after=None)

    assert done.failed == done.retried == (0,)
    assert states(study) == ["FAIL", "WAITING"]
    assert study.trials[1].system_attrs["fixed_params"] == study.trials[0].params


def test_running_trial_that_cannot_be_judged_is_left_unless_older_than_stale_after(
    tmp_path: Path,
) -> None:
    study = load_or_create("remote", "s.journal")
    me = this_process()
    start_trial(study, Owner("another-node", me.process))
    start_trial(study, None)  # plain Optuna's, or one killed before it recorded its owner

    done = recover(study, warm_start=False, stale_after=None)
    assert states(study) == ["RUNNING", "RUNNING"]
    assert [why for _, why in done.left] == [
        f"its process {me.process.pid} runs on another-node, not here: cannot tell if it still "
        "runs (stale_after= fails by age)",
        "it has no recorded owner: cannot tell if it still runs (stale_after= fails by age)",
    ]
    assert recover(study, warm_start=False, stale_after=3600.0).failed == ()

    done = recover(study, warm_start=False, stale_after=0.0)
    assert done.failed == (0, 1)
    assert states(study) == ["FAIL", "FAIL", "WAITING", "WAITING"]


def test_restarting_again_before_the_enqueued_trials_ran_enqueues_nothing_twice(
    tmp_path: Path,
) -> None:
    study = load_or_create("twice", "s.journal")
    optimize(study, parabola, 2)
    load_or_create("twice", "s.journal")
    load_or_create("twice", "s.journal")
    assert states(study) == ["COMPLETE", "COMPLETE", "WAITING"]


def test_a_study_loaded_with_another_direction_is_refused(tmp_path: Path) -> None:
    load_or_create("dir", "s.journal")
    with pytest.raises(UsageError, match="is to minimize, not to maximize"):
        load_or_create("dir", "s.journal", direction="maximize")


def test_without_optuna_a_call_is_one_clear_error_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "optuna", None)
    with pytest.raises(OptunaMissing) as missing:
        load_or_create("absent")
    assert str(missing.value) == "Optuna studies need Optuna: pip install 'trainguard[optuna]'"
    assert missing.value.exit_code == exitcodes.CONFIG
    assert not (tmp_path / "optuna").exists()


def test_study_runner_imports_without_optuna() -> None:
    code = (
        "import sys; sys.modules['optuna'] = None\n"
        "import study_runner, study_runner.cli, study_runner.optuna_study\n"
        "print('imported')"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "imported\n", "")


P = BudgetPolicy()


@pytest.mark.parametrize(
    ("history", "expected"),
    [
        ([], (50, 100_000)),
        ([Round(trials=29, seeds=100_000, survivors=0)], (50, 100_000)),
        ([Round(trials=30, seeds=100_000, survivors=0)], (100, 100_000)),
        ([Round(trials=80, seeds=400_000, survivors=0)], (100, 100_000)),
        ([Round(trials=50, seeds=100_000, survivors=1)], (50, 200_000)),
        ([Round(trials=100, seeds=300_000, survivors=49_999)], (100, 600_000)),
        ([Round(trials=50, seeds=100_000, survivors=50_000)], (50, 100_000)),
        ([Round(trials=50, seeds=6_000_000, survivors=10)], (50, 10_000_000)),
        ([Round(trials=50, seeds=10_000_000, survivors=10)], (50, 10_000_000)),
        (
            [Round(trials=50, seeds=100_000, survivors=0), Round(trials=10, seeds=5, survivors=0)],
            (50, 100_000),
        ),
    ],
)
def test_next_budget_follows_the_seed_rules(
    history: list[Round], expected: tuple[int, int]
) -> None:
    budget = next_budget(history, P)
    assert (budget.trials, budget.seeds) == expected


def test_budget_policy_numbers_are_configurable() -> None:
    policy = BudgetPolicy(no_survivor_min_trials=5, seed_factor=4, max_seeds=1_000)
    assert next_budget([Round(5, 10, 0)], policy) == Budget(
        100, 100_000, "no survivors after 5 trials: more trials, fewer seeds"
    )
    assert next_budget([Round(5, 100, 3)], policy).seeds == 400
    assert next_budget([Round(5, 300, 3)], policy).seeds == 1_000
    with pytest.raises(ValueError, match="max_seeds must be >= 1"):
        BudgetPolicy(max_seeds=0)
    with pytest.raises(ValueError, match="survivors must be >= 0"):
        Round(trials=1, seeds=1, survivors=-1)
