"""The example daemon's inbox under the watchdog: a SIGKILL mid-job loses no job and trains
none twice."""

from __future__ import annotations

import json
import os
import re
import signal
import sys
from pathlib import Path
from typing import Any

from edge_cases.sandbox import Sandbox
from edge_cases.scenario import Scenario, expect

# config.json's own job comes first; its final checkpoint is what the watchdog resumes from.
CONFIG_JOB: dict[str, Any] = {"total_steps": 8, "save_steps": 4, "step_seconds": 0.02}
# b, the one killed, runs longest: the kill lands well inside it.
JOBS: dict[str, dict[str, Any]] = {
    "a": {"total_steps": 30, "save_steps": 5, "step_seconds": 0.03, "seed": 1},
    "b": {"total_steps": 60, "save_steps": 5, "step_seconds": 0.03, "seed": 2},
    "c": {"total_steps": 30, "save_steps": 5, "step_seconds": 0.03, "seed": 3},
}
KILLED, KILL_PAST = "b", 12


def _drop(base: Path, name: str, knobs: dict[str, Any]) -> None:
    """As a careful producer drops a job: written aside under a dot-name, renamed in."""
    aside = base / "inbox" / f".{name}.json.tmp"
    aside.write_text(json.dumps(knobs))
    os.rename(aside, base / "inbox" / f"{name}.json")


def _training(sb: Sandbox, job: str, past: int) -> bool:
    try:
        progress = json.loads(sb.path("status/progress.json").read_bytes())
    except (OSError, ValueError):
        return False
    saved = any(sb.path(f"checkpoints/jobs/{job}").glob("checkpoint-*"))
    return progress.get("job") == job and progress.get("step", 0) > past and saved


def _final_weights(base: Path, job: str) -> bytes:
    step = JOBS[job]["total_steps"]
    return (base / f"checkpoints/jobs/{job}/checkpoint-{step}/model.safetensors").read_bytes()


def queue_system(sb: Sandbox) -> str:
    sb.create(**CONFIG_JOB)
    for name, knobs in JOBS.items():
        _drop(sb.base, name, knobs)
    sb.start_watchdog()
    sb.deadline.wait_for(
        lambda: _training(sb, KILLED, KILL_PAST),
        f"job {KILLED} past step {KILL_PAST} with a checkpoint",
        context=sb.describe,
    )
    sb.signal_daemon(signal.SIGKILL)
    status = sb.wait_state("STOPPED")  # the daemon exits 0 once the inbox is empty

    expect(status.restart_count == 1, f"{status.restart_count} restarts for one SIGKILL")
    config_final = f"checkpoint-{CONFIG_JOB['total_steps']}"
    resumed_from = status.restarts[0].resume_from
    expect(
        resumed_from == config_final,
        f"the watchdog passed --resume-from {resumed_from!r}, not config.json's {config_final}",
    )
    inbox = sb.path("inbox")
    done = sorted(p.name for p in (inbox / "done").glob("*.json"))
    expect(done == [f"{n}.json" for n in JOBS], f"inbox/done/ holds {done}")
    left = [
        str(p.relative_to(inbox))
        for p in [*inbox.glob("*.json"), *inbox.glob("claimed/*"), *inbox.glob("failed/*")]
    ]
    expect(not left, f"jobs not done: {left}")

    log = sb.path("logs/daemon.log").read_text(errors="replace")
    for name in JOBS:
        counts = [
            len(re.findall(rf"job {name}: {what}", log))
            for what in ("training from", "training done", "done, moved to")
        ]
        expect(
            counts == [1, 1, 1],
            f"job {name}: started from scratch, finished, moved to done {counts} times (not once)",
        )
    resumes = re.findall(r"job (\S+): resuming from (\S+) at step", log)
    own = str(sb.path(f"checkpoints/jobs/{KILLED}")) + "/checkpoint-"
    expect(
        len(resumes) == 1 and resumes[0][0] == KILLED and resumes[0][1].startswith(own),
        f"resumes after the kill: {resumes}; expected one, of job {KILLED} from {own}N",
    )

    # The killed job uninterrupted, for the bit-for-bit comparison.
    reference = sb.root / "reference"
    sb.create_at(reference, **CONFIG_JOB)
    _drop(reference, KILLED, {**JOBS[KILLED], "step_seconds": 0})
    job_file = str(reference / "inbox" / f"{KILLED}.json")
    plain = sb.run(
        [
            sys.executable,
            str(reference / "train.py"),
            "--base-dir",
            str(reference),
            "--job",
            job_file,
        ]
    )
    expect(plain.returncode == 0, f"the uninterrupted reference run failed: {plain.stdout[-300:]}")
    expect(
        _final_weights(sb.base, KILLED) == _final_weights(reference, KILLED),
        f"job {KILLED}'s final weights differ from an uninterrupted run's",
    )
    own_checkpoint = Path(resumes[0][1]).relative_to(sb.base)
    return (
        f"SIGKILL mid-job {KILLED}: resumed from {own_checkpoint} (the watchdog passed "
        f"{config_final}); {len(JOBS)} jobs done once each; {KILLED}'s weights bit-identical"
    )


SCENARIOS = (
    Scenario(
        name="queue_system",
        summary="inbox jobs survive a SIGKILL mid-job: none lost, none trained twice",
        fault=f"{len(JOBS)} jobs in inbox/; the example daemon SIGKILLed at step "
        f"{KILL_PAST} of job {KILLED}",
        expected="one restart; the killed job resumes from its own checkpoint, not from the "
        "config.json job's the watchdog passes; every job in inbox/done/ once, trained and "
        "finished once; the killed job's weights bit-identical to an uninterrupted run",
        deadline=60,
        run=queue_system,
    ),
)
