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
    """The newest valid checkpoint, or None to start from scratch (`choose_after_rewind`)."""
    return choose_after_rewind(ws, 0)[0]


def choose_after_rewind(ws: Workspace, skip: int) -> tuple[CheckpointInfo | None, list[str]]:
    """The checkpoint to resume from, or None to start from scratch; and the names of those
    rewound past, newest first.

    The daemon is gone, so nothing is in flight: an incomplete or corrupt checkpoint newer
    than the chosen one is quarantined (renamed), so the trainer cannot trip on it again.
    When checkpoints exist but none is valid, they stay where they are and NoValidCheckpoint
    is raised, unless `[checkpoints] allow_fresh_start`: then they are quarantined first, so
    the fresh run cannot overwrite them.

    `skip` (a nan_loss rewind): the newest `skip` valid numbered checkpoints are moved into
    quarantine/ too, as they may hold diverged weights, with every valid step-less one newer
    than the chosen one (a Lightning `last.ckpt` holds the newest weights); at least one valid
    checkpoint stays. One that cannot be moved stops the rewind: it is resumed from. Each
    checkpoint is checked once (a deep check reads every byte).
    """
    rules = ws.config.checkpoints
    try:
        candidates = find_candidates(ws.checkpoints_dir, rules.pattern)
    except OSError as exc:
        raise CheckpointsUnreadable(
            f"cannot list the checkpoints in {ws.checkpoints_dir}: {exc.strerror or exc}"
        ) from None
    bad: list[CheckpointInfo] = []
    passed: list[CheckpointInfo] = []  # valid, newer than the chosen one: rewound past
    numbered = 0
    chosen: CheckpointInfo | None = None
    for candidate in reversed(candidates):
        if candidate.staged:
            continue  # the trainer's own staging folder: not ours to move
        info = inspect(candidate, rules)
        if info is None:
            continue
        if not info.valid:
            bad.append(info)
            continue
        numbered += info.step is not None
        if skip == 0 or numbered > skip:
            chosen = info
            break
        passed.append(info)
    if chosen is None and passed:
        chosen = passed.pop()  # not enough older ones: the oldest valid one stays
    rewound: list[str] = []
    for info in passed:
        if refuse(info.path, "rewound past after a nan_loss crash") is None:
            chosen = info
            break
        rewound.append(info.path.name)
    if chosen is not None:
        for stale in bad:  # one that cannot be moved is logged and left: it is skipped
            refuse(stale.path, stale.reason or "invalid")
        return chosen, rewound
    if not bad:
        return None, []
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
    return None, []


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


def make_room(
    ws: Workspace, cancelled: Callable[[], bool] | None = None, *, force: bool = False
) -> tuple[str | None, int | None]:
    """Prune old checkpoints when free disk is below [health].disk_min_free_gb, or always
    (`force`: a disk_full crash's recovery action). Returns what to say of a low disk (for
    the log and a disk_low alert; None when there was room) and how many checkpoints were
    pruned (None: no prune, or it failed)."""
    need = ws.config.health.disk_min_free_gb * 1e9
    target = ws.checkpoints_dir if ws.checkpoints_dir.exists() else ws.base_dir
    free = shutil.disk_usage(target).free
    if free >= need and not force:
        return None, None
    try:
        # The daemon is gone: nothing is being written, so fresh checkpoints count too.
        removed = prune_now(ws, cancelled, settle=0.0)
    except OSError as exc:
        if free >= need:
            log.error("recovery: cannot prune checkpoints: %s", exc)
            return None, None
        message = f"low disk: {free / 1e9:.1f} GB free on {target}; cannot prune: {exc}"
        log.error("%s", message)
        return message, None
    if free >= need:
        return None, len(removed)
    free_after = shutil.disk_usage(target).free
    message = (
        f"low disk: {free / 1e9:.1f} GB free (< {need / 1e9:.1f} GB) on {target}; pruned "
        f"{len(removed)} old checkpoints, now {free_after / 1e9:.1f} GB free"
    )
    log.warning("%s", message)
    return message, len(removed)


def prune_now(
    ws: Workspace, cancelled: Callable[[], bool] | None = None, *, settle: float | None = None
) -> list[Path]:
    """Prune beyond keep_last; `settle` defaults to [checkpoints] settle_seconds."""
    rules = ws.config.checkpoints
    settle = rules.settle_seconds if settle is None else settle
    return prune(ws.checkpoints_dir, rules, settle=settle, cancelled=cancelled)
