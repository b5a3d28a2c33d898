"""Between a crash and the next start: what to resume from, and room on disk."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from trainguard.checkpoints import CheckpointInfo, list_checkpoints, prune, quarantine
from trainguard.errors import TrainguardError
from trainguard.workspace import Workspace

log = logging.getLogger("daemon_watchdog")


class CheckpointsUnreadable(TrainguardError):
    """The checkpoint folder cannot be listed: starting from scratch could overwrite it."""


def pick_checkpoint(ws: Workspace) -> CheckpointInfo | None:
    """The newest valid checkpoint; invalid ones newer than it are quarantined (renamed)."""
    try:
        infos = list_checkpoints(ws.checkpoints_dir, ws.config.checkpoints.pattern)
    except OSError as exc:
        raise CheckpointsUnreadable(
            f"cannot list the checkpoints in {ws.checkpoints_dir}: {exc.strerror or exc}"
        ) from None
    for info in reversed(infos):
        if info.valid:
            return info
        if info.staged:
            continue  # the trainer's own staging folder: not ours to move
        try:
            moved = quarantine(info.path)
        except OSError as exc:
            log.error(
                "cannot quarantine invalid checkpoint %s (%s): %s; left where it is, skipped",
                info.path.name, info.reason, exc.strerror or exc,
            )  # fmt: skip
            continue
        log.warning(
            "quarantined invalid checkpoint %s (%s) as %s", info.path.name, info.reason, moved
        )
    return None


def make_room(ws: Workspace) -> str | None:
    """Prune old checkpoints when free disk is below [health].disk_min_free_gb; say what
    happened (for the log and a disk_low alert), or None when there was room."""
    need = ws.config.health.disk_min_free_gb * 1e9
    target = ws.checkpoints_dir if ws.checkpoints_dir.exists() else ws.base_dir
    free = shutil.disk_usage(target).free
    if free >= need:
        return None
    try:
        removed = prune(
            ws.checkpoints_dir, ws.config.checkpoints.keep_last, ws.config.checkpoints.pattern
        )
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


def prune_periodically(ws: Workspace) -> list[Path]:
    return prune(ws.checkpoints_dir, ws.config.checkpoints.keep_last, ws.config.checkpoints.pattern)
