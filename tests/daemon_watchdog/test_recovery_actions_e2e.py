"""Recovery by crash type end to end (#20): a real `daemon-watchdog run`, the real example
daemon with its simulated faults (`cuda_oom:N@STEP` strikes while batch_size > N), the real
config.json rewritten, `restart --reset-recovery` through the real CLI."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from daemon_watchdog.workspace_init import init_workspace
from tests.daemon_watchdog.test_supervisor_e2e import Run, _cli
from tests.polling import wait_until
from tests.trainguard.test_alerts import Receiver, receiver  # noqa: F401 - the fixture

pytestmark = pytest.mark.e2e

JOB = {"total_steps": 60, "save_steps": 10, "step_seconds": 0.03, "batch_size": 64}


def _recovery(run: Run, table: str) -> None:
    text = run.config.read_text()
    run.config.write_text(
        text.replace("[checkpoints]\n", f"[watchdog.recovery]\n{table}\n\n[checkpoints]\n")
    )


@pytest.fixture
def run(tmp_path: Path) -> Iterator[Run]:
    base = tmp_path / "ws"
    init_workspace(base, job=JOB)
    supervised = Run(base)
    try:
        yield supervised
    finally:
        supervised.stop_all()


def _job(run: Run) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((run.base / "config.json").read_text())
    return data


def _finished(status: dict[str, Any]) -> bool:
    return status.get("state") == "STOPPED" and status.get("state_reason") == (
        "daemon finished (exit 0)"
    )


def test_an_oom_halves_the_batch_size_resumes_and_finishes_then_reset_puts_it_back(
    run: Run,
    receiver: Receiver,  # noqa: F811 - the fixture
) -> None:
    run.configure(command_extra=["--fault", "cuda_oom:32@30"])
    _recovery(run, 'cuda_oom = { halve = "config:batch_size", floor = 1 }')
    with open(run.config, "a") as fh:
        fh.write(f'\n[alerts]\nurls = ["{receiver.url}"]\n')
    run.start()
    status = run.wait_for(_finished, "OOM at step 30, batch 32, finished", timeout=60)
    wait_until(lambda: receiver.posts, timeout=30, message="the crash alert")
    alert = receiver.posts[0]["message"]
    assert "recovery: cuda_oom after step 29: config:batch_size 64 -> 32" in alert, alert
    (restart,) = status["restarts"]
    assert restart["category"] == "cuda_oom" and restart["resume_from"] == "checkpoint-20"
    assert restart["recovery"] == ["cuda_oom after step 29: config:batch_size 64 -> 32"]
    assert _job(run)["batch_size"] == 32
    assert json.loads((run.base / "config.json.before-recovery").read_text())["batch_size"] == 64
    assert status["recovery"]["knobs"] == {"config:batch_size": {"original": 64, "value": 32}}
    assert (run.base / "checkpoints" / "checkpoint-60" / "model.safetensors").is_file()
    (crash,) = run.history()
    assert crash["category"] == "cuda_oom" and crash["recovery"] == restart["recovery"]
    daemon_log = (run.base / "logs" / "daemon.log").read_text()
    assert "at step 21 (batch_size 32)" in daemon_log

    shown = _cli(run, "status")
    assert "recovery: config:batch_size = 32 (was 64)" in shown.stdout, shown.stdout

    reset = _cli(run, "restart", "--reset-recovery")
    assert reset.returncode == 0, reset.stderr
    assert _job(run)["batch_size"] == 64
    status = run.wait_for(
        lambda s: _finished(s) and s["restart_requests"] == 1, "resumed from checkpoint-60: done"
    )
    assert status["recovery"]["knobs"] == {}
    assert status["recovery"]["events"][-1]["text"] == "reset: config:batch_size 32 -> 64"


def test_an_oom_at_the_floor_is_fatal_with_the_reason(run: Run) -> None:
    run.configure(command_extra=["--fault", "cuda_oom:16@30"])
    _recovery(run, 'cuda_oom = { halve = "config:batch_size", floor = 32 }')
    watchdog = run.start()
    status = run.wait_for(lambda s: s.get("state") == "FATAL", "FATAL at the floor", timeout=60)
    assert status["fatal_reason"].startswith(
        "cuda_oom after step 29 with config:batch_size = 32, already at its floor (32): halving "
        "it again cannot help; last crash: "
    ), status["fatal_reason"]
    assert status["restart_count"] == 1 and _job(run)["batch_size"] == 32
    assert watchdog.poll() is None  # FATAL stays up to report


def test_a_nan_loss_rewinds_past_the_newest_checkpoint(run: Run) -> None:
    run.configure(command_extra=["--fault", "nan@40"])
    _recovery(run, "nan_loss = { rewind = 1 }")
    run.start()
    status = run.wait_for(_finished, "NaN at step 40, rewound, finished", timeout=60)
    (restart,) = status["restarts"]
    assert restart["category"] == "nan_loss"
    assert restart["resume_from"] == "checkpoint-20"  # checkpoint-30, the newest, skipped
    assert restart["recovery"][0].startswith("nan_loss after step 40: rewound past checkpoint-30")
    quarantined = [p.name for p in (run.base / "checkpoints" / "quarantine").iterdir()]
    assert any(name.startswith("checkpoint-30") for name in quarantined), quarantined
    assert (run.base / "checkpoints" / "checkpoint-60" / "model.safetensors").is_file()


def test_a_config_json_that_is_not_json_skips_the_action_and_still_restarts(run: Run) -> None:
    run.configure(command_extra=["--fault", "cuda_oom:32@30"])
    _recovery(run, 'cuda_oom = { halve = "config:batch_size" }')
    run.start()
    run.wait_for(lambda s: (s.get("last_progress") or {}).get("step", 0) >= 5, "training")
    (run.base / "config.json").write_text("{batch_size: 64")  # the trainer has read it
    status = run.wait_for(lambda s: s.get("restart_count", 0) >= 1, "restarted after the OOM")
    (first,) = status["restarts"][:1]
    assert first["resume_from"] == "checkpoint-20"
    (line,) = first["recovery"]
    assert line.startswith("cuda_oom after step 29: cannot halve: config:batch_size: ")
    assert "is not JSON" in line and line.endswith("restarting unchanged")
    assert (run.base / "config.json").read_text() == "{batch_size: 64"
    assert not (run.base / "config.json.before-recovery").exists()
