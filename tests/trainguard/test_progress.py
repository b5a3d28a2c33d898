from __future__ import annotations

import json
import math
import os
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from trainguard.atomicio import MAX_JSON_BYTES
from trainguard.progress import (
    Progress,
    ProgressError,
    ProgressWriter,
    is_progress,
    read_progress,
    save_request_file,
    write_progress,
)


def test_written_progress_reads_back_with_every_field(tmp_path: Path) -> None:
    path = tmp_path / "status" / "progress.json"
    before = datetime.now(timezone.utc)

    write_progress(path, 12, "eval", total_steps=60, loss=0.25, eval_loss=0.5, rank=0)

    got = read_progress(path)
    assert got is not None
    assert (got.step, got.phase, got.total_steps, got.loss) == (12, "eval", 60, 0.25)
    assert got.updated_at is not None
    assert before - timedelta(seconds=1) <= got.updated_at <= datetime.now(timezone.utc)
    assert got.raw["eval_loss"] == 0.5
    assert got.raw["rank"] == 0


def test_updated_at_is_iso_8601_utc_with_z(tmp_path: Path) -> None:
    path = tmp_path / "progress.json"
    when = datetime(2024, 5, 1, 12, 0, 0, tzinfo=timezone(timedelta(hours=2)))

    write_progress(path, 1, updated_at=when)

    raw = json.loads(path.read_text())
    assert raw["updated_at"] == "2024-05-01T10:00:00Z"
    got = read_progress(path)
    assert got is not None and got.updated_at == when


def test_optional_fields_are_left_out_when_not_given(tmp_path: Path) -> None:
    path = tmp_path / "progress.json"

    write_progress(path, 0)

    assert set(json.loads(path.read_text())) == {"step", "phase", "updated_at"}
    got = read_progress(path)
    assert got is not None
    assert (got.step, got.phase, got.total_steps, got.loss) == (0, "train", None, None)


def test_nan_loss_is_written_as_the_json_nan_literal_and_reads_back(tmp_path: Path) -> None:
    path = tmp_path / "progress.json"

    write_progress(path, 7, loss=float("nan"))

    assert '"loss": NaN' in path.read_text()
    got = read_progress(path)
    assert got is not None and got.loss is not None and math.isnan(got.loss)


def test_missing_file_means_no_progress_yet(tmp_path: Path) -> None:
    assert read_progress(tmp_path / "status" / "progress.json") is None


@pytest.mark.parametrize(
    "content",
    [b"", b"{not json", b"\xff\xfe\x00garbage", b"[1, 2]", b'"step"', b"null"],
    ids=["empty", "broken", "binary", "list", "string", "null"],
)
def test_garbage_file_raises_progress_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "progress.json"
    path.write_bytes(content)

    with pytest.raises(ProgressError, match=r"progress\.json"):
        read_progress(path)


@pytest.mark.parametrize(
    ("record", "key"),
    [
        ({"phase": "train"}, "step"),
        ({"step": "3"}, "step"),
        ({"step": True}, "step"),
        ({"step": -1}, "step"),
        ({"step": 1.5}, "step"),
        ({"step": 1, "phase": 5}, "phase"),
        ({"step": 1, "phase": ""}, "phase"),
        ({"step": 1, "total_steps": "60"}, "total_steps"),
        ({"step": 1, "loss": "0.1"}, "loss"),
        ({"step": 1, "loss": False}, "loss"),
        ({"step": 1, "updated_at": "yesterday"}, "updated_at"),
        ({"step": 1, "updated_at": 1700000000}, "updated_at"),
    ],
)
def test_wrong_types_raise_progress_error_naming_the_key(
    tmp_path: Path, record: dict[str, object], key: str
) -> None:
    path = tmp_path / "progress.json"
    path.write_text(json.dumps(record))

    with pytest.raises(ProgressError, match=key):
        read_progress(path)


def test_progress_error_is_a_value_error() -> None:
    assert issubclass(ProgressError, ValueError)


def test_reader_accepts_a_minimal_foreign_trainer_file(tmp_path: Path) -> None:
    path = tmp_path / "progress.json"
    path.write_text('{"step": 4, "updated_at": "2024-05-01T10:00:00"}')

    got = read_progress(path)

    assert got is not None
    assert (got.step, got.phase) == (4, "train")
    assert got.updated_at == datetime(2024, 5, 1, 10, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    ("step", "phase", "kwargs"),
    [
        (True, "train", {}),
        (-1, "train", {}),
        ("1", "train", {}),
        (1, "", {}),
        (1, "train", {"total_steps": -5}),
        (1, "train", {"loss": "low"}),
        (1, "train", {"updated_at": datetime(2024, 1, 1)}),
        (1, "train", {"updated_at": "2024-01-01T00:00:00Z"}),
    ],
)
def test_writer_refuses_values_that_break_the_protocol(
    tmp_path: Path, step: object, phase: object, kwargs: dict[str, object]
) -> None:
    path = tmp_path / "progress.json"

    with pytest.raises(ProgressError):
        write_progress(path, step, phase, **kwargs)  # type: ignore[arg-type]

    assert not path.exists()


def test_progress_writer_keeps_total_steps(tmp_path: Path) -> None:
    writer = ProgressWriter(tmp_path / "status" / "progress.json", total_steps=100)

    writer.write(3, loss=1.0)
    writer.write(3, "save")

    got = writer.read()
    assert got is not None
    assert (got.step, got.phase, got.total_steps, got.loss) == (3, "save", 100, None)


def test_progress_is_a_grown_step_or_a_changed_phase() -> None:
    base = Progress(step=10, phase="train")

    assert is_progress(None, base)
    assert is_progress(base, Progress(step=11, phase="train"))
    assert is_progress(base, Progress(step=10, phase="eval"))
    assert not is_progress(base, Progress(step=10, phase="train", loss=0.1))
    assert not is_progress(base, Progress(step=9, phase="train"))


def test_progress_records_are_hashable_and_compare_by_fields() -> None:
    a = Progress(step=1, phase="train", raw={"step": 1})
    b = Progress(step=1, phase="train", raw={"step": 1, "x": 2})

    assert a == b
    assert hash(a) == hash(b)


def test_concurrent_reader_never_sees_a_partial_file(tmp_path: Path) -> None:
    path = tmp_path / "status" / "progress.json"
    write_progress(path, 0, total_steps=500)
    done = threading.Event()
    errors: list[BaseException] = []

    def write() -> None:
        try:
            padding = "x" * 4096  # a big record makes a torn read likely if writes were not atomic
            for step in range(1, 501):
                write_progress(path, step, total_steps=500, loss=1.0 / step, padding=padding)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            done.set()

    writer = threading.Thread(target=write)
    writer.start()
    reads, last_step = 0, 0
    try:
        while not done.is_set():
            got = read_progress(path)  # raises ProgressError on a torn file
            assert got is not None
            assert got.step >= last_step
            last_step = got.step
            reads += 1
    finally:
        writer.join(timeout=60)
    assert not errors
    assert reads > 10
    final = read_progress(path)
    assert final is not None and final.step == 500


def _read_with_deadline(path: Path) -> str:
    """read_progress in a thread; a FIFO that blocked it is freed by opening its write end."""
    outcome: list[str] = []

    def read() -> None:
        try:
            read_progress(path)
            outcome.append("read")
        except ProgressError as exc:
            outcome.append(str(exc))

    worker = threading.Thread(target=read, daemon=True)
    worker.start()
    worker.join(timeout=5)
    if worker.is_alive():
        with open(path, "wb"):  # unblock it, then fail
            pass
        worker.join(timeout=5)
        pytest.fail("read_progress blocked on a FIFO")
    return outcome[0]


def test_a_fifo_in_place_of_the_progress_file_is_refused_without_blocking(
    tmp_path: Path,
) -> None:
    path = tmp_path / "progress.json"
    os.mkfifo(path)
    assert _read_with_deadline(path) == f"{path}: not a regular file (a FIFO)"


def test_a_device_in_place_of_the_progress_file_is_never_read(tmp_path: Path) -> None:
    path = tmp_path / "progress.json"
    path.symlink_to("/dev/zero")  # reading it would never end
    assert _read_with_deadline(path) == f"{path}: not a regular file (a character device)"


def test_a_huge_progress_file_is_refused_after_reading_at_most_the_cap(tmp_path: Path) -> None:
    path = tmp_path / "progress.json"
    with open(path, "wb") as fh:
        fh.truncate(MAX_JSON_BYTES * 64)  # 64 MiB, sparse
    with pytest.raises(ProgressError, match=f"larger than {MAX_JSON_BYTES} bytes"):
        read_progress(path)


def test_a_folder_in_place_of_the_progress_file_is_refused_and_leaks_no_descriptor(
    tmp_path: Path,
) -> None:
    path = tmp_path / "progress.json"
    path.mkdir()
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(50):
        with pytest.raises(ProgressError, match=r"not a regular file \(a folder\)"):
            read_progress(path)
    assert len(os.listdir("/proc/self/fd")) == before


def test_a_loop_that_asks_for_save_requests_says_so_and_answers_them(tmp_path: Path) -> None:
    """#20: the writer announces `saves_on_request` once the loop has asked, never before, so
    the watchdog waits only on a trainer that will answer."""
    writer = ProgressWriter(tmp_path / "status" / "progress.json")
    writer.write(1)
    first = read_progress(writer.path)
    assert first is not None and first.saves_on_request is False
    assert writer.save_requested() is False
    writer.write(2)
    second = read_progress(writer.path)
    assert second is not None and second.saves_on_request is True
    request = save_request_file(writer.path)
    assert request == tmp_path / "status" / "save_request.json"
    request.write_text('{"requested_at": "2026-12-06T00:00:00Z", "step": 2}')
    assert writer.save_requested() is True
    writer.saved()
    assert not request.exists()
    writer.saved()  # answering twice is harmless
    assert writer.save_requested() is False
