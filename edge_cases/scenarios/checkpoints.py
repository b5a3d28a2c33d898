"""Checkpoints that must not be resumed from: a corrupt newest one, a staged half-save."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import time
from pathlib import Path

from edge_cases.sandbox import Sandbox
from edge_cases.scenario import Scenario, expect
from edge_cases.state_file import resumed_step

NAGIOS_WARNING = 1


def _freeze_with_checkpoints(sb: Sandbox, count: int) -> int:
    """Run until `count` checkpoints exist, then SIGSTOP the tree; the newest step."""
    sb.start_watchdog()
    sb.wait_running()
    sb.deadline.wait_for(lambda: len(sb.checkpoint_steps()) >= count, f"{count} checkpoints")
    sb.suspend_tree()  # frozen: no newer checkpoint can land while we tamper
    return sb.checkpoint_steps()[-1]


def checkpoint_corrupt_resume_previous(sb: Sandbox) -> str:
    sb.create()
    newest = _freeze_with_checkpoints(sb, 3)
    steps = sb.checkpoint_steps()
    previous = steps[-2]
    weights = sb.path(f"checkpoints/checkpoint-{newest}/model.safetensors")
    garbage = b"\x00" * 16  # a header that claims nothing: torn by a crash mid-write
    weights.write_bytes(garbage)
    sb.signal_daemon(signal.SIGKILL)
    status = sb.wait_running(restarts=1)
    resumed = resumed_step(status["restarts"][-1])
    expect(resumed == previous, f"resumed from checkpoint-{resumed}, not checkpoint-{previous}")
    moved = list(sb.path("checkpoints/quarantine").glob(f"checkpoint-{newest}*"))
    expect(len(moved) == 1, f"checkpoint-{newest} not quarantined (found {moved})")
    expect(
        (moved[0] / "model.safetensors").read_bytes() == garbage,
        "the quarantined checkpoint's bytes were changed: evidence must be kept as it was",
    )
    sb.wait_running(past_step=newest + 5, restarts=1)
    return f"corrupt checkpoint-{newest} quarantined intact; resumed from checkpoint-{previous}"


def _digest(folder: Path) -> str:
    sha = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        sha.update(path.name.encode())
        if path.is_file():
            sha.update(path.read_bytes())
    return sha.hexdigest()


def staged_checkpoint_ignored(sb: Sandbox) -> str:
    sb.create()
    newest = _freeze_with_checkpoints(sb, 2)
    # A complete-looking save that was never renamed into place: the trainer's staging folder.
    staged = sb.path("checkpoints/tmp-checkpoint-9000")
    shutil.copytree(sb.path(f"checkpoints/checkpoint-{newest}"), staged)
    an_hour_ago = time.time() - 3600  # left by a run killed mid-save: no trainer is writing it
    for path in [*staged.iterdir(), staged]:  # files too: a fresh file means "being written"
        os.utime(path, (an_hour_ago, an_hour_ago))
    digest = _digest(staged)
    sb.signal_daemon(signal.SIGKILL)
    status = sb.wait_running(restarts=1)
    resumed = resumed_step(status["restarts"][-1])
    expect(resumed == newest, f"resumed from checkpoint-{resumed}, not checkpoint-{newest}")
    expect(staged.is_dir(), "the staged folder was moved or deleted: it is the trainer's own")
    expect(_digest(staged) == digest, "the staged folder's content was changed")
    code, report = sb.tool_json("health_check", "--only", "checkpoints")
    check = report.get("checks", [{}])[0]
    expect(
        code == NAGIOS_WARNING and "tmp-checkpoint-9000" in str(check.get("details")),
        f"health-check does not report the staged leftover (exit {code}): {check.get('summary')}",
    )
    return f"resumed from checkpoint-{newest}, staged tmp-checkpoint-9000 left untouched"


SCENARIOS = (
    Scenario(
        name="checkpoint_corrupt_resume_previous",
        summary="a corrupt newest checkpoint is quarantined; the run resumes from the previous",
        fault="the newest checkpoint's model.safetensors overwritten with 16 NUL bytes, "
        "daemon SIGKILLed",
        expected="restart resumes from the previous checkpoint; the corrupt one is renamed into "
        "checkpoints/quarantine/ with its bytes intact; training passes the corrupt step",
        deadline=45,
        run=checkpoint_corrupt_resume_previous,
    ),
    Scenario(
        name="staged_checkpoint_ignored",
        summary="a staged tmp-checkpoint-* folder is never resumed from, moved or deleted",
        fault="an hour-old, complete-looking tmp-checkpoint-9000 beside real checkpoints, "
        "daemon SIGKILLed",
        expected="restart resumes from the newest real checkpoint; the staged folder stays, "
        "unchanged; health-check checkpoints WARNING names it as a staged leftover",
        deadline=45,
        run=staged_checkpoint_ignored,
    ),
)
