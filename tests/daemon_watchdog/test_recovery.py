"""Choosing the checkpoint to resume from, and reading the crash a resumed daemon died of, on
real workspaces and real log files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from daemon_watchdog.diagnosis import diagnose_crash, load_scanner
from daemon_watchdog.recovery import NoValidCheckpoint, choose_checkpoint
from daemon_watchdog.workspace_init import init_workspace
from tests.health_check.test_repairs import make_checkpoint, settle
from trainguard.config import load_config
from trainguard.workspace import Workspace


def workspace(tmp_path: Path, **checkpoints: object) -> Workspace:
    base = tmp_path / "ws"
    init_workspace(base)
    config = base / "trainguard.toml"
    text = config.read_text()
    for key, value in checkpoints.items():
        text = text.replace("[checkpoints]\n", f"[checkpoints]\n{key} = {json.dumps(value)}\n")
    config.write_text(text)
    return Workspace(load_config(config, env={}))


def test_a_fresh_start_never_runs_beside_a_checkpoint_it_could_not_move(tmp_path: Path) -> None:
    ws = workspace(tmp_path, allow_fresh_start=True)
    bad = make_checkpoint(ws.checkpoints_dir, 10)
    (bad / "trainer_state.json").unlink()
    (bad / "notes.txt").write_text("keep me")
    (ws.checkpoints_dir / "quarantine").write_text("a file where the folder goes")
    settle(ws.checkpoints_dir)
    with pytest.raises(NoValidCheckpoint, match="checkpoint-10 could not be moved"):
        choose_checkpoint(ws)
    assert (bad / "notes.txt").read_text() == "keep me"


def test_a_fresh_start_moves_every_invalid_checkpoint_aside_first(tmp_path: Path) -> None:
    ws = workspace(tmp_path, allow_fresh_start=True)
    for step in (10, 20):
        (make_checkpoint(ws.checkpoints_dir, step) / "trainer_state.json").unlink()
    assert choose_checkpoint(ws) is None
    assert [p.name for p in ws.checkpoints_dir.iterdir()] == ["quarantine"]


def test_the_crash_is_its_traceback_not_the_resume_line_logged_before_it(tmp_path: Path) -> None:
    ws = workspace(tmp_path)
    ws.daemon_log.parent.mkdir(parents=True, exist_ok=True)
    ckpt = ws.checkpoints_dir / "checkpoint-20"
    ws.daemon_log.write_text(
        f"resuming from {ckpt} at step 21\n"
        "step 21 loss=0.3\n"
        "Traceback (most recent call last):\n"
        '  File "train.py", line 9, in <module>\n'
        "RuntimeError: SIMULATED FAULT\n"
    )
    diagnosis = diagnose_crash(ws, load_scanner(), 1, "exited with code 1")
    assert diagnosis.last_lines.startswith("Traceback (most recent call last):")
    assert "checkpoint-20" not in diagnosis.last_lines
