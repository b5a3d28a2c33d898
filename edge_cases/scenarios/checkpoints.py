"""Checkpoints that must not be resumed from: a corrupt newest one, a staged half-save, a
Hugging Face-style save cut short in place, one the trainer itself refuses; and checkpoints
that are files, in Lightning's and a plain loop's naming."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import save as save_tensors

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
    resumed = resumed_step(status.restarts[-1])
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
    resumed = resumed_step(status.restarts[-1])
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


def _moved_to_quarantine(sb: Sandbox, name: str) -> list[Path]:
    return list(sb.path("checkpoints/quarantine").glob(f"{name}.*"))


def partial_inplace_checkpoint_skipped(sb: Sandbox) -> str:
    sb.create()
    newest = _freeze_with_checkpoints(sb, 2)
    # Hugging Face writes checkpoint-N/ in place: killed after the weights, before
    # trainer_state.json, it leaves a folder with valid weights and nothing else.
    partial = sb.path(f"checkpoints/checkpoint-{newest + 10}")
    partial.mkdir()
    shutil.copy(sb.path(f"checkpoints/checkpoint-{newest}/model.safetensors"), partial)
    sb.signal_daemon(signal.SIGKILL)
    status = sb.wait_running(restarts=1)
    resumed = resumed_step(status.restarts[0])
    expect(resumed == newest, f"resumed from checkpoint-{resumed}, not checkpoint-{newest}")
    expect(
        len(_moved_to_quarantine(sb, partial.name)) == 1,
        f"the partial {partial.name} was not quarantined",
    )
    now = sb.wait_running(past_step=newest + 15, restarts=1)
    expect(
        now.restart_count == 1,
        "the partial checkpoint cost extra restarts: it was resumed from",
    )
    return f"partial {partial.name} (weights only) quarantined; resumed from checkpoint-{newest}"


def checkpoint_refused_by_trainer(sb: Sandbox) -> str:
    sb.create()
    newest = _freeze_with_checkpoints(sb, 3)
    previous = sb.checkpoint_steps()[-2]
    # Complete and well-formed, so no validation can object; but its weights have the wrong
    # shapes, and the trainer refuses them with an error naming the checkpoint.
    weights = sb.path(f"checkpoints/checkpoint-{newest}/model.safetensors")
    weights.write_bytes(save_tensors({"fc1.weight": np.zeros((3, 3), dtype=np.float32)}))
    sb.signal_daemon(signal.SIGKILL)
    status = sb.wait_status(
        lambda s: s.state == "RUNNING" and s.restart_count >= 2,
        "RUNNING after the refused checkpoint",
    )
    quarantined = [r for r in status.restarts if r.quarantined]
    shown = [r.to_json() for r in status.restarts]
    expect(bool(quarantined), f"no restart quarantined checkpoint-{newest}: {shown}")
    expect(
        resumed_step(status.restarts[-1]) == previous,
        f"did not resume from checkpoint-{previous} after the refusal",
    )
    expect(
        len(_moved_to_quarantine(sb, f"checkpoint-{newest}")) == 1,
        f"checkpoint-{newest} is not in checkpoints/quarantine/",
    )
    sb.wait_running(past_step=newest + 5, restarts=2)
    return f"checkpoint-{newest} refused by the trainer, quarantined; resumed from {previous}"


def _file_checkpoints(sb: Sandbox, layout: str, pattern: str, glob: str) -> list[Path]:
    sb.create(checkpoint_layout=layout)
    sb.configure("checkpoints", pattern=pattern)
    sb.start_watchdog()
    sb.wait_running()
    folder = sb.path("checkpoints")

    def numbered() -> list[Path]:
        return sorted(folder.glob(glob), key=lambda p: p.stat().st_mtime)

    sb.deadline.wait_for(lambda: len(numbered()) >= 3, f"3 checkpoints named {glob}")
    sb.suspend_tree()
    return numbered()


def lightning_ckpt_files(sb: Sandbox) -> str:
    files = _file_checkpoints(sb, "lightning", "*.ckpt", "epoch=*-step=*.ckpt")
    newest, previous = files[-1], files[-2]
    folder = sb.path("checkpoints")
    # Killed while writing the newest: last.ckpt still holds the previous step, and the
    # newest file, written last, is cut short.
    shutil.copy(previous, folder / "last.ckpt")
    blob = newest.read_bytes()
    newest.write_bytes(blob[: len(blob) // 2])
    sb.signal_daemon(signal.SIGKILL)
    status = sb.wait_running(restarts=1)
    resume = status.restarts[0].resume_from
    expect(resume == "last.ckpt", f"resumed from {resume!r}, not last.ckpt")
    expect(len(_moved_to_quarantine(sb, newest.name)) == 1, f"{newest.name} was not quarantined")
    step = int(newest.name.rsplit("=", 1)[1].removesuffix(".ckpt"))
    sb.wait_running(past_step=step + 5, restarts=1)
    return f"truncated {newest.name} quarantined; resumed from last.ckpt; training passed it"


def plain_loop_pt_files(sb: Sandbox) -> str:
    files = _file_checkpoints(sb, "plain", "ckpt_*.pt", "ckpt_*.pt")
    newest, previous = files[-1], files[-2]
    blob = newest.read_bytes()
    newest.write_bytes(blob[:-40])  # cut short at the end: no zip directory
    sb.signal_daemon(signal.SIGKILL)
    status = sb.wait_running(restarts=1)
    resume = status.restarts[0].resume_from
    expect(resume == previous.name, f"resumed from {resume!r}, not {previous.name}")
    expect(len(_moved_to_quarantine(sb, newest.name)) == 1, f"{newest.name} was not quarantined")
    _code, report = sb.tool_json("health_check", "--only", "checkpoints")
    summary = str(report.get("checks", [{}])[0].get("summary"))
    expect("newest valid: ckpt_" in summary, f"health-check does not see them: {summary}")
    step = int(newest.stem.removeprefix("ckpt_"))
    sb.wait_running(past_step=step + 5, restarts=1)
    return f"truncated {newest.name} quarantined; resumed from {previous.name}"


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
    Scenario(
        name="partial_inplace_checkpoint_skipped",
        summary="a checkpoint saved in place and cut short (weights only) is never resumed from",
        fault="checkpoint-N+10/ with only model.safetensors (no trainer_state.json), as a "
        "Hugging Face save killed mid-way leaves it; daemon SIGKILLed",
        expected="one restart, from checkpoint-N; the partial folder is quarantined; training "
        "passes its step",
        deadline=45,
        run=partial_inplace_checkpoint_skipped,
        sabotage={"TRAINGUARD_CHECKPOINTS__REQUIRED_FILES": "[]"},
    ),
    Scenario(
        name="checkpoint_refused_by_trainer",
        summary="a checkpoint the trainer cannot resume from is quarantined, not retried to FATAL",
        fault="the newest checkpoint's weights replaced by a well-formed safetensors file of "
        "the wrong shapes: valid to every check, refused by the trainer with an error naming "
        "it; daemon SIGKILLed",
        expected="the restart from it dies before any progress; it is quarantined and the next "
        "restart resumes from the previous checkpoint",
        deadline=60,
        run=checkpoint_refused_by_trainer,
    ),
    Scenario(
        name="lightning_ckpt_files",
        summary="Lightning's epoch=E-step=S.ckpt files and last.ckpt are checkpoints too",
        fault="the newest .ckpt cut in half while last.ckpt still holds the previous step; "
        "daemon SIGKILLed",
        expected="the truncated file is quarantined; the restart resumes from last.ckpt, never "
        "from step 0",
        deadline=45,
        run=lightning_ckpt_files,
    ),
    Scenario(
        name="plain_loop_pt_files",
        summary="a plain loop's torch.save files (ckpt_000400.pt) are resumed from by step",
        fault="the newest ckpt_*.pt cut short; daemon SIGKILLed",
        expected="the restart resumes from the previous file; health-check sees the files",
        deadline=45,
        run=plain_loop_pt_files,
    ),
)
