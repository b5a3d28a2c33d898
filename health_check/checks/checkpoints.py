"""Checkpoints: the newest valid one and its age, broken or staged leftovers, count vs keep_last."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from health_check.context import Context
from health_check.result import CheckResult, Fix, FixError, Metric, Status
from health_check.supervision import read_supervision
from trainguard.checkpoints import (
    CheckpointInfo,
    find_candidates,
    inspect,
    is_staged,
    prune,
    quarantine,
    step_of,
    validate_checkpoint,
)
from trainguard.workspace import Workspace


def probe(ctx: Context) -> CheckResult:
    ws = ctx.ws
    cfg = ws.config.checkpoints
    folder = ws.checkpoints_dir
    try:
        infos, older = _validate_newest(folder, cfg.pattern)
    except OSError as exc:
        return CheckResult(
            "checkpoints", Status.CRITICAL, f"cannot list {folder}: {exc.strerror or exc}"
        )
    training = read_supervision(ws).daemon is not None
    now = ctx.wall_clock()
    stale_after = ws.config.watchdog.progress_timeout
    valid = [i for i in infos if i.valid and not i.staged]
    # A folder the trainer may be writing right now is neither broken nor a leftover: some
    # trainers stage into tmp-*, others (Hugging Face) write checkpoint-N/ in place. While a
    # daemon runs, only folders untouched for longer than progress_timeout count.
    settled = [i for i in infos if not training or now - _newest_mtime(i.path) > stale_after]
    invalid = [i for i in settled if not i.valid and not i.staged]
    staged = [i for i in settled if i.staged]
    numbered = [i for i in valid if i.step is not None] + older
    beyond = max(0, len(numbered) - cfg.keep_last)
    newest = valid[-1] if valid else None
    metrics = [Metric("checkpoints_valid", len(valid)), Metric("checkpoints_invalid", len(invalid))]
    details = [f"invalid: {i.path.name}: {i.reason}" for i in invalid]
    details += [f"staged leftover: {i.path.name}" for i in staged]
    problems: list[str] = []
    if invalid:
        problems.append(f"{len(invalid)} invalid ({invalid[-1].path.name}: {invalid[-1].reason})")
    if staged:
        problems.append(f"{len(staged)} staged leftover(s)")
    if newest is not None:
        age = max(0.0, now - newest.mtime)
        metrics.append(Metric("checkpoint_newest_age_s", round(age, 1), "s"))
        summary = f"newest valid: {newest.path.name}, {age / 60:.0f} min old; {len(valid)} valid"
        limit = ws.config.health.checkpoint_max_age
        if limit and training and age > limit:
            problems.append(f"newest valid is {age:.0f} s old (> {limit:g} s)")
    else:
        summary = "no valid checkpoint yet"
    # More than keep_last is tidying, not a health problem (disk_space warns when it matters):
    # it is reported and --fix prunes, but the status stays OK.
    extra = f"{len(numbered)} kept, {beyond} beyond keep_last={cfg.keep_last}" if beyond else ""
    fix = _fix(ws, [*invalid, *staged], bool(beyond))
    if not problems:
        text = f"{summary}; {extra}" if extra else summary
        return CheckResult("checkpoints", Status.OK, text, details, fix, metrics)
    text = "; ".join([*problems, extra] if extra else problems)
    return CheckResult("checkpoints", Status.WARNING, text, [summary, *details], fix, metrics)


def _validate_newest(folder: Path, pattern: str) -> tuple[list[CheckpointInfo], list[Path]]:
    """Validate newest first down to the newest valid checkpoint (the one a restart would use);
    older ones are only counted by name. Validation reads headers and zip checksums, which for
    `.bin`/`.pt` files means every byte: done for every checkpoint each hour it could take
    minutes on a real run."""
    checked: list[CheckpointInfo] = []
    older: list[Path] = []
    for path in reversed(find_candidates(folder, pattern)):
        if any(i.valid and not i.staged for i in checked):
            if not is_staged(path) and step_of(path) is not None:
                older.append(path)
            continue
        info = inspect(path)
        if info is not None:
            checked.append(info)
    return list(reversed(checked)), older


def _newest_mtime(folder: Path) -> float:
    newest = 0.0
    try:
        newest = os.stat(folder).st_mtime
        with os.scandir(folder) as entries:
            for entry in entries:
                with contextlib.suppress(OSError):
                    newest = max(newest, entry.stat(follow_symlinks=False).st_mtime)
    except OSError:
        pass
    return newest


def _fix(ws: Workspace, bad: list[CheckpointInfo], prune_too: bool) -> Fix | None:
    if not bad and not prune_too:
        return None
    cfg = ws.config.checkpoints
    parts = []
    if bad:
        parts.append(f"quarantine {', '.join(i.path.name for i in bad)}")
    if prune_too:
        parts.append(f"prune beyond keep_last={cfg.keep_last}")

    def apply() -> str:
        done = [f"quarantined {_move(i.path).name}" for i in bad if os.path.lexists(i.path)]
        if prune_too:
            removed = prune(ws.checkpoints_dir, cfg.keep_last, cfg.pattern)
            done.append(f"pruned {len(removed)}")
        return "; ".join(done) or "nothing left to do"

    return Fix(" and ".join(parts), apply, key="checkpoints")


def _move(path: Path) -> Path:
    """Quarantine `path` if it is still bad: a staged folder may have been finished meanwhile."""
    if not path.name.startswith("tmp-") and validate_checkpoint(path)[0]:
        raise FixError(f"{path.name} is valid now; left in place")
    return quarantine(path)
