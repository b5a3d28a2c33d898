"""The example daemon's inbox, run for real: jobs claimed, trained in their own checkpoint
folders, moved to done once; refused with a reason; resumed after a SIGKILL, never twice."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from daemon_watchdog.example.seed import write_example_job
from daemon_watchdog.workspace_init import init_workspace
from tests.polling import wait_until
from trainguard.checkpoints import newest_valid
from trainguard.config import CheckpointsSection, load_config

pytestmark = pytest.mark.e2e

DAEMON = [sys.executable, "-m", "daemon_watchdog.example.daemon"]


@dataclass
class Run:
    proc: subprocess.Popen[bytes]
    log: Path

    def wait(self, timeout: float = 30) -> int:
        return self.proc.wait(timeout=timeout)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


StartDaemon = Callable[..., Run]


@pytest.fixture
def start_daemon() -> Iterator[StartDaemon]:
    """Start the daemon as a supervisor does (output appended to a log); kill all it left after."""
    runs: list[Run] = []

    def start(base: Path, *args: str, log_name: str = "daemon.log") -> Run:
        log = base / "logs" / log_name
        with open(log, "ab") as fh:
            proc = subprocess.Popen(
                [*DAEMON, "--base-dir", str(base), *args], stdout=fh, stderr=subprocess.STDOUT
            )
        runs.append(Run(proc, log))
        return runs[-1]

    try:
        yield start
    finally:
        # Orphaned workers are re-parented to pytest (a subreaper, see conftest): kill them too.
        leftovers = psutil.Process().children(recursive=True)
        for proc in leftovers:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        for run in runs:
            run.proc.wait(timeout=10)
        psutil.wait_procs(leftovers, timeout=10)


def seed(base: Path) -> Path:
    """A workspace whose own config.json job is 4 instant steps."""
    write_example_job(base, total_steps=4, save_steps=2, step_seconds=0)
    return base


def drop(base: Path, name: str, **knobs: Any) -> Path:
    """Drop a job as a careful producer does: written aside, renamed in."""
    return drop_text(base, f"{name}.json", json.dumps(knobs))


def drop_text(base: Path, filename: str, text: str) -> Path:
    aside = base / "inbox" / f".{filename}.tmp"
    aside.write_text(text)
    target = base / "inbox" / filename
    os.rename(aside, target)
    return target


def progress(base: Path) -> dict[str, Any]:
    try:
        data = json.loads((base / "status" / "progress.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def job_steps(base: Path, job: str) -> list[int]:
    folder = base / "checkpoints" / "jobs" / job
    return sorted(int(p.name.split("-")[1]) for p in folder.glob("checkpoint-*"))


def weights(base: Path, job: str, step: int) -> bytes:
    return (
        base / "checkpoints" / "jobs" / job / f"checkpoint-{step}" / "model.safetensors"
    ).read_bytes()


def count(output: str, pattern: str) -> int:
    return len(re.findall(pattern, output))


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def resume_arg_of_the_watchdog(base: Path) -> str:
    """What `daemon-watchdog` appends on a restart: the newest valid checkpoint it can see."""
    found = newest_valid(base / "checkpoints", CheckpointsSection())
    assert found is not None
    return str(found.path)


# --- the happy path ---------------------------------------------------------------------------


def test_empty_inbox_changes_nothing(tmp_path: Path, start_daemon: StartDaemon) -> None:
    base = seed(tmp_path / "ws")

    run = start_daemon(base)

    assert run.wait() == 0, run.output()
    assert names(base / "inbox") == []  # no claimed/, done/ or failed/ made for nothing
    assert names(base / "checkpoints") == ["checkpoint-2", "checkpoint-4"]
    assert "job " not in run.output()
    assert progress(base)["phase"] == "done" and "job" not in progress(base)


def test_jobs_are_claimed_trained_in_their_own_folder_and_moved_to_done(
    tmp_path: Path, start_daemon: StartDaemon
) -> None:
    base = seed(tmp_path / "ws")
    b = drop(base, "b", total_steps=5, save_steps=5)
    a = drop(base, "a", total_steps=40, save_steps=10, step_seconds=0.02, seed=2)
    dropped = {"a": a.read_bytes(), "b": b.read_bytes()}

    run = start_daemon(base)
    wait_until(lambda: progress(base).get("job") == "a", timeout=15, message="job a training")

    assert names(base / "inbox" / "claimed") == ["a.json"]  # claimed while it trains...
    assert names(base / "inbox") == ["b.json", "claimed"]  # ...the next one still waiting
    assert run.wait() == 0, run.output()
    assert names(base / "inbox" / "done") == ["a.json", "b.json"]
    assert {n: (base / "inbox" / "done" / f"{n}.json").read_bytes() for n in "ab"} == dropped
    assert names(base / "inbox" / "claimed") == []
    assert names(base / "inbox") == ["claimed", "done"]
    # Each job in its own folder; config.json's job keeps checkpoints/checkpoint-*.
    assert names(base / "checkpoints") == ["checkpoint-2", "checkpoint-4", "jobs"]
    assert job_steps(base, "a") == [10, 20, 30, 40] and job_steps(base, "b") == [5]
    state = json.loads((base / "checkpoints/jobs/a/checkpoint-40/trainer_state.json").read_text())
    assert (state["job"], state["seed"], state["global_step"]) == ("a", 2, 40)
    output = run.output()
    order = [output.index(line) for line in ("training done: 4", "job a: training done", "job b:")]
    assert order == sorted(order), output  # config.json's job, then the inbox by name
    final = progress(base)
    assert (final["job"], final["step"], final["phase"]) == ("b", 5, "done")


# --- refusals ---------------------------------------------------------------------------------


def test_malformed_jobs_go_to_failed_with_a_reason_and_never_stop_the_queue(
    tmp_path: Path, start_daemon: StartDaemon
) -> None:
    base = seed(tmp_path / "ws")
    (base / "inbox" / "done").mkdir()
    (base / "inbox" / "done" / "again.json").write_text("{}")
    bad = {
        "broken.json": ('{"total_steps": 5', "not valid JSON"),
        "list.json": ("[5]", "must be a JSON object, got list"),
        "typo.json": ('{"total_step": 5}', "typo.json: total_step: unknown key"),
        "value.json": ('{"total_steps": 0}', "total_steps: must be an integer >= 1, got 0"),
        "layout.json": ('{"checkpoint_layout": "plain"}', "an inbox job always saves folders"),
        "nomodel.json": ('{"base_model": "models/gone.safetensors"}', "base_model: no such file"),
        "two words.json": ("{}", "a job name must be"),
        "again.json": ("{}", "already in inbox/done/"),
    }
    for filename, (text, _) in bad.items():
        drop_text(base, filename, text)
    drop(base, "zz", total_steps=3)

    run = start_daemon(base)

    assert run.wait() == 0, run.output()
    failed = base / "inbox" / "failed"
    for filename, (text, reason) in bad.items():
        assert (failed / filename).read_text() == text, filename  # kept as it was
        stem = filename.removesuffix(".json")
        assert reason in (failed / f"{stem}.reason.txt").read_text(), filename
    assert names(base / "inbox" / "done") == ["again.json", "zz.json"]
    assert (base / "inbox" / "done" / "again.json").read_text() == "{}"
    assert [p.name for p in (base / "inbox").glob("*.json")] == []
    assert count(run.output(), r"refused") == len(bad)
    assert count(run.output(), r"started worker") == 2  # config.json's job and zz: nothing else

    again = start_daemon(base, log_name="again.log")  # no crash loop: nothing left to try
    assert again.wait() == 0, again.output()
    assert "job " not in again.output()


# --- two daemons, crashes ---------------------------------------------------------------------


def test_two_daemons_on_one_inbox_train_each_job_once(
    tmp_path: Path, start_daemon: StartDaemon
) -> None:
    base = seed(tmp_path / "ws")
    assert start_daemon(base, log_name="config.log").wait() == 0
    final = str(base / "checkpoints" / "checkpoint-4")  # both resume config.json's finished job
    jobs = [f"j{i}" for i in range(8)]
    for name in jobs:
        drop(base, name, total_steps=10, save_steps=5, step_seconds=0.01)

    runs = [start_daemon(base, "--resume-from", final, log_name=f"d{i}.log") for i in range(2)]

    for run in runs:
        assert run.wait() == 0, run.output()
    outputs = "".join(run.output() for run in runs)
    for name in jobs:
        assert count(outputs, rf"job {name}: training from") == 1, outputs
        assert count(outputs, rf"job {name}: training done") == 1, outputs
        assert count(outputs, rf"job {name}: done, moved to") == 1, outputs
    assert names(base / "inbox" / "done") == [f"{name}.json" for name in jobs]
    assert names(base / "inbox" / "claimed") == []


def test_sigkilled_mid_job_the_job_resumes_from_its_own_checkpoint_bit_identical(
    tmp_path: Path, start_daemon: StartDaemon
) -> None:
    # Job a finishes at checkpoint-60 first: job b must never be resumed from it.
    jobs: dict[str, dict[str, float]] = {
        "a": {"total_steps": 60, "save_steps": 10},
        "b": {"total_steps": 60, "save_steps": 10, "step_seconds": 0.04, "seed": 1},
    }
    workspaces = []
    for folder in ("reference", "ws"):
        base = seed(tmp_path / folder)
        for name, knobs in jobs.items():
            drop(base, name, **knobs)
        workspaces.append(base)
    reference, base = workspaces
    uninterrupted = start_daemon(reference)
    first = start_daemon(base)

    def b_training() -> psutil.Process | None:
        if (
            progress(base).get("job") != "b"
            or progress(base)["step"] < 25
            or not job_steps(base, "b")
        ):
            return None
        workers = [p for p in psutil.Process(first.proc.pid).children() if "--job" in p.cmdline()]
        return workers[0] if workers else None

    worker = wait_until(b_training, timeout=20, message="job b past step 25")
    first.proc.send_signal(signal.SIGKILL)
    assert first.wait() == -signal.SIGKILL
    worker.suspend()  # the orphan lives on, frozen: it still holds job b
    resume = resume_arg_of_the_watchdog(base)
    assert resume == str(base / "checkpoints" / "checkpoint-4")  # config.json's, never a job's

    blocked = start_daemon(base, "--resume-from", resume, log_name="while-orphan.log")
    assert blocked.wait() == 0, blocked.output()
    assert "job b" not in blocked.output()  # held by the orphan: not trained by two
    assert names(base / "inbox" / "claimed") == ["b.json"]

    worker.kill()  # what the watchdog does to an orphan before it restarts the daemon
    worker.wait(timeout=10)
    newest = job_steps(base, "b")[-1]
    assert 10 <= newest < 60
    second = start_daemon(base, "--resume-from", resume, log_name="restart.log")

    assert second.wait() == 0, second.output()
    restart = second.output()
    assert "job b: left claimed by an earlier run" in restart
    own = base / "checkpoints" / "jobs" / "b" / f"checkpoint-{newest}"
    assert f"job b: resuming from {own} at step {newest + 1}" in restart
    assert "job b: training from" not in restart and "job a" not in restart
    assert uninterrupted.wait() == 0, uninterrupted.output()
    assert weights(base, "b", 60) == weights(reference, "b", 60)
    assert weights(base, "a", 60) == weights(reference, "a", 60)
    everything = first.output() + restart
    assert count(everything, r"job b: training done") == 1
    assert names(base / "inbox" / "done") == ["a.json", "b.json"]
    assert names(base / "inbox" / "claimed") == []


def test_a_crash_between_the_final_checkpoint_and_done_does_not_train_again(
    tmp_path: Path, start_daemon: StartDaemon
) -> None:
    base = seed(tmp_path / "ws")
    drop(base, "c", total_steps=6, save_steps=3)
    # A file where inbox/done/ should be: the daemon dies moving the finished job there.
    (base / "inbox" / "done").write_text("in the way")

    crashed = start_daemon(base)

    assert crashed.wait() == 1, crashed.output()
    assert "job c: training done: 6 steps" in crashed.output()
    assert names(base / "inbox" / "claimed") == ["c.json"]
    final = base / "checkpoints" / "jobs" / "c" / "checkpoint-6" / "model.safetensors"
    before = (final.stat().st_mtime_ns, final.read_bytes())
    (base / "inbox" / "done").unlink()

    again = start_daemon(base, "--resume-from", resume_arg_of_the_watchdog(base), log_name="2.log")

    assert again.wait() == 0, again.output()
    output = again.output()
    assert "job c: its final" in output and "already complete: not training it again" in output
    assert "--job" not in output  # no worker started for it
    assert (final.stat().st_mtime_ns, final.read_bytes()) == before
    assert job_steps(base, "c") == [3, 6]
    assert names(base / "inbox" / "done") == ["c.json"]
    assert names(base / "inbox" / "claimed") == []


def test_the_worker_refuses_to_resume_a_job_from_another_jobs_checkpoint(
    tmp_path: Path, start_daemon: StartDaemon
) -> None:
    base = seed(tmp_path / "ws")
    drop(base, "a", total_steps=4, save_steps=2)
    assert start_daemon(base).wait() == 0
    (base / "inbox" / "claimed" / "b.json").write_text('{"total_steps": 4}')
    job_b = ["--job", str(base / "inbox" / "claimed" / "b.json")]
    of_a = ["--resume-from", str(base / "checkpoints" / "jobs" / "a" / "checkpoint-2")]
    of_config = ["--resume-from", str(base / "checkpoints" / "checkpoint-2")]
    cases = [
        ([*job_b, *of_a], "belongs to inbox job 'a', not to inbox job 'b'"),
        ([*job_b, *of_config], "belongs to the config.json job, not to inbox job 'b'"),
        (of_a, "belongs to inbox job 'a', not to the config.json job"),
    ]
    for args, message in cases:
        result = subprocess.run(
            [sys.executable, str(base / "train.py"), "--base-dir", str(base), *args],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 1, result.stdout
        assert message in result.stderr.splitlines()[-1], result.stderr


# --- waiting on the inbox ---------------------------------------------------------------------


def test_watch_inbox_idles_trains_what_arrives_and_stops_on_sigterm(
    tmp_path: Path, start_daemon: StartDaemon
) -> None:
    base = seed(tmp_path / "ws")

    run = start_daemon(base, "--watch-inbox")
    wait_until(lambda: progress(base).get("phase") == "idle", timeout=15, message="idle")
    drop(base, "late", total_steps=3)
    wait_until((base / "inbox" / "done" / "late.json").exists, timeout=15, message="late done")
    wait_until(lambda: progress(base).get("phase") == "idle", timeout=15, message="idle again")
    assert run.proc.poll() is None

    started = time.monotonic()
    run.proc.send_signal(signal.SIGTERM)

    assert run.wait(timeout=10) == 143, run.output()
    assert time.monotonic() - started < 5
    assert count(run.output(), r"waiting for jobs") == 2
    assert job_steps(base, "late") == [2, 3]  # save_steps 2 from config.json


def test_init_gives_the_idle_phase_no_hang_timeout(tmp_path: Path) -> None:
    config = load_config(init_workspace(tmp_path / "ws"), env={})

    assert config.watchdog.phase_timeouts["idle"] == 0
