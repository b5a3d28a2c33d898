"""`daemon-watchdog start`: the watchdog detached from the terminal, `start` returning once it
has published its state, so that `status` right after never races."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from daemon_watchdog.workspace_init import init_workspace
from tests.daemon_watchdog.test_status_cli import SCRIPT, cli
from trainguard.config import read_toml


@pytest.fixture
def workspace(tmp_path: Path) -> Iterator[Path]:
    config = init_workspace(tmp_path / "run1")
    try:
        yield config
    finally:
        cli("stop", "-c", str(config))  # nothing running: a no-op


def test_start_returns_once_up_then_status_and_stop_work(workspace: Path) -> None:
    started = cli("start", "-c", str(workspace))
    assert started.returncode == 0, started.stderr
    assert started.stdout.startswith("watchdog started (pid ")
    pid = int(started.stdout.split("(pid ")[1].split(")")[0])
    state = json.loads((workspace.parent / "status" / "watchdog.json").read_text())
    assert state["watchdog_pid"] == pid  # published before `start` returned
    watchdog = psutil.Process(pid)
    assert os.getsid(pid) == pid  # its own session: the terminal's hangup never reaches it
    assert cli("status", "-c", str(workspace)).returncode in (0, 1)  # RUNNING or on its way
    second = cli("start", "-c", str(workspace))
    assert second.returncode == 75, second.stdout + second.stderr
    assert f"another watchdog (pid {pid}) already supervises" in second.stderr
    assert watchdog.is_running()
    stopped = cli("stop", "-c", str(workspace))
    assert stopped.returncode == 0, stopped.stderr
    psutil.wait_procs([watchdog], timeout=30)
    assert not watchdog.is_running() or watchdog.status() == psutil.STATUS_ZOMBIE
    assert cli("status", "-c", str(workspace)).returncode == 4  # STOPPED


def test_start_with_a_bad_config_starts_nothing(tmp_path: Path) -> None:
    config = init_workspace(tmp_path / "run1")
    config.write_text(
        config.read_text().replace("[watchdog]\n", "[watchdog]\nmax_restart = 3\n", 1)
    )
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    done = cli("start", "-c", str(config))
    assert done.returncode == 78
    assert "did you mean max_restarts?" in done.stderr
    assert not (tmp_path / "run1" / "status" / "watchdog.json").exists()
    after = {p.pid for p in psutil.Process().children(recursive=True)}
    assert after <= before


PLAIN_TRAINER = """\
import os, pathlib, sys
# A trainer of the user's own: prints its steps, saves ckpt files, resumes with --resume-from.
start = 0
if "--resume-from" in sys.argv:
    start = int(pathlib.Path(sys.argv[sys.argv.index("--resume-from") + 1]).read_text())
pathlib.Path("checkpoints").mkdir(exist_ok=True)
for step in range(start + 1, 4):
    print(f"step {step}", flush=True)
    pathlib.Path(f"checkpoints/checkpoint-{step}").write_text(str(step))
pathlib.Path("resumed-from.txt").write_text(str(start))
"""


def test_init_for_your_own_trainer_writes_a_workspace_that_supervises_it(tmp_path: Path) -> None:
    run1 = tmp_path / "run1"
    run1.mkdir()
    (run1 / "train.py").write_text(PLAIN_TRAINER)
    made = cli("init", str(run1), "--command", sys.executable, "train.py", "--epochs", "3")
    assert made.returncode == 0, made.stderr
    config = run1 / "trainguard.toml"
    assert config.stat().st_mode & 0o777 == 0o600
    assert not (run1 / "config.json").exists()  # none of the example's files
    loaded = read_toml(config)
    assert loaded["daemon"]["command"] == [sys.executable, "train.py", "--epochs", "3"]
    assert loaded["daemon"]["resume_args"] == ["--resume-from", "{checkpoint}"]
    health = subprocess.run(
        [str(Path(sys.executable).parent / "health-check"), "-c", str(config), "--only",
         "config,directories,required_files", "--quiet"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert health.returncode == 0, health.stdout + health.stderr
    assert health.stdout.startswith("HEALTH OK")
    done = subprocess.run(
        [str(SCRIPT), "run", "-c", str(config), "--exit-when-done"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert (run1 / "resumed-from.txt").read_text() == "0"  # a first start: no checkpoint yet
    assert "step 3" in (run1 / "logs" / "daemon.log").read_text()


def test_init_hf_preset_and_its_refusals(tmp_path: Path) -> None:
    made = cli("init", str(tmp_path / "hf"), "--hf", "--command", "python", "train.py")
    assert made.returncode == 0, made.stderr
    loaded = read_toml(tmp_path / "hf" / "trainguard.toml")
    assert loaded["daemon"]["resume_args"] == ["--resume_from_checkpoint", "{checkpoint}"]
    assert loaded["checkpoints"]["required_files"] == ["trainer_state.json"]
    alone = cli("init", str(tmp_path / "x"), "--hf")
    assert alone.returncode == 2 and "--hf goes with --command" in alone.stderr
    again = cli("init", str(tmp_path / "hf"), "--command", "python", "train.py")
    assert again.returncode == 1 and "already exists (use --force" in again.stderr
