"""Between a crash and the next start: what to resume from, and room on disk.

These run on a worker thread (`checkpoint_jobs`), never on the supervisor's loop: a deep
check of a multi-GB checkpoint reads every byte.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from trainguard.checkpoints import (
    CheckpointInfo,
    find_candidates,
    inspect,
    prune,
    quarantine,
)
from trainguard.errors import TrainguardError
from trainguard.workspace import Workspace

log = logging.getLogger("daemon_watchdog")


class CheckpointsUnreadable(TrainguardError):
    """The checkpoint folder cannot be listed: starting from scratch could overwrite it."""


class NoValidCheckpoint(TrainguardError):
    """Checkpoints exist but none can be resumed from, and a fresh start was not allowed."""


def choose_checkpoint(ws: Workspace) -> CheckpointInfo | None:
    """The newest valid checkpoint, or None to start from scratch.

    The daemon is gone, so nothing is in flight: an incomplete or corrupt checkpoint newer
    than the valid one is quarantined (renamed), so the trainer cannot trip on it again.
    When checkpoints exist but none is valid, they stay where they are and NoValidCheckpoint
    is raised, unless `[checkpoints] allow_fresh_start`: then they are quarantined first, so
    the fresh run cannot overwrite them.
    """
    rules = ws.config.checkpoints
    try:
        candidates = find_candidates(ws.checkpoints_dir, rules.pattern)
    except OSError as exc:
        raise CheckpointsUnreadable(
            f"cannot list the checkpoints in {ws.checkpoints_dir}: {exc.strerror or exc}"
        ) from None
    bad: list[CheckpointInfo] = []
    for candidate in reversed(candidates):
        if candidate.staged:
            continue  # the trainer's own staging folder: not ours to move
        info = inspect(candidate, rules)
        if info is None:
            continue
        if info.valid:
            for stale in bad:  # one that cannot be moved is logged and left: it is skipped
                refuse(stale.path, stale.reason or "invalid")
            return info
        bad.append(info)
    if not bad:
        return None
    if not rules.allow_fresh_start:
        newest = bad[0]
        raise NoValidCheckpoint(
            f"{len(bad)} checkpoint(s) in {ws.checkpoints_dir} match {rules.pattern!r} but none "
            f"is valid (newest: {newest.path.name}: {newest.reason}); repair or move them, or "
            "set [checkpoints] allow_fresh_start = true to start from scratch"
        )
    stuck = [info.path.name for info in bad if refuse(info.path, info.reason or "invalid") is None]
    if stuck:
        raise NoValidCheckpoint(
            f"no valid checkpoint, and {', '.join(stuck)} could not be moved into quarantine/: "
            "a start from scratch could overwrite it; move it away, then restart"
        )
    log.warning("no valid checkpoint among %d: starting from scratch (allow_fresh_start)", len(bad))
    return None


def rewind(ws: Workspace, skip: int) -> list[str]:
    """Move the newest `skip` valid numbered checkpoints into quarantine/ (a NaN crash: they may
    hold diverged weights), with every valid step-less one newer than the checkpoint kept (a
    Lightning `last.ckpt` holds the newest weights too), keeping at least one valid checkpoint;
    the names moved, newest first. Invalid ones are left to `choose_checkpoint`. One that cannot
    be moved stops the rewind there: resuming from it is what would have happened anyway."""
    rules = ws.config.checkpoints
    try:
        candidates = find_candidates(ws.checkpoints_dir, rules.pattern)
    except OSError:
        return []  # `choose_checkpoint` says why, in the FATAL reason
    newer: list[CheckpointInfo] = []  # valid, newest first, until the one to resume from
    numbered = 0
    kept = False
    for candidate in reversed(candidates):
        if candidate.staged:
            continue
        info = inspect(candidate, rules)
        if info is None or not info.valid:
            continue
        if info.step is not None:
            numbered += 1
            if numbered > skip:
                kept = True
                break
        newer.append(info)
    if not kept:
        newer = newer[:-1]  # not enough older ones: the oldest valid one stays
    moved: list[str] = []
    for info in newer:
        if refuse(info.path, "rewound past after a nan_loss crash") is None:
            break
        moved.append(info.path.name)
    return moved


def refuse(path: Path, why: str) -> Path | None:
    """Quarantine one checkpoint, saying why; where it went, or None (logged) when it is still
    where it was."""
    try:
        moved = quarantine(path)
    except FileNotFoundError:
        if not os.path.lexists(path):
            return path  # gone already: nothing left to overwrite
        log.error(
            "cannot quarantine invalid checkpoint %s (%s): no quarantine folder", path.name, why
        )
        return None
    except OSError as exc:
        log.error("cannot quarantine invalid checkpoint %s (%s): %s; left where it is, skipped",
                  path.name, why, exc.strerror or exc)  # fmt: skip
        return None
    log.warning("quarantined checkpoint %s (%s) as %s", path.name, why, moved)
    return moved


def make_room(ws: Workspace, cancelled: Callable[[], bool] | None = None) -> str | None:
    """Prune old checkpoints when free disk is below [health].disk_min_free_gb; say what
    happened (for the log and a disk_low alert), or None when there was room."""
    need = ws.config.health.disk_min_free_gb * 1e9
    target = ws.checkpoints_dir if ws.checkpoints_dir.exists() else ws.base_dir
    free = shutil.disk_usage(target).free
    if free >= need:
        return None
    try:
        # The daemon is gone: nothing is being written, so fresh checkpoints count too.
        removed = prune_now(ws, cancelled, settle=0.0)
    except OSError as exc:
        message = f"low disk: {free / 1e9:.1f} GB free on {target}; cannot prune: {exc}"
        log.error("%s", message)
        return message
    free_after = shutil.disk_usage(target).free
    message = (
        f"low disk: {free / 1e9:.1f} GB free (< {need / 1e9:.1f} GB) on {target}; pruned "
        f"{len(removed)} old checkpoints, now {free_after / 1e9:.1f} GB free"
    )
    log.warning("%s", message)
    return message


def prune_now(
    ws: Workspace, cancelled: Callable[[], bool] | None = None, *, settle: float | None = None
) -> list[Path]:
    """Prune beyond keep_last; `settle` defaults to [checkpoints] settle_seconds."""
    rules = ws.config.checkpoints
    settle = rules.settle_seconds if settle is None else settle
    return prune(ws.checkpoints_dir, rules, settle=settle, cancelled=cancelled)
