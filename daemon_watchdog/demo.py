"""`daemon-watchdog demo`: the watchdog supervises the example trainer through one real crash.

A throwaway workspace, a real `daemon-watchdog run`, a SIGKILL of the daemon mid-run, and a
report of what the watchdog did: detection, orphan cleanup, classification, resume, and the
final weights compared bit for bit with an uninterrupted run of the same job.
"""

from __future__ import annotations

import filecmp
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from daemon_watchdog.workspace_init import init_workspace
from trainguard.config import expand_argv, load_config
from trainguard.process_tree import stop_started
from trainguard.watchdog_status import WatchdogStatus, read_watchdog_status

JOB = {"total_steps": 40, "save_steps": 10, "step_seconds": 0.1}
CRASH_AFTER_STEP = 25
DEADLINE_S = 120.0
FAST_WATCHDOG = {"check_interval": "2", "backoff_base": "0.5", "progress_timeout": "20"}


def run_demo(*, keep: bool = False) -> int:
    root = Path(tempfile.mkdtemp(prefix="trainguard-demo-"))
    started: list[subprocess.Popen[bytes]] = []
    try:
        return _demo(root, started, keep=keep)
    finally:
        _stop(started)
        if keep:
            print(f"workspaces kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def _demo(root: Path, started: list[subprocess.Popen[bytes]], *, keep: bool) -> int:
    ws = root / "supervised"
    config = init_workspace(ws, job=JOB)
    reference = root / "reference"
    init_workspace(reference, job=JOB)
    print(f"1. a workspace ({ws.name}): example trainer, {JOB['total_steps']} steps, checkpoint "
          "every 10")  # fmt: skip
    started.append(_start_reference(reference))
    env = {
        **os.environ,
        **{f"TRAINGUARD_WATCHDOG__{k.upper()}": v for k, v in FAST_WATCHDOG.items()},
    }
    watchdog_cmd = [
        sys.executable,
        "-m",
        "daemon_watchdog",
        "run",
        "--exit-when-done",
        "-c",
        str(config),
    ]
    watchdog = subprocess.Popen(
        watchdog_cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    started.append(watchdog)
    status = _wait(ws, lambda s: s.state == "RUNNING" and s.step >= CRASH_AFTER_STEP)
    daemon_pid = status.daemon_pid
    assert daemon_pid is not None  # RUNNING names its daemon
    workers = psutil.Process(daemon_pid).children()
    crash_step = _trainer_step(ws)  # the state file's progress lags by up to a second
    killed_at = time.monotonic()
    os.kill(daemon_pid, signal.SIGKILL)
    print(
        f"2. crash injected: SIGKILL to the training daemon (pid {daemon_pid}) at step {crash_step}"
    )
    status = _wait(ws, lambda s: s.restart_count >= 1 and _new_daemon(s, daemon_pid))
    restart_s = time.monotonic() - killed_at
    crash = status.restarts[0]
    orphans_alive = [w.pid for w in workers if _alive(w)]
    print(f"3. detected at once: {crash.reason} (category {crash.category})")
    print(f"   evidence: {crash.evidence}")
    print(f"   suggestion: {crash.suggestion}")
    verdict = "yes" if not orphans_alive else "NO"
    print(f"4. orphaned worker(s) {[w.pid for w in workers]} stopped: {verdict}")
    resumed = int((crash.resume_from or "checkpoint-0").removeprefix("checkpoint-"))
    lost = max(0, crash_step - resumed)  # the orphan may have checkpointed once more
    print(f"5. restarted in {restart_s:.1f} s from {crash.resume_from}; steps lost: {lost}")
    code = watchdog.wait(DEADLINE_S)
    started[-1].wait(DEADLINE_S)
    final = f"checkpoints/checkpoint-{JOB['total_steps']}/model.safetensors"
    same = filecmp.cmp(ws / final, reference / final, shallow=False)
    last = _status(ws)
    state = last.state if last is not None else None
    print(f"6. training finished: watchdog state {state}, exit {code}")
    print(f"7. final weights identical to an uninterrupted run: {'yes' if same else 'NO'}")
    history = (ws / ".crash_history.jsonl").read_text().splitlines()
    print(f"8. crash history: {len(history)} record(s) in .crash_history.jsonl")
    ok = same and code == 0 and not orphans_alive and state == "STOPPED"
    if not keep:
        print("   (its workspaces are removed now: `daemon-watchdog demo --keep` keeps them)")
    print("demo: OK" if ok else "demo: FAILED")
    return 0 if ok else 1


def _start_reference(base: Path) -> subprocess.Popen[bytes]:
    """The same job without a crash, run directly: the bit-for-bit yardstick."""
    cfg = load_config(base / "trainguard.toml", env={})
    argv = expand_argv(cfg.daemon.command, base_dir=str(base))
    return subprocess.Popen(argv, cwd=base, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _status(ws: Path) -> WatchdogStatus | None:
    return read_watchdog_status(ws / "status" / "watchdog.json")


def _wait(ws: Path, done: Callable[[WatchdogStatus], bool]) -> WatchdogStatus:
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        status = _status(ws)
        if status and done(status):
            return status
        time.sleep(0.05)
    raise TimeoutError(f"the demo stalled; see {ws / 'logs'}")


def _trainer_step(ws: Path) -> int:
    try:
        return int(json.loads((ws / "status" / "progress.json").read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def _new_daemon(status: WatchdogStatus, old_pid: int) -> bool:
    return status.daemon_pid not in (None, old_pid)


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _stop(started: list[subprocess.Popen[bytes]]) -> None:
    stop_started(started, timeout=15)
