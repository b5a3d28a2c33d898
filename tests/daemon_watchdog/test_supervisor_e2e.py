"""The watchdog end to end: a real `daemon-watchdog run`, the real example daemon, real signals."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from daemon_watchdog.workspace_init import init_workspace
from tests.polling import wait_until
from trainguard.procs import OWNER_ENV

pytestmark = pytest.mark.e2e

SCRIPT = shutil.which("daemon-watchdog", path=str(Path(sys.executable).parent))
FAST = {
    "check_interval": 1,
    "progress_timeout": 4,
    "startup_grace": 15,
    "backoff_base": 0.2,
    "backoff_max": 1,
    "max_restarts": 3,
}


class Run:
    """A workspace and the watchdog supervising it."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.procs: list[subprocess.Popen[bytes]] = []

    @property
    def config(self) -> Path:
        return self.base / "trainguard.toml"

    def configure(self, *, command_extra: list[str] | None = None, **watchdog: Any) -> None:
        text = self.config.read_text()
        for key, value in {**FAST, **watchdog}.items():
            text = _set_key(text, "watchdog", key, value)
        text = _set_key(text, "daemon", "stop_timeout", 3)
        if command_extra:
            extra = ", ".join(json.dumps(a) for a in command_extra)
            text = text.replace(
                '"--base-dir", "{base_dir}"]', f'"--base-dir", "{{base_dir}}", {extra}]'
            )
        self.config.write_text(text)

    def start(self, *args: str) -> subprocess.Popen[bytes]:
        assert SCRIPT
        log = open(self.base / "watchdog.out", "ab")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            [SCRIPT, "run", "-c", str(self.config), *args], stdout=log, stderr=log
        )
        log.close()
        self.procs.append(proc)
        return proc

    def status(self) -> dict[str, Any]:
        try:
            status: dict[str, Any] = json.loads(
                (self.base / "status" / "watchdog.json").read_text()
            )
            return status
        except (OSError, ValueError):
            return {}

    def wait_for(self, predicate: Any, message: str, timeout: float = 30) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            status = self.status()
            return status if status and predicate(status) else None

        try:
            return wait_until(check, timeout=timeout, message=message)
        except AssertionError:
            raise AssertionError(
                f"{message}; last status {self.status()}; log:\n{self.tail()}"
            ) from None

    def tail(self) -> str:
        out = self.base / "watchdog.out"
        return out.read_text()[-3000:] if out.exists() else ""

    def daemon_tree(self) -> list[psutil.Process]:
        token = self.status().get("owner_token")
        found = []
        for proc in psutil.process_iter():
            try:
                if token and proc.environ().get(OWNER_ENV) == token:
                    found.append(proc)
            except psutil.Error:
                continue
        return found

    def worker(self) -> psutil.Process:
        pid = self.status()["daemon_pid"]
        return wait_until(
            lambda: next(iter(psutil.Process(pid).children()), None), message="worker"
        )

    def history(self) -> list[dict[str, Any]]:
        path = self.base / ".crash_history.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _set_key(text: str, section: str, key: str, value: Any) -> str:
    lines = text.splitlines()
    start = lines.index(f"[{section}]")
    literal = json.dumps(value)
    for i in range(start + 1, len(lines)):
        if lines[i].startswith("["):
            break
        if lines[i].split("=")[0].strip() == key:
            lines[i] = f"{key} = {literal}"
            return "\n".join(lines) + "\n"
    lines.insert(start + 1, f"{key} = {literal}")
    return "\n".join(lines) + "\n"


@pytest.fixture
def run(tmp_path: Path) -> Iterator[Run]:
    base = tmp_path / "ws"
    init_workspace(base, job={"total_steps": 400, "save_steps": 10, "step_seconds": 0.03})
    supervised = Run(base)
    supervised.configure()
    try:
        yield supervised
    finally:
        supervised.stop_all()


def _running_past(step: int) -> Any:
    return lambda s: (
        s.get("state") == "RUNNING" and (s.get("last_progress") or {}).get("step", 0) >= step
    )


def _restarted(count: int) -> Any:
    return lambda s: s.get("restart_count", 0) >= count and s.get("state") == "RUNNING"


def test_sigkilled_daemon_restarts_from_latest_valid_checkpoint_and_orphan_is_gone(
    run: Run,
) -> None:
    watchdog = run.start()
    run.wait_for(_running_past(25), "training past step 25")
    # The crash detector was loaded at start, not left for the first crash to load.
    assert "crash detector loaded: " in (run.base / "logs" / "watchdog.log").read_text()
    worker = run.worker()
    daemon_pid = run.status()["daemon_pid"]
    os.kill(daemon_pid, signal.SIGKILL)
    status = run.wait_for(_restarted(1), "one restart")
    crash = status["restarts"][0]
    assert crash["category"] == "unknown" and crash["exit_code"] == -9  # no OOM evidence
    assert crash["resume_from"].startswith("checkpoint-")
    assert status["resumed_from"].endswith(crash["resume_from"])
    assert status["daemon_pid"] != daemon_pid
    assert not _alive(worker), "the orphaned train.py worker survived the restart"
    assert [r["category"] for r in run.history()] == ["unknown"]
    # Its config was validated in a child: pydantic (~10 MiB) never entered the watchdog.
    assert status["watchdog_pid"] == watchdog.pid
    assert "pydantic" not in Path(f"/proc/{watchdog.pid}/maps").read_text()


def test_a_locked_crash_history_does_not_hold_up_the_restart(run: Run) -> None:
    # A cron `crash-detector` appending to the history holds its lock: the watchdog records
    # the crash there once the new daemon is started, not before.
    run.start()
    run.wait_for(_running_past(15), "training past step 15")
    old = run.status()["daemon_pid"]
    history = run.base / ".crash_history.jsonl"
    with open(history, "ab") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        os.kill(old, signal.SIGKILL)
        status = run.wait_for(
            lambda s: s.get("daemon_pid") not in (None, old), "a new daemon while locked"
        )
        assert psutil.Process(status["daemon_pid"]).is_running()
        assert run.history() == []
    run.wait_for(_restarted(1), "running again")
    wait_until(lambda: [r["category"] for r in run.history()] == ["unknown"], message="record")


def test_a_marked_process_outside_our_tree_is_stopped_after_a_crash(run: Run) -> None:
    """A worker some other process started for the daemon (not re-parented to the watchdog)
    is found by the token sweep, which runs just after the restart."""
    run.start()
    run.wait_for(_running_past(15), "training past step 15")
    token = run.status()["owner_token"]
    pause = [sys.executable, "-c", "import signal; signal.pause()"]
    escaped = subprocess.Popen(pause, env={**os.environ, OWNER_ENV: token})
    try:
        os.kill(run.status()["daemon_pid"], signal.SIGKILL)
        run.wait_for(_restarted(1), "one restart")
        assert escaped.wait(timeout=10) == -signal.SIGKILL
        assert "escaped our process tree" in (run.base / "logs" / "watchdog.log").read_text()
    finally:
        if escaped.poll() is None:
            escaped.kill()
            escaped.wait()


def test_real_segfault_restarts_with_category_segfault(run: Run) -> None:
    run.configure(command_extra=["--fault", "segfault@25"])
    run.start()
    status = run.wait_for(_restarted(1), "restart after the segfault")
    assert status["restarts"][0]["category"] == "segfault"
    assert status["restarts"][0]["exit_code"] == -11
    assert [r["category"] for r in run.history()] == ["segfault"]


def test_exit_1_restarts_once(run: Run) -> None:
    run.configure(command_extra=["--fault", "exit:1@25"])
    run.start()
    status = run.wait_for(_restarted(1), "restart after exit 1")
    assert status["restarts"][0]["exit_code"] == 1
    assert status["restart_count"] == 1


def test_hang_without_progress_is_dumped_killed_and_restarted(run: Run) -> None:
    run.configure(command_extra=["--fault", "hang@25"])
    run.start()
    status = run.wait_for(_restarted(1), "restart after the hang", timeout=45)
    assert status["restarts"][0]["category"] == "timeout"
    assert status["restarts"][0]["reason"].startswith("hang: no progress")
    assert [r["category"] for r in run.history()] == ["timeout"]
    incidents = list((run.base / "status" / "incidents").glob("*hang*.json"))
    assert len(incidents) == 1
    assert "_wait_for_allreduce" in json.loads(incidents[0].read_text())["stacks"]


def test_a_hang_is_judged_by_the_rhythm_learned_not_the_fixed_timeout(run: Run) -> None:
    """#20: with progress_timeout at its default 600 s, a trainer stepping every 30 ms that
    freezes is restarted once 5x its longest silence has passed (at least the floor, 1 s
    here), not after ten minutes; what was learned stays for the next daemon."""
    run.configure(
        command_extra=["--fault", "hang@60"], progress_timeout=600, progress_timeout_min=1
    )
    run.start()
    running = run.wait_for(
        lambda s: (
            (s.get("hang_threshold") or {}).get("phase") == "train"
            and s["hang_threshold"]["learned"] is True
        ),
        "a learned threshold for the train phase",
    )
    assert running["hang_threshold"]["seconds"] < 600
    status = run.wait_for(_restarted(1), "restart after the hang", timeout=90)
    crash = status["restarts"][0]
    assert crash["category"] == "timeout"
    assert "; threshold " in crash["reason"] and "learned: 5 x" in crash["reason"], crash
    assert status["step_rhythm"]["train"] > 0
    out = subprocess.run(
        [str(SCRIPT), "status", "-c", str(run.config)], capture_output=True, text=True, check=False
    )
    assert "longest silences: " in out.stdout and "train " in out.stdout, out.stdout


def test_the_init_workspace_as_written_restarts_a_frozen_trainer_on_a_5_s_threshold(
    tmp_path: Path,
) -> None:
    """#20's goal with the config `init` writes, untouched but for the simulated hang: the
    threshold is learned, floored at the template's 5 s, not its progress_timeout of 30 s."""
    base = tmp_path / "ws"
    init_workspace(base, job={"total_steps": 400, "save_steps": 50, "step_seconds": 0.1})
    run = Run(base)
    try:
        run.start()
        run.wait_for(_running_past(20), "training past step 20")
        for proc in run.daemon_tree():  # frozen: a SIGSTOPped tree stops at once when killed
            proc.suspend()
        status = run.wait_for(_restarted(1), "restart after the hang", timeout=90)
    finally:
        run.stop_all()
    reason = status["restarts"][0]["reason"]
    assert "(train; threshold 5 s, learned: 5 x " in reason and "raised to the floor" in reason, (
        reason
    )


def _checkpoint_steps(base: Path) -> list[int]:
    names = (
        p.name.removeprefix("checkpoint-") for p in (base / "checkpoints").glob("checkpoint-*")
    )
    return sorted(int(n) for n in names if n.isdigit())


def _stop(run: Run) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), "stop", "-c", str(run.config)], capture_output=True, text=True, check=False
    )


def _no_periodic_saves(run: Run) -> None:
    job = run.base / "config.json"
    job.write_text(json.dumps({**json.loads(job.read_text()), "save_steps": 100000}))


def test_a_planned_stop_first_saves_what_the_trainer_reached(run: Run) -> None:
    """#20: `stop` asks a trainer that answers save requests for a checkpoint, and stops it
    once that checkpoint is complete: nothing trained before the stop is lost."""
    _no_periodic_saves(run)
    run.start()
    reached = run.wait_for(_running_past(30), "training past step 30")["last_progress"]["step"]
    assert _checkpoint_steps(run.base) == []
    done = _stop(run)
    assert done.returncode == 0, done.stderr
    status = run.status()
    assert status["state"] == "STOPPED", status
    watchdog_log = (run.base / "logs" / "watchdog.log").read_text()
    assert "asking the trainer for a checkpoint first" in watchdog_log
    assert "the trainer saved a checkpoint" in watchdog_log
    steps = _checkpoint_steps(run.base)
    assert steps and steps[-1] >= reached, (steps, reached)
    last = json.loads((run.base / "status" / "progress.json").read_text())["step"]
    assert last == steps[-1], f"steps {steps[-1] + 1}..{last} were trained but not saved"
    assert not (run.base / "status" / "save_request.json").exists()


def test_with_save_on_stop_timeout_0_a_stop_asks_for_nothing(run: Run) -> None:
    _no_periodic_saves(run)
    text = _set_key(run.config.read_text(), "daemon", "save_on_stop_timeout", 0)
    run.config.write_text(text)
    run.start()
    run.wait_for(_running_past(30), "training past step 30")
    assert _stop(run).returncode == 0
    assert run.status()["state"] == "STOPPED"
    assert _checkpoint_steps(run.base) == []
    assert "asking the trainer" not in (run.base / "logs" / "watchdog.log").read_text()


def test_a_trainer_that_claims_to_save_but_never_does_is_stopped_after_the_timeout(
    run: Run,
) -> None:
    trainer = run.base / "claims.py"
    trainer.write_text(
        "import sys, time\n"
        "from trainguard.progress import write_progress\n"
        "for step in range(1, 100000):\n"
        "    write_progress(sys.argv[1], step, 'train', saves_on_request=True)\n"
        "    time.sleep(0.03)\n"
    )
    text = _set_key(run.config.read_text(), "daemon", "save_on_stop_timeout", 2)
    command = [sys.executable, str(trainer), "{base_dir}/status/progress.json"]
    run.config.write_text(_set_key(text, "daemon", "command", command))
    run.start()
    run.wait_for(_running_past(10), "training past step 10")
    assert _stop(run).returncode == 0
    assert run.status()["state"] == "STOPPED"
    watchdog_log = (run.base / "logs" / "watchdog.log").read_text()
    assert "no checkpoint within save_on_stop_timeout (2 s): stopping the daemon" in watchdog_log
    assert not (run.base / "status" / "save_request.json").exists()


def test_a_trainer_that_dies_saving_for_a_stop_is_recorded_as_a_crash_not_restarted(
    run: Run,
) -> None:
    trainer = run.base / "dies.py"
    trainer.write_text(
        "import os, sys, time\n"
        "from trainguard.progress import ProgressWriter\n"
        "progress = ProgressWriter(sys.argv[1])\n"
        "for step in range(1, 100000):\n"
        "    progress.write(step)\n"
        "    if progress.save_requested():\n"
        "        print('OSError: [Errno 28] No space left on device', flush=True)\n"
        "        sys.exit(1)\n"
        "    time.sleep(0.03)\n"
    )
    command = [sys.executable, str(trainer), "{base_dir}/status/progress.json"]
    run.config.write_text(_set_key(run.config.read_text(), "daemon", "command", command))
    run.start()
    run.wait_for(_running_past(10), "training past step 10")
    assert _stop(run).returncode == 0
    status = run.status()
    assert status["state"] == "STOPPED" and status["restart_count"] == 0, status
    assert status["last_crash"]["category"] == "disk_full", status["last_crash"]
    assert [r["category"] for r in run.history()] == ["disk_full"]


def test_sigstopped_daemon_is_detected_as_hung_and_restarted(run: Run) -> None:
    run.start()
    run.wait_for(_running_past(25), "training past step 25")
    tree = run.daemon_tree()
    for proc in tree:
        proc.suspend()
    status = run.wait_for(_restarted(1), "restart after SIGSTOP", timeout=60)
    assert status["restarts"][0]["category"] == "timeout"
    frozen = sorted(p.pid for p in tree)
    assert (
        f"the daemon's whole tree is stopped (SIGSTOP): {frozen}" in status["restarts"][0]["reason"]
    )
    incident = json.loads(next((run.base / "status" / "incidents").glob("*hang*.json")).read_text())
    assert incident["stopped"] == frozen
    # SIGCONT followed the SIGTERM: the example daemon and its worker ended on the SIGTERM,
    # not on the SIGKILL that follows stop_timeout.
    assert "ignored SIGTERM" not in (run.base / "logs" / "watchdog.log").read_text()


def test_unrelated_train_py_is_never_touched(run: Run, tmp_path: Path) -> None:
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "train.py").write_text("import signal\nsignal.pause()\n")
    bystander = subprocess.Popen([sys.executable, str(other / "train.py")], cwd=other)
    try:
        run.start()
        run.wait_for(_running_past(15), "training past step 15")
        os.kill(run.status()["daemon_pid"], signal.SIGKILL)
        run.wait_for(_restarted(1), "one restart")
        assert bystander.poll() is None, "an unrelated train.py was killed"
    finally:
        bystander.kill()
        bystander.wait()


def test_crash_loop_goes_fatal_after_max_restarts(run: Run) -> None:
    run.configure(command_extra=["--fault", "exit:3@2", "--fault-every-run"], max_restarts=2)
    watchdog = run.start()
    status = run.wait_for(lambda s: s.get("state") == "FATAL", "FATAL", timeout=60)
    assert status["restart_count"] == 2
    assert "2 restarts within" in status["fatal_reason"]
    assert watchdog.poll() is None, "the watchdog must stay up in FATAL to report"
    assert _status_exit(run) == 2
    assert SCRIPT
    restart = subprocess.run(
        [SCRIPT, "restart", "-c", str(run.config)], capture_output=True, timeout=30
    )
    assert restart.returncode == 0
    run.wait_for(lambda s: s.get("restart_count", 0) > 2, "an operator restart clears FATAL")


def test_stopping_a_fatal_watchdog_ends_it_cleanly(run: Run) -> None:
    run.configure(command_extra=["--fault", "exit:3@2", "--fault-every-run"], max_restarts=1)
    watchdog = run.start()
    run.wait_for(lambda s: s.get("state") == "FATAL", "FATAL", timeout=60)
    assert SCRIPT
    stop = subprocess.run(
        [SCRIPT, "stop", "-c", str(run.config)], capture_output=True, text=True, timeout=30
    )
    assert stop.returncode == 0, stop.stderr
    assert watchdog.wait(10) == 0, run.tail()
    assert "Traceback" not in run.tail()
    assert run.status()["state"] == "STOPPED"


def test_import_error_goes_fatal_without_restart(run: Run) -> None:
    text = run.config.read_text()
    start = text.index("command = [")
    end = text.index("\n", start)
    bad = 'command = ["{python}", "-c", "import trainguard_no_such_module"]'
    run.config.write_text(text[:start] + bad + text[end:])
    run.start()
    status = run.wait_for(lambda s: s.get("state") == "FATAL", "FATAL")
    assert status["restart_count"] == 0
    assert status["last_crash"]["category"] == "import_error"
    assert "non-retryable" in status["fatal_reason"]


def test_killed_watchdog_is_replaced_and_adopts_the_same_daemon(run: Run) -> None:
    first = run.start()
    run.wait_for(_running_past(10), "training past step 10")
    daemon_pid = run.status()["daemon_pid"]
    first.kill()
    first.wait()
    run.start()
    status = run.wait_for(
        lambda s: s.get("watchdog_pid") != first.pid and s.get("state") == "RUNNING", "adoption"
    )
    assert status["daemon_pid"] == daemon_pid
    daemons = [
        p for p in run.daemon_tree() if "daemon_watchdog.example.daemon" in " ".join(p.cmdline())
    ]
    assert [p.pid for p in daemons] == [daemon_pid]


def test_stale_pid_file_naming_an_unrelated_process_is_not_adopted_or_signalled(run: Run) -> None:
    bystander = subprocess.Popen([sys.executable, "-c", "import signal; signal.pause()"])
    try:
        fake = {
            "pid": bystander.pid,
            "create_time": 1.0,
            "cmdline": ["python3", "-m", "x"],
            "uid": os.getuid(),
        }
        (run.base / "status" / "watchdog.json").write_text(
            json.dumps(
                {
                    "state": "RUNNING",
                    "daemon": fake,
                    "daemon_pid": bystander.pid,
                    "owner_token": "t",
                }
            )
        )
        (run.base / ".daemon.pid").write_text(f"{bystander.pid}\n")
        run.start()
        status = run.wait_for(_running_past(5), "a new daemon running")
        assert status["daemon_pid"] != bystander.pid
        assert bystander.poll() is None, "the unrelated process was signalled"
    finally:
        bystander.kill()
        bystander.wait()


def _corrupt_newest_checkpoint_and_kill(run: Run) -> tuple[Path, str]:
    """Zero the newest checkpoint's weights, SIGKILL the daemon; (that folder, the one before)."""
    os.kill(run.status()["daemon_pid"], signal.SIGSTOP)  # freeze it so no newer checkpoint lands
    newest = max(
        (run.base / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1])
    )
    (newest / "model.safetensors").write_bytes(b"\x00" * 16)
    previous = f"checkpoint-{int(newest.name.split('-')[1]) - 10}"
    os.kill(run.status()["daemon_pid"], signal.SIGKILL)
    return newest, previous


def test_corrupt_newest_checkpoint_resumes_from_the_previous_and_is_quarantined(run: Run) -> None:
    run.start()
    run.wait_for(lambda s: _checkpoints(run) >= 3 and s.get("state") == "RUNNING", "3 checkpoints")
    newest, previous = _corrupt_newest_checkpoint_and_kill(run)
    status = run.wait_for(_restarted(1), "restart")
    assert status["restarts"][0]["resume_from"] == previous
    quarantined = list((run.base / "checkpoints" / "quarantine").glob(f"{newest.name}.*"))
    assert len(quarantined) == 1
    assert (quarantined[0] / "model.safetensors").read_bytes() == b"\x00" * 16


def _watchdog_log(run: Run) -> str:
    return (run.base / "logs" / "watchdog.log").read_text()


def test_a_corrupt_checkpoint_that_cannot_be_quarantined_is_left_alone_and_skipped(
    run: Run,
) -> None:
    (run.base / "checkpoints" / "quarantine").write_text("a file where the folder would go")
    watchdog = run.start()
    run.wait_for(lambda s: _checkpoints(run) >= 3 and s.get("state") == "RUNNING", "3 checkpoints")
    newest, previous = _corrupt_newest_checkpoint_and_kill(run)
    status = run.wait_for(_restarted(1), "restart")
    assert status["restarts"][0]["resume_from"] == previous
    assert (newest / "model.safetensors").read_bytes() == b"\x00" * 16  # kept, where it was
    assert f"cannot quarantine invalid checkpoint {newest.name}" in _watchdog_log(run)
    assert watchdog.poll() is None


def test_unlistable_checkpoints_are_fatal_never_a_start_from_scratch(run: Run) -> None:
    watchdog = run.start()
    run.wait_for(lambda s: _checkpoints(run) >= 2 and s.get("state") == "RUNNING", "checkpoints")
    daemon_pid = run.status()["daemon_pid"]
    os.kill(daemon_pid, signal.SIGSTOP)
    checkpoints = run.base / "checkpoints"
    checkpoints.rename(run.base / "checkpoints.aside")
    checkpoints.write_text("not a folder: listing it fails")
    os.kill(daemon_pid, signal.SIGKILL)
    status = run.wait_for(lambda s: s.get("state") == "FATAL", "FATAL")
    assert "cannot list the checkpoints in " in status["fatal_reason"]
    assert status["daemon_pid"] is None
    assert not psutil.Process(watchdog.pid).children(recursive=True)  # nothing started
    assert watchdog.poll() is None, "the watchdog stays up in FATAL to report"


def test_a_hang_whose_incident_file_cannot_be_written_is_still_killed_and_restarted(
    run: Run,
) -> None:
    (run.base / "status" / "incidents").write_text("a file where the folder would go")
    run.configure(command_extra=["--fault", "hang@25"])
    watchdog = run.start()
    status = run.wait_for(_restarted(1), "restart after the hang", timeout=45)
    assert status["restarts"][0]["category"] == "timeout"
    log = _watchdog_log(run)
    assert "no incident file: cannot write in " in log
    assert "_wait_for_allreduce" in log  # the stacks went to the log instead
    assert watchdog.poll() is None


def test_second_watchdog_on_one_workspace_exits_75(run: Run) -> None:
    run.start()
    run.wait_for(lambda s: s.get("state") in ("STARTING", "RUNNING"), "first watchdog up")
    second = run.start()
    assert second.wait(20) == 75
    assert "already supervises" in run.tail()


def test_stop_ends_daemon_and_watchdog_and_leaves_nothing(run: Run) -> None:
    watchdog = run.start()
    run.wait_for(_running_past(5), "running")
    tree = run.daemon_tree()
    assert tree
    assert SCRIPT
    result = subprocess.run(
        [SCRIPT, "stop", "-c", str(run.config)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert watchdog.wait(10) == 0
    assert not any(_alive(p) for p in tree)
    assert run.status()["state"] == "STOPPED"
    assert _status_exit(run) == 4  # stopped, not failed (FATAL is 2)


def _cli(run: Run, *args: str) -> subprocess.CompletedProcess[str]:
    assert SCRIPT
    return subprocess.run(
        [SCRIPT, *args, "-c", str(run.config)], capture_output=True, text=True, timeout=90
    )


def test_stop_with_the_watchdog_dead_stops_its_daemon_and_records_stopped(run: Run) -> None:
    watchdog = run.start()
    run.wait_for(_running_past(15), "training past step 15")
    tree = run.daemon_tree()
    watchdog.kill()  # the watchdog dies; training goes on unsupervised
    watchdog.wait()
    assert all(_alive(p) for p in tree)
    assert _status_exit(run) == 3  # "RUNNING", written by a watchdog that is gone
    result = _cli(run, "stop")
    assert result.returncode == 0, result.stderr
    assert "stopped the daemon tree" in result.stdout
    assert "state RUNNING -> STOPPED" in result.stdout
    assert not any(_alive(p) for p in tree)
    status = run.status()
    assert status["state"] == "STOPPED" and status["daemon_pid"] is None
    assert not (run.base / ".daemon.pid").exists()  # it would name a stranger once reused
    assert _status_exit(run) == 4
    again = _cli(run, "stop")  # nothing left to do, and nothing to correct
    assert again.returncode == 0 and again.stdout.strip() == "no watchdog and no daemon running"


def test_restart_of_a_running_daemon_stops_it_and_resumes_from_the_newest_checkpoint(
    run: Run,
) -> None:
    run.start()
    run.wait_for(_running_past(25), "training past step 25")
    before = run.status()
    worker = run.worker()
    daemon = psutil.Process(before["daemon_pid"])
    result = _cli(run, "restart")
    assert result.returncode == 0, result.stderr
    status = run.status()
    assert f"daemon pid {status['daemon_pid']} started from checkpoint-" in result.stdout
    assert status["daemon_pid"] != before["daemon_pid"]
    assert not _alive(daemon) and not _alive(worker)
    assert status["resumed_from"] and status["state"] in ("STARTING", "RUNNING")
    # An operator's restart is not a crash: nothing counted, classified or recorded.
    assert status["restart_count"] == 0 and status["last_crash"] is None
    assert not run.history()
    log = (run.base / "logs" / "watchdog.log").read_text()
    assert f"daemon pid {before['daemon_pid']} exited with code 143" in log  # SIGTERM, graceful
    run.wait_for(_running_past(before["last_progress"]["step"] - 10), "training again")


def test_restart_during_a_backoff_starts_the_daemon_at_once(run: Run) -> None:
    run.configure(backoff_base=300, backoff_max=300)
    run.start()
    run.wait_for(_running_past(15), "training past step 15")
    os.kill(run.status()["daemon_pid"], signal.SIGKILL)  # the first crash: restarted at once
    first = run.wait_for(_restarted(1), "the first restart, with no backoff")
    os.kill(first["daemon_pid"], signal.SIGKILL)  # the second in a row: backoff_base
    run.wait_for(
        lambda s: s.get("state") == "BACKOFF" and s.get("restart_count") == 2,
        "a 300 s backoff (decided: the crash counted)",
    )
    result = _cli(run, "restart", "--timeout", "30")  # fails unless it skips the backoff
    assert result.returncode == 0, result.stderr
    status = run.status()
    assert status["state"] in ("STARTING", "RUNNING") and status["restart_count"] == 2


def test_two_restarts_at_once_each_report_the_daemon_they_started(run: Run) -> None:
    run.start()
    run.wait_for(_running_past(15), "training past step 15")
    assert SCRIPT
    both = [
        subprocess.Popen(
            [SCRIPT, "restart", "-c", str(run.config)], stdout=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outputs = [proc.communicate(timeout=90)[0] for proc in both]
    assert [proc.returncode for proc in both] == [0, 0], outputs
    started = [int(out.split("daemon pid ")[1].split()[0]) for out in outputs]
    assert len(set(started)) == 2, outputs  # one after the other, each its own daemon
    status = run.status()
    assert status["daemon_pid"] in started
    assert _example_daemons(run) == [status["daemon_pid"]]


def _example_daemons(run: Run) -> list[int]:
    """Every example daemon of this workspace, whatever its owner token."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        line = " ".join(proc.info["cmdline"] or [])
        if "daemon_watchdog.example.daemon" in line and str(run.base) in line:
            found.append(proc.pid)
    return found


@pytest.fixture
def short(tmp_path: Path) -> Iterator[Run]:
    """A run whose training finishes after 20 steps."""
    base = tmp_path / "short"
    init_workspace(base, job={"total_steps": 20, "save_steps": 10, "step_seconds": 0.01})
    short = Run(base)
    short.configure()
    try:
        yield short
    finally:
        short.stop_all()


def test_a_restart_from_stopped_that_cannot_start_is_fatal_and_says_why(short: Run) -> None:
    watchdog = short.start()
    short.wait_for(lambda s: s.get("state") == "STOPPED", "training finished")
    checkpoints = short.base / "checkpoints"
    checkpoints.rename(short.base / "checkpoints.aside")
    checkpoints.write_text("not a folder: listing it fails")
    result = _cli(short, "restart")
    assert result.returncode == 1
    assert result.stderr.startswith("daemon-watchdog: restart failed: cannot list the check")
    assert short.status()["state"] == "FATAL"
    assert watchdog.poll() is None, short.tail()


def test_restart_without_a_watchdog_is_a_one_line_error(run: Run) -> None:
    result = _cli(run, "restart")
    assert result.returncode == 1
    assert result.stderr.startswith("daemon-watchdog: no watchdog is running for ")
    assert len(result.stderr.splitlines()) == 1


def test_finished_training_is_stopped_not_restarted(short: Run) -> None:
    watchdog = short.start("--exit-when-done")
    assert watchdog.wait(60) == 0
    status = short.status()
    assert status["state"] == "STOPPED" and status["restart_count"] == 0
    assert (short.base / "checkpoints" / "checkpoint-20" / "model.safetensors").is_file()


def _checkpoints(run: Run) -> int:
    return len(list((run.base / "checkpoints").glob("checkpoint-*")))


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _status_exit(run: Run) -> int:
    assert SCRIPT
    return subprocess.run(
        [SCRIPT, "status", "-c", str(run.config)], capture_output=True, timeout=30
    ).returncode


def test_old_checkpoints_are_pruned_periodically_keeping_the_newest(tmp_path: Path) -> None:
    base = tmp_path / "ws"
    init_workspace(base, job={"total_steps": 60, "save_steps": 10, "step_seconds": 0.01})
    short = Run(base)
    try:
        _prune_a_finished_run(short)
    finally:
        short.stop_all()


def _prune_a_finished_run(short: Run) -> None:
    short.configure(prune_interval=0.5)
    text = short.config.read_text().replace("keep_last = 3", "keep_last = 2")
    short.config.write_text(_set_key(text, "checkpoints", "settle_seconds", 0))
    short.start()
    short.wait_for(lambda s: s.get("state") == "STOPPED", "training finished")
    folder = short.base / "checkpoints"
    everything = sorted(int(p.name.split("-")[1]) for p in folder.glob("checkpoint-*"))

    def pruned() -> list[str] | None:
        names = sorted(p.name for p in folder.iterdir())
        return names if len(names) == 2 else None

    names = wait_until(pruned, timeout=20, message="old checkpoints pruned")
    assert names == [f"checkpoint-{step}" for step in everything[-2:]]
    assert everything[-1] == 60  # the final checkpoint is among the kept


def test_a_rewound_restart_is_not_mistaken_for_a_hang(tmp_path: Path) -> None:
    """The old run's progress file (step 190) is not the resumed run's (from step 100)."""
    base = tmp_path / "rewind"
    init_workspace(base, job={"total_steps": 400, "save_steps": 100, "step_seconds": 0.06})
    rewind = Run(base)
    rewind.configure(progress_timeout=3)  # < the 5.4 s the resumed run needs to pass step 190
    try:
        rewind.start()
        rewind.wait_for(_running_past(150), "training past step 150")
        progress = base / "status" / "progress.json"
        wait_until(lambda: json.loads(progress.read_text())["step"] >= 185, message="step 185")
        os.kill(rewind.status()["daemon_pid"], signal.SIGKILL)
        killed_at = json.loads(progress.read_text())["step"]
        rewind.wait_for(_restarted(1), "one restart")
        status = rewind.wait_for(
            lambda s: (
                s.get("restart_count") != 1
                or (s.get("last_progress") or {}).get("step", 0) >= killed_at + 5
            ),
            "the resumed run passes the step it was killed at",
        )
        assert status["restart_count"] == 1, status["restarts"]
        assert status["restarts"][0]["resume_from"] == f"checkpoint-{killed_at // 100 * 100}"
    finally:
        rewind.stop_all()


def _set_command(run: Run, command: str) -> None:
    text = run.config.read_text()
    start = text.index("command = [")
    end = text.index("\n", start)
    run.config.write_text(text[:start] + command + text[end:])


def test_a_daemon_that_cannot_be_started_is_fatal_not_a_crashed_watchdog(run: Run) -> None:
    _set_command(run, 'command = ["/nonexistent/bin/python3", "train.py"]')
    watchdog = run.start()
    status = run.wait_for(lambda s: s.get("state") == "FATAL", "FATAL")
    assert "cannot start the daemon: /nonexistent/bin/python3" in status["fatal_reason"]
    assert watchdog.poll() is None and "Traceback" not in run.tail()
    assert _status_exit(run) == 2


def test_a_pid_file_that_cannot_be_written_stops_the_new_daemon_and_is_fatal(run: Run) -> None:
    text = run.config.read_text().replace(
        'pid_file = ".daemon.pid"', 'pid_file = "no-such-dir/.daemon.pid"'
    )
    run.config.write_text(text)
    (run.base / "no-such-dir").write_text("a file, so nothing can be written below it")
    watchdog = run.start()
    status = run.wait_for(lambda s: s.get("state") == "FATAL", "FATAL")
    assert "cannot write the pid file" in status["fatal_reason"]
    assert "Traceback" not in run.tail()
    wait_until(
        lambda: not psutil.Process(watchdog.pid).children(recursive=True),
        message="the daemon no pid file names is stopped, not left unsupervised",
    )


def test_an_earlier_runs_error_in_the_log_does_not_decide_this_crash(run: Run) -> None:
    train = run.base / "train.py"
    fixed = train.read_text()
    train.write_text("import trainguard_no_such_module\n" + fixed)
    run.start()
    run.wait_for(lambda s: (s.get("last_crash") or {}).get("category") == "import_error", "FATAL")
    train.write_text(fixed)  # the operator fixes the trainer and restarts
    assert SCRIPT
    restart = subprocess.run([SCRIPT, "restart", "-c", str(run.config)], timeout=30)
    assert restart.returncode == 0
    run.wait_for(_running_past(1), "running again")
    os.kill(run.status()["daemon_pid"], signal.SIGKILL)
    status = run.wait_for(_restarted(1), "a restart, not FATAL for the old import error")
    assert status["last_crash"]["category"] == "unknown"  # what SIGKILL says, nothing older


def test_a_replaced_watchdog_keeps_counting_the_runs_restarts(run: Run) -> None:
    run.configure(
        command_extra=["--fault", "exit:3@2", "--fault-every-run"], max_restarts=2, backoff_max=2
    )
    first = run.start()
    run.wait_for(lambda s: s.get("restart_count", 0) >= 1, "one restart")
    first.kill()
    first.wait()
    run.start()
    status = run.wait_for(lambda s: s.get("state") == "FATAL", "FATAL", timeout=60)
    assert status["restart_count"] == 2, "max_restarts counts the restarts of both watchdogs"


@pytest.mark.parametrize("broken", ["lock file", "log folder"])
def test_an_unusable_workspace_is_a_one_line_error(run: Run, broken: str) -> None:
    if broken == "lock file":
        (run.base / ".watchdog.lock").mkdir()
    else:
        shutil.rmtree(run.base / "logs", ignore_errors=True)
        (run.base / "logs").write_text("not a folder")
    assert SCRIPT
    done = subprocess.run(
        [SCRIPT, "run", "-c", str(run.config)], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 1
    assert done.stderr.startswith("daemon-watchdog: cannot ")
    assert len(done.stderr.splitlines()) == 1 and "Traceback" not in done.stderr


def test_a_fifo_at_the_progress_file_never_blocks_the_watchdog(run: Run) -> None:
    fifo = run.base / "status" / "watched.json"
    fifo.parent.mkdir(exist_ok=True)
    os.mkfifo(fifo)  # opening it for reading, without a writer, would wait forever
    run.config.write_text(
        _set_key(run.config.read_text(), "daemon", "progress_file", "status/watched.json")
    )
    watchdog = run.start()
    log = run.base / "logs" / "watchdog.log"
    wait_until(
        lambda: log.exists() and "not a regular file (a FIFO)" in log.read_text(),
        timeout=30,
        message="the FIFO refused, not read",
    )
    result = _cli(run, "stop")  # the loop still answers
    assert result.returncode == 0, result.stdout + result.stderr
    assert watchdog.wait(10) == 0


@pytest.mark.parametrize("damage", ["unreadable", "missing"])
def test_a_live_daemon_no_record_proves_ours_is_fatal_never_a_second_trainer(
    run: Run, damage: str
) -> None:
    first = run.start()
    run.wait_for(_running_past(5), "training past step 5")
    daemon_pid = run.status()["daemon_pid"]
    first.kill()
    first.wait()
    state_file = run.base / "status" / "watchdog.json"
    if damage == "unreadable":
        state_file.write_text('{"state": "RUNNING", "daemon": ')  # cut off mid-write
    else:
        state_file.unlink()
    second = run.start()
    status = run.wait_for(
        lambda s: s.get("watchdog_pid") == second.pid and s.get("state") == "FATAL", "FATAL"
    )
    assert f"names pid {daemon_pid}" in status["fatal_reason"]
    assert "not starting a second trainer" in status["fatal_reason"]
    assert _example_daemons(run) == [daemon_pid]  # untouched, and alone
    if damage == "unreadable":
        kept = [p.read_text() for p in state_file.parent.glob("watchdog.json.unreadable-*")]
        assert kept == ['{"state": "RUNNING", "daemon": '], "the unreadable state file was lost"
    # The operator ends the stray trainer (its whole group: it leads one); `restart` then starts
    # training under this watchdog.
    os.killpg(daemon_pid, signal.SIGKILL)
    wait_until(lambda: daemon_pid not in _example_daemons(run), message="stray daemon gone")
    assert _cli(run, "restart").returncode == 0
    status = run.wait_for(_running_past(1), "a new daemon after the operator's restart")
    assert status["daemon_pid"] != daemon_pid and _example_daemons(run) == [status["daemon_pid"]]


def test_the_pid_file_is_removed_when_the_daemon_ends(short: Run) -> None:
    short.start()
    short.wait_for(lambda s: s.get("state") == "STOPPED", "training finished")
    assert not (short.base / ".daemon.pid").exists()


def test_sighup_reloads_the_config_and_never_restarts_training(run: Run) -> None:
    watchdog = run.start()
    run.wait_for(_running_past(5), "training past step 5")
    before = run.status()
    text = _set_key(run.config.read_text(), "watchdog", "progress_timeout", 9)
    run.config.write_text(_set_key(text, "watchdog", "state_file", "status/elsewhere.json"))
    watchdog.send_signal(signal.SIGHUP)  # what a closed terminal sends
    status = run.wait_for(lambda s: s.get("reload_note"), "the reload recorded")
    note = status["reload_note"]
    assert "applied watchdog.progress_timeout: 4.0 -> 9.0" in note
    assert "NOT applied" in note and "watchdog.state_file" in note
    after = run.wait_for(_running_past(before["last_progress"]["step"] + 5), "training goes on")
    assert after["daemon_pid"] == before["daemon_pid"]
    assert after["restart_count"] == 0 and after["restart_requests"] == 0
    assert not (run.base / "status" / "elsewhere.json").exists()

    run.config.write_text(run.config.read_text() + "\n[watchdog.nonsense]\n")
    watchdog.send_signal(signal.SIGHUP)
    bad = run.wait_for(lambda s: "NOT reloaded" in (s.get("reload_note") or ""), "refused")
    assert "the running one stays" in bad["reload_note"]
    assert watchdog.poll() is None and bad["daemon_pid"] == before["daemon_pid"]
