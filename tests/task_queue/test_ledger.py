from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from task_queue.ledger import AttemptEnd, Ledger, LedgerBusy, LedgerError, TaskSpec, runner_lock


def _spec(name: str = "", **kw: object) -> TaskSpec:
    return TaskSpec(argv=("true",), cwd="/", name=name, **kw)  # type: ignore[arg-type]


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    with Ledger.open(tmp_path / "q" / "ledger.db", create=True) as opened:
        yield opened


def test_submitted_tasks_are_pending_with_ids_in_order_and_default_names(ledger: Ledger) -> None:
    assert ledger.submit([_spec("a"), _spec()]) == [1, 2]
    assert [(t.id, t.name, t.status) for t in ledger.tasks()] == [
        (1, "a", "pending"), (2, "task-2", "pending"),
    ]  # fmt: skip
    assert ledger.counts() == {"pending": 2, "running": 0, "done": 0, "failed": 0, "cancelled": 0}


def test_a_task_failed_on_one_worker_goes_to_another_and_back_only_when_all_failed_it(
    ledger: Ledger,
) -> None:
    workers = ["w1", "w2"]
    (task_id,) = ledger.submit([_spec()])
    claimed = ledger.claim("w1", "h", workers=workers, token="t")
    assert claimed is not None and claimed[1].number == 1
    assert ledger.task(task_id).status == "running"  # type: ignore[union-attr]
    ledger.finish(claimed[1].id, AttemptEnd("failed", exit_code=1, error="boom"),
                  task_status="pending")  # fmt: skip
    assert ledger.claim("w1", "h", workers=workers, token="t") is None  # w1 failed it; w2 has not
    second = ledger.claim("w2", "h", workers=workers, token="t")
    assert second is not None and second[1].number == 2 and second[1].worker == "w2"
    ledger.finish(second[1].id, AttemptEnd("failed", exit_code=1), task_status="pending")
    third = ledger.claim("w1", "h", workers=workers, token="t")  # both failed it: anywhere again
    assert third is not None and third[1].number == 3
    ledger.finish(third[1].id, AttemptEnd("ok", exit_code=0), task_status="done")
    task = ledger.task(task_id)
    assert task is not None and task.status == "done"
    assert [(a.worker, a.outcome) for a in task.attempts] == [
        ("w1", "failed"), ("w2", "failed"), ("w1", "ok"),
    ]  # fmt: skip
    assert task.attempts[0].error == "boom"


def test_the_json_sqlite_builds_is_the_json_of_the_tasks(ledger: Ledger) -> None:
    ledger.submit([_spec("a", env={"K": "v"}), _spec("b")])
    claimed = ledger.claim("w1", "h", workers=["w1"], token="t")
    assert claimed is not None
    ledger.started(claimed[1].id, pid=7, log_file="a.log", log_offset=3)
    end = AttemptEnd(
        "failed",
        exit_code=-9,
        category="unknown",
        retryable=True,
        error="killed",
        traceback_tail="Trace\nback",
        gpu_state={"gpus": [1]},
    )
    ledger.finish(claimed[1].id, end, task_status="pending")  # fmt: skip
    ledger.claim("w2", "h", workers=["w1", "w2"], token="u")
    built = [json.loads(text) for text in ledger.tasks_json()]
    assert built == [task.to_json() for task in ledger.tasks()]
    assert built[0]["attempts"][0]["counted"] is True and built[1]["attempts"] == []
    assert [json.loads(t)["id"] for t in ledger.tasks_json(status="pending")] == [2]


def test_attempts_left_open_are_closed_as_worker_lost_and_their_tasks_pending(
    ledger: Ledger,
) -> None:
    ledger.submit([_spec(), _spec()])
    first = ledger.claim("w1", "h", workers=["w1"], token="t")
    assert first is not None
    ledger.started(first[1].id, pid=123, log_file="x.log", log_offset=0)
    assert [(a.token, a.pid) for a in ledger.open_attempts()] == [("t", 123)]
    assert ledger.close_running(AttemptEnd("worker_lost", error="gone", counted=False)) == [1]
    task = ledger.task(1)
    assert task is not None and task.status == "pending"
    assert (task.attempts[0].outcome, task.attempts[0].counted) == ("worker_lost", False)
    assert ledger.open_attempts() == []


def test_retry_gives_a_failed_task_a_fresh_budget_and_cancel_stops_pending_ones(
    ledger: Ledger,
) -> None:
    ledger.submit([_spec(), _spec()])
    claimed = ledger.claim("w1", "h", workers=["w1"], token="t")
    assert claimed is not None
    ledger.finish(claimed[1].id, AttemptEnd("failed"), task_status="failed")
    assert ledger.retry(None) == [1]
    task = ledger.task(1)
    assert task is not None and task.status == "pending" and not task.attempts[0].counted
    assert ledger.cancel([1, 2]) == [1, 2]
    assert ledger.claim("w1", "h", workers=["w1"], token="t") is None
    assert ledger.retry([2]) == [2]  # a cancelled task may be retried too


def test_a_cancel_during_an_attempt_is_not_undone_by_its_end(ledger: Ledger) -> None:
    ledger.submit([_spec()])
    claimed = ledger.claim("w1", "h", workers=["w1"], token="t")
    assert claimed is not None
    ledger.cancel([1])
    ledger.finish(claimed[1].id, AttemptEnd("interrupted", counted=False), task_status="pending")
    task = ledger.task(1)
    assert task is not None and task.status == "cancelled"


def test_tasks_needing_more_gpus_than_a_worker_has_are_left_for_another(ledger: Ledger) -> None:
    ledger.submit([_spec(gpus=2), _spec(gpus=1)])
    claimed = ledger.claim("w1", "h", workers=["w1"], token="t", max_gpus=1)
    assert claimed is not None and claimed[0].id == 2


@pytest.mark.parametrize(
    "content",
    [b"", b"not a database at all\n" * 10, b"SQLite format 3\x00" + b"\xff" * 4000],
    ids=["empty", "text", "damaged"],
)
def test_a_file_that_is_not_a_ledger_is_refused_in_one_line_and_left_as_it_is(
    tmp_path: Path, content: bytes
) -> None:
    path = tmp_path / "ledger.db"
    path.write_bytes(content)
    for create in (False, True):
        with pytest.raises(LedgerError) as caught:
            Ledger.open(path, create=create)
        assert "\n" not in str(caught.value) and str(path) in str(caught.value)
    assert path.read_bytes() == content


def test_an_sqlite_file_of_something_else_is_not_taken_for_a_ledger(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as other:
        other.execute("CREATE TABLE t (x)")
    before = path.read_bytes()
    with pytest.raises(LedgerError, match="not a trainguard ledger"):
        Ledger.open(path)
    assert path.read_bytes() == before


def test_a_folder_or_a_missing_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "dir.db").mkdir()
    with pytest.raises(LedgerError, match="not a regular file"):
        Ledger.open(tmp_path / "dir.db", create=True)
    with pytest.raises(LedgerError, match="no ledger here"):
        Ledger.open(tmp_path / "missing.db")
    assert not (tmp_path / "missing.db").exists()


def test_a_second_runner_on_one_ledger_is_refused_with_exit_75(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    with runner_lock(path):
        with pytest.raises(LedgerBusy, match=f"pid {os.getpid()}") as caught, runner_lock(path):
            pass
        assert caught.value.exit_code == 75
    with runner_lock(path):  # released with its holder
        pass


def test_a_full_disk_never_marks_a_task_done_that_was_not_recorded(small_tmpfs: Path) -> None:
    with Ledger.open(small_tmpfs / "ledger.db", create=True) as ledger:
        ledger.submit([_spec()])
        claimed = ledger.claim("w1", "h", workers=["w1"], token="t")
        assert claimed is not None
        filler = small_tmpfs / "filler"
        with open(filler, "wb", buffering=0) as fh:  # fill the disk to the last byte
            try:
                while True:
                    fh.write(b"\0" * 4096)
            except OSError:
                pass
        huge = "x" * 200_000  # this attempt's record cannot fit
        with pytest.raises(LedgerError, match="cannot write the ledger"):
            ledger.finish(claimed[1].id, AttemptEnd("ok", exit_code=0, traceback_tail=huge),
                          task_status="done")  # fmt: skip
        filler.unlink()
    with Ledger.open(small_tmpfs / "ledger.db") as reopened:
        task = reopened.task(1)
        assert task is not None and task.status == "running"
        assert task.attempts[0].outcome is None  # closed as worker_lost by the next runner
