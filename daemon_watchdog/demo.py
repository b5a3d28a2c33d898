"""`daemon-watchdog demo`: the watchdog supervises the example trainer through one real crash.

A throwaway workspace, a real `daemon-watchdog run`, a SIGKILL of the daemon mid-run, and a
report of what the watchdog did: detection, orphan cleanup, classification, resume; then a
planned stop (`daemon-watchdog stop`: the trainer saves the step it reached first) and a new
watchdog that resumes from that checkpoint; and the final weights compared bit for bit with
an uninterrupted run of the same job.

`--oom` shows recovery by crash type instead: a trainer whose GPU fits a batch of 32 asked for
64 (a simulated CUDA OOM), and `[watchdog.recovery] cuda_oom` halving config.json's batch_size.
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
from trainguard.checkpoints import step_of
from trainguard.config import expand_argv, load_config
from trainguard.process_tree import stop_started
from trainguard.watchdog_status import WatchdogStatus, read_watchdog_status

JOB = {"total_steps": 40, "save_steps": 10, "step_seconds": 0.1}
CRASH_AFTER_STEP = 25
STOP_AFTER_STEP = 32  # a planned stop between two periodic checkpoints (30, 40)
DEADLINE_S = 120.0
FAST_WATCHDOG = {"check_interval": "2", "backoff_base": "0.5", "progress_timeout": "20"}


OOM_JOB = {"total_steps": 30, "save_steps": 10, "step_seconds": 0.05, "batch_size": 64}
OOM_FAULT = "cuda_oom:32@15"  # SIMULATION: an OOM at step 15 while batch_size > 32
OOM_RECOVERY = 'cuda_oom = { halve = "config:batch_size", floor = 4 }'


def run_demo(*, keep: bool = False, oom: bool = False) -> int:
    root = Path(tempfile.mkdtemp(prefix="trainguard-demo-"))
    started: list[subprocess.Popen[bytes]] = []
    try:
        if oom:
            return _oom_demo(root, started, keep=keep)
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
    watchdog = _start_watchdog(config, env)
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
    _wait(ws, lambda s: s.state == "RUNNING" and _trainer_step(ws) >= STOP_AFTER_STEP)
    stop = subprocess.run(
        [sys.executable, "-m", "daemon_watchdog", "stop", "-c", str(config)],
        capture_output=True, text=True, timeout=DEADLINE_S, check=False,
    )  # fmt: skip
    stopped = watchdog.wait(DEADLINE_S)
    reached = _trainer_step(ws)
    saved = _newest_checkpoint_step(ws)
    print(f"6. planned stop (`daemon-watchdog stop`) at step {reached}: the trainer saved "
          f"checkpoint-{saved} first; steps lost: {reached - saved}")  # fmt: skip
    watchdog = _start_watchdog(config, env)
    started.append(watchdog)
    _wait(ws, lambda s: s.daemon_started_at is not None)
    resumed_from = Path((_status(ws) or status).resumed_from or "the start").name
    print(f"7. a new watchdog resumed from {resumed_from}")
    code = watchdog.wait(DEADLINE_S)
    started[0].wait(DEADLINE_S)  # the reference run
    final = f"checkpoints/checkpoint-{JOB['total_steps']}/model.safetensors"
    same = filecmp.cmp(ws / final, reference / final, shallow=False)
    last = _status(ws)
    state = last.state if last is not None else None
    print(f"8. training finished: watchdog state {state}, exit {code}")
    print(f"9. final weights identical to an uninterrupted run: {'yes' if same else 'NO'}")
    history = (ws / ".crash_history.jsonl").read_text().splitlines()
    print(f"10. crash history: {len(history)} record(s) in .crash_history.jsonl")
    planned_ok = stop.returncode == 0 and stopped == 0 and saved == reached
    ok = same and code == 0 and not orphans_alive and state == "STOPPED" and planned_ok
    if not keep:
        print("   (its workspaces are removed now: `daemon-watchdog demo --keep` keeps them)")
    print("demo: OK" if ok else "demo: FAILED")
    return 0 if ok else 1


def _oom_demo(root: Path, started: list[subprocess.Popen[bytes]], *, keep: bool) -> int:
    ws = root / "oom"
    config = init_workspace(ws, job=OOM_JOB)
    text = config.read_text()
    text = text.replace('"--base-dir", "{base_dir}"]', f'"--base-dir", "{{base_dir}}", '
                        f'"--fault", "{OOM_FAULT}"]')  # fmt: skip
    config.write_text(text.replace("# [watchdog.recovery]", f"[watchdog.recovery]\n{OOM_RECOVERY}"))
    print(f"1. a workspace ({ws.name}): batch_size {OOM_JOB['batch_size']} in config.json, on a "
          "(simulated) GPU that fits 32")  # fmt: skip
    print(f"   trainguard.toml: [watchdog.recovery] {OOM_RECOVERY}")
    env = {
        **os.environ,
        **{f"TRAINGUARD_WATCHDOG__{k.upper()}": v for k, v in FAST_WATCHDOG.items()},
    }
    watchdog = _start_watchdog(config, env)
    started.append(watchdog)
    code = watchdog.wait(DEADLINE_S)
    last = _status(ws)
    if last is None or not last.restarts:
        print(f"demo: FAILED (no crash recorded; see {ws / 'logs'})")
        return 1
    crash = last.restarts[0]
    print(f"2. crashed: {crash.reason}")
    print(f"   evidence: {crash.evidence[:110]}")
    for line in crash.recovery:
        print(f"3. recovery: {line}")
    print(f"4. restarted from {crash.resume_from}")
    batch = json.loads((ws / "config.json").read_text())["batch_size"]
    state = last.state
    print(f"5. training finished: watchdog state {state}, exit {code}; config.json batch_size "
          f"now {batch} (was {OOM_JOB['batch_size']}: config.json.before-recovery)")  # fmt: skip
    print("   `daemon-watchdog restart --reset-recovery` would put it back")
    ok = code == 0 and state == "STOPPED" and batch == 32 and len(last.restarts) == 1
    if not keep:
        print("   (its workspace is removed now: `daemon-watchdog demo --oom --keep` keeps it)")
    print("demo: OK" if ok else "demo: FAILED")
    return 0 if ok else 1


def _start_watchdog(config: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "daemon_watchdog", "run", "--exit-when-done", "-c", str(config)]
    return subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


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


def _newest_checkpoint_step(ws: Path) -> int:
    steps = (step_of(p.name) for p in (ws / "checkpoints").glob("checkpoint-*"))
    return max((step for step in steps if step is not None), default=0)


def _new_daemon(status: WatchdogStatus, old_pid: int) -> bool:
    return status.daemon_pid not in (None, old_pid)


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _stop(started: list[subprocess.Popen[bytes]]) -> None:
    stop_started(started, timeout=15)
