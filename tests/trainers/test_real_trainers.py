"""Real trainers under the watchdog: Hugging Face Trainer, Lightning, a plain PyTorch loop.

Each is SIGKILLed in the middle of a save, once, the way a crash or a preemption would, and
must end with its training finished from the newest *complete* checkpoint: never resumed from
the half-written one, never restarted from step 0. CPU torch and tiny models built in code,
no download; opt-in (`make test-trainers`), since torch is heavy.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from daemon_watchdog.workspace_init import init_workspace
from tests.daemon_watchdog.test_supervisor_e2e import SCRIPT, Run, _set_key
from trainguard.checkpoints import list_checkpoints
from trainguard.config import CheckpointsSection

pytestmark = [pytest.mark.trainers, pytest.mark.e2e]

HERE = Path(__file__).parent
ROOT = HERE.parents[1]


class TrainerRun(Run):
    def __init__(self, base: Path, env: dict[str, str]) -> None:
        super().__init__(base)
        self.env = env

    def start(self, *args: str) -> subprocess.Popen[bytes]:
        assert SCRIPT
        log = open(self.base / "watchdog.out", "ab")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            [SCRIPT, "run", "-c", str(self.config), *args], stdout=log, stderr=log, env=self.env
        )
        log.close()
        self.procs.append(proc)
        return proc


def workspace(tmp_path: Path, script: str, pattern: str, die_at: int | None) -> TrainerRun:
    base = tmp_path / "ws"
    init_workspace(base)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if die_at is not None:
        env["DIE_SAVING_AT"] = str(die_at)
    run = TrainerRun(base, env)
    # torch and transformers take seconds to import on a loaded machine
    run.configure(startup_grace=180, progress_timeout=180, max_restarts=3)
    text = run.config.read_text()
    command = json.dumps([sys.executable, str(HERE / script), "--base-dir", "{base_dir}"])
    text = "\n".join(
        f"command = {command}" if line.startswith("command = ") else line
        for line in text.splitlines()
    )
    text = _set_key(text + "\n", "checkpoints", "pattern", pattern)
    if pattern != "checkpoint-*":
        text = _set_key(text, "checkpoints", "required_files", [])
    run.config.write_text(_set_key(text, "checkpoints", "keep_last", 5))
    return run


@pytest.fixture
def runs() -> Iterator[list[TrainerRun]]:
    started: list[TrainerRun] = []
    try:
        yield started
    finally:
        for run in started:
            run.stop_all()


def finish(run: TrainerRun) -> dict[str, Any]:
    run.start()
    status = run.wait_for(lambda s: s.get("state") in ("STOPPED", "FATAL"), "the end", 600)
    assert status["state"] == "STOPPED", f"{status}\n{run.tail()}\n{daemon_log(run)}"
    return status


def daemon_log(run: TrainerRun) -> str:
    path = run.base / "logs" / "daemon.log"
    return path.read_text()[-4000:] if path.exists() else ""


def quarantined(run: TrainerRun) -> list[str]:
    folder = run.base / "checkpoints" / "quarantine"
    return sorted(p.name.rsplit(".", 1)[0] for p in folder.iterdir()) if folder.exists() else []


def test_hf_trainer_killed_mid_save_resumes_from_the_last_complete_checkpoint(
    tmp_path: Path, runs: list[TrainerRun]
) -> None:
    run = workspace(tmp_path, "hf_trainer.py", "checkpoint-*", die_at=20)
    runs.append(run)
    status = finish(run)
    [crash] = status["restarts"]
    assert crash["exit_code"] == -signal.SIGKILL
    assert crash["resume_from"] == "checkpoint-10"  # not the weights-only checkpoint-20
    assert [name.split(".")[0] for name in quarantined(run)] == ["checkpoint-20"]
    partial = next((run.base / "checkpoints" / "quarantine").iterdir())
    assert (partial / "model.safetensors").exists() and not (
        partial / "trainer_state.json"
    ).exists()
    infos = list_checkpoints(run.base / "checkpoints", CheckpointsSection())
    assert [(i.path.name, i.valid) for i in infos] == [
        ("checkpoint-10", True),
        ("checkpoint-20", True),
        ("checkpoint-30", True),
    ]
    state = json.loads(
        (run.base / "checkpoints" / "checkpoint-30" / "trainer_state.json").read_text()
    )
    assert state["global_step"] == 30
    assert "done at step 30" in daemon_log(run)


def test_hf_trainer_resumes_past_a_truncated_newest_checkpoint(
    tmp_path: Path, runs: list[TrainerRun]
) -> None:
    run = workspace(tmp_path, "hf_trainer.py", "checkpoint-*", die_at=None)
    runs.append(run)
    finish(run)
    run.stop_all()
    folder = run.base / "checkpoints"
    weights = folder / "checkpoint-30" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    (run.base / "status" / "watchdog.json").unlink()  # a new run of the same workspace
    finish(run)
    assert "started from checkpoint-20" in (run.base / "logs" / "watchdog.log").read_text()
    assert [name.split(".")[0] for name in quarantined(run)] == ["checkpoint-30"]
    assert "done at step 30" in daemon_log(run)


def test_lightning_killed_mid_save_resumes_from_last_ckpt(
    tmp_path: Path, runs: list[TrainerRun]
) -> None:
    run = workspace(tmp_path, "lightning_trainer.py", "*.ckpt", die_at=20)
    runs.append(run)
    status = finish(run)
    [crash] = status["restarts"]
    assert crash["resume_from"] == "last.ckpt"
    assert quarantined(run) == ["epoch=0-step=20.ckpt"]
    names = sorted(p.name for p in (run.base / "checkpoints").glob("*.ckpt"))
    assert "epoch=0-step=30.ckpt" in names
    rules = CheckpointsSection(pattern="*.ckpt", required_files=[])
    assert all(i.valid for i in list_checkpoints(run.base / "checkpoints", rules))
    assert "done at step 30" in daemon_log(run)


def test_plain_torch_loop_killed_mid_save_resumes_from_the_previous_file(
    tmp_path: Path, runs: list[TrainerRun]
) -> None:
    run = workspace(tmp_path, "plain_loop.py", "ckpt_*.pt", die_at=20)
    runs.append(run)
    status = finish(run)
    [crash] = status["restarts"]
    assert crash["resume_from"] == "ckpt_000010.pt"
    assert quarantined(run) == ["ckpt_000020.pt"]
    assert "resumed from" in daemon_log(run) and "at step 10" in daemon_log(run)
    rules = CheckpointsSection(pattern="ckpt_*.pt", required_files=[])
    infos = list_checkpoints(run.base / "checkpoints", rules)
    assert [(i.path.name, i.valid) for i in infos] == [
        ("ckpt_000010.pt", True),
        ("ckpt_000020.pt", True),
        ("ckpt_000030.pt", True),
    ]
