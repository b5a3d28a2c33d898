"""The watchdog and the checkpoints it resumes from, end to end: a trainer that refuses its
checkpoint, checkpoints that are all invalid, and a prune that reads gigabytes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from daemon_watchdog.workspace_init import init_workspace
from tests.daemon_watchdog.test_supervisor_e2e import SCRIPT, Run, _set_key
from tests.health_check.test_repairs import settle
from tests.polling import wait_until
from tests.trainguard.test_checkpoints import make_checkpoint, write_sparse_torch_zip

pytestmark = pytest.mark.e2e

TRAINER = Path(__file__).parents[1] / "children" / "checkpoint_trainer.py"


@pytest.fixture
def picky(tmp_path: Path) -> Iterator[Run]:
    """A workspace whose daemon is `checkpoint_trainer.py`, with two complete checkpoints."""
    base = tmp_path / "ws"
    init_workspace(base)
    run = Run(base)
    run.configure(max_restarts=3, startup_grace=30)
    text = run.config.read_text()
    command = json.dumps([sys.executable, str(TRAINER), "--base-dir", "{base_dir}"])
    text = "\n".join(
        f"command = {command}" if line.startswith("command = ") else line
        for line in text.splitlines()
    )
    run.config.write_text(text + "\n")
    for step in (120, 140):
        make_checkpoint(base / "checkpoints", step)
    settle(base / "checkpoints")
    try:
        yield run
    finally:
        run.stop_all()


def _resumed(run: Run) -> str:
    return (run.base / "status" / "resumed_from").read_text()


def _running_from(name: str) -> Callable[[dict[str, Any]], bool]:
    return lambda s: s.get("state") == "RUNNING" and str(s.get("resumed_from")).endswith(name)


def _quarantined(run: Run) -> list[str]:
    folder = run.base / "checkpoints" / "quarantine"
    return sorted(p.name.split(".")[0] for p in folder.iterdir()) if folder.exists() else []


def test_a_checkpoint_the_trainer_refuses_by_name_is_quarantined_and_the_previous_used(
    picky: Run,
) -> None:
    (picky.base / "checkpoints" / "checkpoint-140" / "behaviour").write_text("refuse")
    picky.start()
    status = picky.wait_for(_running_from("checkpoint-120"), "running from checkpoint-120")
    assert _quarantined(picky) == ["checkpoint-140"]
    assert status["restart_count"] == 1
    assert status["restarts"][0]["quarantined"].startswith(
        "checkpoint-140: the trainer could not resume from it (the crash names it)"
    )
    shown = subprocess.run(
        [SCRIPT or "", "status", "-c", str(picky.config)], capture_output=True, text=True
    )
    assert "quarantined checkpoint checkpoint-140: the trainer could not" in shown.stdout
    assert _resumed(picky).endswith("checkpoint-120")


def test_a_checkpoint_the_trainer_dies_on_twice_in_a_row_is_quarantined(picky: Run) -> None:
    (picky.base / "checkpoints" / "checkpoint-140" / "behaviour").write_text("refuse-silently")
    picky.start()
    status = picky.wait_for(_running_from("checkpoint-120"), "running from checkpoint-120")
    assert _quarantined(picky) == ["checkpoint-140"]
    assert [r["resume_from"] for r in status["restarts"]] == ["checkpoint-140", "checkpoint-120"]
    assert "(died 2 times in a row on it)" in status["restarts"][1]["quarantined"]


def test_restart_after_fatal_uses_the_previous_checkpoint_not_the_refused_one(
    picky: Run,
) -> None:
    picky.config.write_text(_set_key(picky.config.read_text(), "watchdog", "max_restarts", 0))
    (picky.base / "checkpoints" / "checkpoint-140" / "behaviour").write_text("refuse")
    picky.start()
    picky.wait_for(lambda s: s.get("state") == "FATAL", "FATAL: restarts are disabled")
    assert _quarantined(picky) == ["checkpoint-140"]
    assert SCRIPT
    done = subprocess.run(
        [SCRIPT, "restart", "-c", str(picky.config)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    picky.wait_for(_running_from("checkpoint-120"), "running from checkpoint-120")


def test_a_progressing_daemon_that_crashes_keeps_its_checkpoint(picky: Run) -> None:
    picky.start()
    picky.wait_for(_running_from("checkpoint-140"), "running from checkpoint-140")
    os.kill(picky.status()["daemon_pid"], signal.SIGKILL)
    status = picky.wait_for(
        lambda s: s.get("restart_count") == 1 and _running_from("checkpoint-140")(s),
        "restarted from checkpoint-140",
    )
    assert "quarantined" not in status["restarts"][0]
    assert _quarantined(picky) == []


def test_checkpoints_that_are_all_invalid_are_fatal_and_left_in_place(picky: Run) -> None:
    for step in (120, 140):
        (picky.base / "checkpoints" / f"checkpoint-{step}" / "trainer_state.json").unlink()
    picky.start()
    status = picky.wait_for(lambda s: s.get("state") == "FATAL", "FATAL: none valid")
    assert "2 checkpoint(s)" in status["fatal_reason"]
    assert "none is valid" in status["fatal_reason"]
    assert "allow_fresh_start" in status["fatal_reason"]
    assert status["daemon_pid"] is None
    assert sorted(p.name for p in (picky.base / "checkpoints").iterdir()) == [
        "checkpoint-120",
        "checkpoint-140",
    ]


def test_allow_fresh_start_moves_invalid_checkpoints_aside_before_starting_over(
    picky: Run,
) -> None:
    text = _set_key(picky.config.read_text(), "checkpoints", "allow_fresh_start", True)
    picky.config.write_text(text)
    for step in (120, 140):
        (picky.base / "checkpoints" / f"checkpoint-{step}" / "trainer_state.json").unlink()
    picky.start()
    picky.wait_for(lambda s: s.get("state") == "RUNNING", "running from scratch")
    assert _resumed(picky) == ""
    assert _quarantined(picky) == ["checkpoint-120", "checkpoint-140"]
    assert [p.name for p in (picky.base / "checkpoints").iterdir()] == ["quarantine"]


def test_file_checkpoints_are_resumed_from_by_step(picky: Run) -> None:
    text = _set_key(picky.config.read_text(), "checkpoints", "pattern", "ckpt_*.pt")
    picky.config.write_text(text)
    folder = picky.base / "checkpoints"
    from tests.trainguard.test_checkpoints import write_torch_zip

    for step in (25, 50):
        write_torch_zip(folder / f"ckpt_{step:06d}.pt")
    newest = folder / "ckpt_000075.pt"
    write_torch_zip(newest)
    newest.write_bytes(newest.read_bytes()[:-40])  # cut short by the crash
    picky.start()
    picky.wait_for(_running_from("ckpt_000050.pt"), "running from ckpt_000050.pt")
    assert _quarantined(picky) == ["ckpt_000075"]


def test_a_prune_reading_gigabytes_never_holds_up_a_restart(picky: Run) -> None:
    text = _set_key(picky.config.read_text(), "watchdog", "prune_interval", 0.5)
    text = _set_key(text, "checkpoints", "keep_last", 2)
    picky.config.write_text(text)
    folder = picky.base / "checkpoints"
    # checkpoint-130, among the two newest a prune must check in full, holds a 3.5 GB sparse
    # optimizer.pt whose CRC is wrong: reading it takes seconds. The restart resumes from
    # checkpoint-140, which is complete and needs no such read.
    big = make_checkpoint(folder, 130)
    write_sparse_torch_zip(big / "optimizer.pt", 3_500_000_000)
    settle(folder)  # written an hour ago: not in flight
    watchdog = picky.start()
    picky.wait_for(_running_from("checkpoint-140"), "running from checkpoint-140")
    reading = _reading(watchdog, big / "optimizer.pt")
    wait_until(reading, timeout=30, interval=0.005, message="a prune reading optimizer.pt")
    daemon = picky.status()["daemon_pid"]
    os.kill(daemon, signal.SIGKILL)
    picky.wait_for(
        lambda s: s.get("state") == "RUNNING" and s.get("daemon_pid") not in (None, daemon),
        "restarted",
    )
    log = picky.base / "logs" / "watchdog.log"
    # The prune was told to stop (the choice needed it gone), not waited for.
    wait_until(lambda: "pruning checkpoints: stopped early" in log.read_text(), timeout=30,
               message="the prune to report it was stopped")  # fmt: skip


def _reading(watchdog: subprocess.Popen[bytes], path: Path) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return any(f.path == str(path) for f in psutil.Process(watchdog.pid).open_files())
        except psutil.Error:
            return False

    return check


def _big_newest_checkpoint(folder: Path, step: int) -> Path:
    """A checkpoint whose 3.5 GB optimizer.pt takes seconds to check in full."""
    big = make_checkpoint(folder, step)
    write_sparse_torch_zip(big / "optimizer.pt", 3_500_000_000)
    settle(folder)
    return big / "optimizer.pt"


def test_a_stop_while_the_first_checkpoint_is_being_checked_starts_no_daemon(
    picky: Run,
) -> None:
    optimizer = _big_newest_checkpoint(picky.base / "checkpoints", 160)
    watchdog = picky.start()
    wait_until(_reading(watchdog, optimizer), timeout=30, interval=0.005, message="the check")
    meanwhile = picky.status()  # this watchdog, starting: not nothing, nor an earlier state
    assert (meanwhile["state"], meanwhile["watchdog_pid"]) == ("STARTING", watchdog.pid)
    watchdog.send_signal(signal.SIGTERM)
    assert watchdog.wait(timeout=30) == 0
    status = picky.status()
    assert status["state"] == "STOPPED" and status["daemon_pid"] is None
    assert not (picky.base / "status" / "resumed_from").exists()  # no trainer ever started
    assert "started daemon" not in (picky.base / "logs" / "watchdog.log").read_text()


def test_a_stop_while_a_restart_chooses_its_checkpoint_starts_no_daemon(picky: Run) -> None:
    watchdog = picky.start()
    picky.wait_for(_running_from("checkpoint-140"), "running from checkpoint-140")
    optimizer = _big_newest_checkpoint(picky.base / "checkpoints", 160)
    _ask_restart(picky, watchdog)
    wait_until(_reading(watchdog, optimizer), timeout=30, interval=0.005, message="the check")
    watchdog.send_signal(signal.SIGTERM)
    assert watchdog.wait(timeout=30) == 0
    status = picky.status()
    assert status["state"] == "STOPPED" and status["daemon_pid"] is None
    log = (picky.base / "logs" / "watchdog.log").read_text()
    assert log.count("started daemon") == 1, log


def test_a_restart_asked_for_while_a_crash_is_handled_is_not_overruled_by_the_policy(
    picky: Run,
) -> None:
    picky.config.write_text(_set_key(picky.config.read_text(), "watchdog", "max_restarts", 0))
    watchdog = picky.start()
    picky.wait_for(_running_from("checkpoint-140"), "running from checkpoint-140")
    optimizer = _big_newest_checkpoint(picky.base / "checkpoints", 160)
    daemon = picky.status()["daemon_pid"]
    os.kill(daemon, signal.SIGKILL)  # with max_restarts = 0, FATAL: unless the operator says
    wait_until(_reading(watchdog, optimizer), timeout=30, interval=0.005, message="the check")
    _ask_restart(picky, watchdog)
    status = picky.wait_for(
        lambda s: _running_from("checkpoint-140")(s) and s.get("daemon_pid") != daemon,
        "running again from checkpoint-140",
    )
    assert status["restart_count"] == 1 and status["fatal_reason"] is None


def test_a_refused_checkpoint_that_cannot_be_moved_is_not_reported_as_moved(
    picky: Run,
) -> None:
    folder = picky.base / "checkpoints"
    (folder / "checkpoint-140" / "behaviour").write_text("refuse")
    (folder / "quarantine").write_text("a file where the folder goes")
    picky.start()
    status = picky.wait_for(
        lambda s: bool(s.get("restarts")) and "quarantined" in s["restarts"][0],
        "the refusal recorded",
    )
    assert status["restarts"][0]["quarantined"].endswith("(NOT moved: see log)")
    assert (folder / "checkpoint-140").is_dir()
    log = (picky.base / "logs" / "watchdog.log").read_text()
    assert "cannot quarantine invalid checkpoint checkpoint-140" in log


def _ask_restart(run: Run, watchdog: subprocess.Popen[bytes]) -> None:
    """What `daemon-watchdog restart` does, without waiting for the outcome: its request file,
    then SIGHUP (a SIGHUP alone only reloads the config)."""
    (run.base / "status" / "restart_request.json").write_text('{"requested_at": "now"}')
    watchdog.send_signal(signal.SIGHUP)
