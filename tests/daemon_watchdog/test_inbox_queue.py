"""The example daemon's inbox folders, on real files and locks: who gets a job, and where it goes.

Two `Inbox` objects stand for two daemons: each holds its locks on its own open file
descriptions, exactly as two processes would.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon_watchdog.example.inbox import Inbox


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "inbox").mkdir()
    return tmp_path / "inbox"


def _inbox(folder: Path) -> Inbox:
    return Inbox(folder, folder.parent / "checkpoints" / "jobs")


def _drop(folder: Path, name: str, text: str = "{}") -> Path:
    path = folder / name
    path.write_text(text)
    return path


def test_a_job_is_claimed_by_rename_and_only_once(folder: Path) -> None:
    path = _drop(folder, "a.json", '{"seed": 1}')
    first, second = _inbox(folder), _inbox(folder)

    job = first.claim(path)

    assert job is not None and job.name == "a" and not job.adopted
    assert job.path == folder / "claimed" / "a.json"
    assert job.path.read_text() == '{"seed": 1}' and not path.exists()
    assert second.claim(path) is None  # the other daemon lost the race: nothing to rename
    assert second.next_job() == (None, [])  # and the claimed one is held
    job.release()


def test_a_claimed_job_nobody_holds_is_adopted_once(folder: Path) -> None:
    job = _inbox(folder).claim(_drop(folder, "a.json"))
    assert job is not None
    job.release()  # its daemon died: the lock went with it

    adopter, other = _inbox(folder), _inbox(folder)
    adopted, refused = adopter.next_job()

    assert adopted is not None and adopted.adopted and adopted.name == "a" and refused == []
    assert other.next_job() == (None, [])
    adopted.release()


def test_finished_jobs_move_to_done_and_a_finished_one_cannot_be_adopted(folder: Path) -> None:
    inbox = _inbox(folder)
    job = inbox.claim(_drop(folder, "a.json"))
    assert job is not None

    assert inbox.finish(job) == folder / "done" / "a.json"

    assert job.fd == -1  # released
    assert not (folder / "claimed" / "a.json").exists()
    assert _inbox(folder).next_job() == (None, [])


def test_failed_jobs_keep_their_bytes_and_get_a_reason_and_never_replace_each_other(
    folder: Path,
) -> None:
    inbox = _inbox(folder)
    targets = []
    for text in ("first", "second"):
        job = inbox.claim(_drop(folder, "a.json", text))
        assert job is not None
        targets.append(inbox.fail(job, f"{text} reason"))

    assert targets == [folder / "failed" / "a.json", folder / "failed" / "a-2.json"]
    assert [p.read_text() for p in targets] == ["first", "second"]
    assert (folder / "failed" / "a.reason.txt").read_text() == "first reason\n"
    assert (folder / "failed" / "a-2.reason.txt").read_text() == "second reason\n"


def test_names_that_would_mix_two_jobs_are_refused_before_claiming(folder: Path) -> None:
    inbox = _inbox(folder)
    (folder / "done").mkdir()
    (folder / "done" / "old.json").write_text("{}")
    (folder.parent / "checkpoints" / "jobs" / "trained").mkdir(parents=True)
    for name in ("old.json", "trained.json", "two words.json", "zz.json"):
        _drop(folder, name, name)

    job, refused = inbox.next_job()

    assert job is not None and job.name == "zz"  # the others come first by name
    assert sorted(line.split(":")[0] for line in refused) == [
        "old.json",
        "trained.json",
        "two words.json",
    ]
    assert (folder / "done" / "old.json").read_text() == "{}"  # the finished one untouched
    for name in ("old", "trained", "two words"):
        assert (folder / "failed" / f"{name}.json").read_text() == f"{name}.json"
        assert (folder / "failed" / f"{name}.reason.txt").stat().st_size > 0
    assert "inbox/done/" in (folder / "failed" / "old.reason.txt").read_text()
    assert "checkpoints" in (folder / "failed" / "trained.reason.txt").read_text()
    job.release()


def test_hidden_and_non_json_files_are_not_jobs(folder: Path) -> None:
    for name in (".half-written.json", "notes.txt", "b.json.tmp"):
        _drop(folder, name)
    (folder / "sub.json").mkdir()

    assert _inbox(folder).next_job() == (None, [])
    assert sorted(p.name for p in folder.iterdir()) == [
        ".half-written.json",
        "b.json.tmp",
        "notes.txt",
        "sub.json",
    ]


def test_waiting_jobs_are_taken_in_name_order(folder: Path) -> None:
    for name in ("b.json", "a.json", "c.json"):
        _drop(folder, name)
    inbox = _inbox(folder)
    order = []
    while True:
        job, _ = inbox.next_job()
        if job is None:
            break
        order.append(job.name)
        inbox.finish(job)
    assert order == ["a", "b", "c"]
