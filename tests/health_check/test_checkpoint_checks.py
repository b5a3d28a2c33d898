"""health-check on the checkpoints real trainers write, and on checkpoints too big to read
within a probe's deadline."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from tests.health_check.conftest import Example
from tests.health_check.test_repairs import make_checkpoint, settle
from tests.trainguard.test_checkpoints import write_sparse_torch_zip, write_torch_zip

GB = 10**9


def big_checkpoints(folder: Path, steps: tuple[int, ...]) -> None:
    """Complete checkpoints each holding a 3.5 GB (sparse) optimizer.pt: a full CRC check of
    one takes seconds."""
    for step in steps:
        write_sparse_torch_zip(make_checkpoint(folder, step) / "optimizer.pt", 3_500_000_000)
    settle(folder)


def test_low_disk_is_critical_without_waiting_for_multi_gb_checkpoints(
    example: Example, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    big_checkpoints(example.base / "checkpoints", (10, 20, 30, 40, 50))
    monkeypatch.setenv("TRAINGUARD_HEALTH__CHECK_TIMEOUT", "1")
    monkeypatch.setenv("TRAINGUARD_HEALTH__DISK_MIN_FREE_GB", str(10**6))  # always "low"
    run = example.health(capsys, "--only", "disk_space", "--json")
    disk = run.check("disk_space")
    assert disk["status"] == "CRITICAL", disk
    assert disk["fix"]["action"].startswith("prune old checkpoints beyond keep_last=3")


def test_a_prune_past_its_deadline_is_stopped_cleanly_and_finished_by_the_next_fix(
    example: Example, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = example.base / "checkpoints"
    # Every kept checkpoint must pass the full CRC check before older ones may go: with a
    # wrong CRC in each 3.5 GB file, that takes far longer than the 1 s deadline.
    big_checkpoints(folder, (10, 20, 30, 40, 50))
    monkeypatch.setenv("TRAINGUARD_HEALTH__CHECK_TIMEOUT", "1")
    run = example.health(capsys, "--only", "checkpoints", "--fix", "--json")
    outcome = run.check("checkpoints")["fix"]
    assert outcome["applied"] is False
    assert "stopped at its 1 s deadline" in run.out
    assert sorted(p.name for p in folder.iterdir()) == [
        f"checkpoint-{step}" for step in (10, 20, 30, 40, 50)
    ]  # nothing half-deleted, no .pruning-* left behind


def test_checkpoints_that_are_all_invalid_are_critical_and_not_moved_by_fix(
    example: Example, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = example.base / "checkpoints"
    for step in (10, 20):
        (make_checkpoint(folder, step) / "trainer_state.json").unlink()
    settle(folder)
    run = example.health(capsys, "--only", "checkpoints", "--fix", "--json")
    check = run.check("checkpoints")
    assert run.code == 2
    assert check["status"] == "CRITICAL"
    assert "2 checkpoint(s) match 'checkpoint-*' but none is valid" in check["summary"]
    assert "will not restart" in check["summary"]
    assert check["fix"] is None
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint-10", "checkpoint-20"]


def test_lightning_ckpt_files_are_seen_validated_and_pruned(
    example: Example, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = example.base / "checkpoints"
    folder.mkdir(exist_ok=True)
    hour_ago = time.time() - 3600
    for epoch in range(6):
        step = (epoch + 1) * 100
        write_torch_zip(folder / f"epoch={epoch}-step={step}.ckpt")
        os.utime(folder / f"epoch={epoch}-step={step}.ckpt", (hour_ago + step, hour_ago + step))
    write_torch_zip(folder / "last.ckpt")  # saved with step 600
    os.utime(folder / "last.ckpt", (hour_ago + 600, hour_ago + 600))
    broken = folder / "epoch=6-step=700.ckpt"  # the save the crash cut short
    write_torch_zip(broken)
    broken.write_bytes(broken.read_bytes()[:50])
    os.utime(broken, (hour_ago + 700, hour_ago + 700))
    monkeypatch.setenv("TRAINGUARD_CHECKPOINTS__PATTERN", json.dumps("*.ckpt"))
    run = example.health(capsys, "--only", "checkpoints", "--json")
    check = run.check("checkpoints")
    assert check["status"] == "WARNING", check
    assert "1 invalid (epoch=6-step=700.ckpt: corrupt zip archive" in check["summary"]
    assert "newest valid: last.ckpt" in " ".join(check["details"])
    fixed = example.health(capsys, "--only", "checkpoints", "--fix", "--json")
    assert fixed.check("checkpoints")["status"] == "OK"
    assert sorted(p.name for p in folder.iterdir()) == [
        "epoch=3-step=400.ckpt",
        "epoch=4-step=500.ckpt",
        "epoch=5-step=600.ckpt",
        "last.ckpt",
        "quarantine",
    ]


def test_the_summary_says_how_many_were_checked_and_how_many_only_counted(
    example: Example, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = example.base / "checkpoints"
    for step in (10, 20, 30, 40):
        make_checkpoint(folder, step)
    settle(folder)
    run = example.health(capsys, "--only", "checkpoints", "--json")
    check = run.check("checkpoints")
    assert check["status"] == "OK", check
    # The newest is valid: the three older ones are counted by name, never opened.
    assert "newest valid: checkpoint-40" in check["summary"]
    assert "1 checked valid and 3 older ones counted, not opened" in check["summary"]
    metrics = {m["name"]: m["value"] for m in check["metrics"]}
    assert (metrics["checkpoints_valid"], metrics["checkpoints_older_unchecked"]) == (1, 3)
