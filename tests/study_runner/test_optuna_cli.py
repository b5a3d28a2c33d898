"""`study-runner optuna NAME`: a study's trials by state and its best, read without writing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from optuna.distributions import BaseDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from study_runner.cli import main
from study_runner.optuna_study import load_or_create
from trainguard import exitcodes
from trainguard.exitcodes import NOINPUT

X: dict[str, BaseDistribution] = {"x": FloatDistribution(-10.0, 10.0)}


def make_study(storage: str | None) -> None:
    """Trials in every state: values 4.0 (x=0), 0.25 (x=1.5), 9.0 (x=5); one of each other."""
    study = load_or_create("sweep", storage)
    for x, value in ((0.0, 4.0), (1.5, 0.25), (5.0, 9.0)):
        study.add_trial(create_trial(params={"x": x}, distributions=X, value=value))
    study.add_trial(create_trial(state=TrialState.FAIL))
    study.add_trial(create_trial(state=TrialState.PRUNED, params={"x": 9.0}, distributions=X))
    study.ask()  # RUNNING
    study.enqueue_trial({"x": 2.0})  # WAITING


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str], list[str]]:
    capsys.readouterr()  # what came before (Optuna's log lines) is not the command's
    code = main(["optuna", *argv])
    out, err = capsys.readouterr()
    return code, out.splitlines(), err.splitlines()


def test_status_lines_give_trials_by_state_and_the_best(
    capsys: pytest.CaptureFixture[str],
) -> None:
    make_study(None)
    assert run(capsys, "sweep") == (
        0,
        [
            "study sweep in optuna/sweep.journal (minimize): "
            "3 COMPLETE, 1 RUNNING, 1 FAIL, 1 PRUNED, 1 WAITING",
            "best: trial 1, value 0.25",
            "  x = 1.5",
        ],
        [],
    )


@pytest.mark.parametrize("storage", ["s.journal", "s.db", "sqlite:///s.sqlite3"])
def test_json_is_one_object_of_the_same_view(
    capsys: pytest.CaptureFixture[str], storage: str
) -> None:
    make_study(storage)
    code, out, err = run(capsys, "sweep", "--storage", storage, "--json")
    assert (code, err, len(out)) == (0, [], 1)
    assert json.loads(out[0]) == {
        "study": "sweep",
        "storage": storage,
        "direction": "minimize",
        "counts": {"COMPLETE": 3, "RUNNING": 1, "FAIL": 1, "PRUNED": 1, "WAITING": 1},
        "best": {"number": 1, "value": 0.25, "params": {"x": 1.5}},
    }


def test_a_study_without_complete_trials_has_no_best(
    capsys: pytest.CaptureFixture[str],
) -> None:
    load_or_create("empty", "s.journal")
    code, out, _ = run(capsys, "empty", "--storage", "s.journal")
    assert (code, out[1:]) == (0, ["best: none yet"])
    code, out, _ = run(capsys, "empty", "--storage", "s.journal", "--json")
    assert json.loads(out[0])["best"] is None


def test_unknown_study_is_one_line_naming_the_studies_there(
    capsys: pytest.CaptureFixture[str],
) -> None:
    make_study("s.journal")
    assert run(capsys, "swep", "--storage", "s.journal") == (
        NOINPUT,
        [],
        ["study-runner: s.journal: no study named 'swep' (studies there: sweep)"],
    )


@pytest.mark.parametrize(
    ("argv", "file"),
    [
        ((), "optuna/gone.journal"),
        (("--storage", "gone.journal"), "gone.journal"),
        (("--storage", "gone.db"), "gone.db"),
        (("--storage", "sqlite:///gone.sqlite3"), "gone.sqlite3"),
    ],
)
def test_missing_storage_file_is_an_error_and_is_not_created(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], file: str
) -> None:
    code, out, err = run(capsys, "gone", *argv)
    shown = argv[1] if argv else file
    assert (code, out, err) == (
        NOINPUT,
        [],
        [f"study-runner: {shown}: no such Optuna storage file"],
    )
    assert not (tmp_path / file).exists()
    assert not (tmp_path / "optuna").exists()


def test_missing_storage_with_json_prints_the_error_as_json(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = run(capsys, "gone", "--json")
    assert code == NOINPUT
    assert json.loads(out[0]) == {
        "error": "optuna/gone.journal: no such Optuna storage file",
        "exit_code": NOINPUT,
    }


def test_url_password_is_not_shown(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "x", "--storage", "bogus+driver://user:s3cret@db.example/optuna")
    assert code == exitcodes.FAILURE
    assert len(err) == 1
    assert err[0].startswith("study-runner: bogus+driver://user:***@db.example/optuna: cannot open")
    assert "s3cret" not in err[0]


def test_without_optuna_the_view_is_one_line_and_exit_78(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "optuna", None)
    assert run(capsys, "sweep") == (
        exitcodes.CONFIG,
        [],
        ["study-runner: Optuna studies need Optuna: pip install 'trainguard[optuna]'"],
    )


def test_console_entry_reports_an_unknown_study_without_a_traceback(tmp_path: Path) -> None:
    make_study("s.journal")
    done = subprocess.run(
        [sys.executable, "-m", "study_runner", "optuna", "nope", "--storage", "s.journal"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stdout) == (NOINPUT, "")
    assert done.stderr == (
        "study-runner: s.journal: no study named 'nope' (studies there: sweep)\n"
    )
