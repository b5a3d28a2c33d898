"""Checkpoints: the newest valid one and its age, broken or staged leftovers, count vs keep_last.

Structure only (headers, JSON, zip directories, required files): a probe has a deadline, and
checking CRCs reads every byte of a multi-GB checkpoint. The watchdog checks every CRC of the
checkpoint it resumes from.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from health_check.context import Context
from health_check.result import CheckResult, Fix, FixError, Metric, Status
from health_check.supervision import read_supervision
from trainguard.checkpoints import (
    Candidate,
    CheckpointInfo,
    find_candidates,
    inspect,
    prune,
    quarantine,
    validate_checkpoint,
)
from trainguard.workspace import Workspace


def probe(ctx: Context) -> CheckResult:
    ws = ctx.ws
    cfg = ws.config.checkpoints
    folder = ws.checkpoints_dir
    try:
        candidates = find_candidates(folder, cfg.pattern)
    except OSError as exc:
        return CheckResult(
            "checkpoints", Status.CRITICAL, f"cannot list {folder}: {exc.strerror or exc}"
        )
    infos, older = _validate_newest(candidates, ws)
    training = read_supervision(ws).daemon is not None
    now = ctx.wall_clock()
    valid = [i for i in infos if i.valid]
    in_flight = [i for i in infos if i.in_flight]
    invalid = [i for i in infos if not i.valid and not i.staged and not i.in_flight]
    staged = [i for i in infos if i.staged and not i.in_flight]
    numbered = [i for i in valid if i.step is not None] + older
    beyond = max(0, len(numbered) - cfg.keep_last)
    newest = valid[-1] if valid else None
    counted = [c for c in older if not c.staged]
    metrics = [
        Metric("checkpoints_valid", len(valid)),
        Metric("checkpoints_invalid", len(invalid)),
        # Older than the newest valid one: counted by name, not opened (a restart never uses
        # them while a newer one is valid).
        Metric("checkpoints_older_unchecked", len(counted)),
    ]
    details = [f"invalid: {i.path.name}: {i.reason}" for i in invalid]
    details += [f"staged leftover: {i.path.name}" for i in staged]
    details += [f"in flight (being written): {i.path.name}" for i in in_flight]
    if newest is None and invalid:
        # What a restart would meet: FATAL, or a start from scratch that loses them all.
        then = (
            "a restart quarantines them and starts from scratch (allow_fresh_start)"
            if cfg.allow_fresh_start
            else "the watchdog will not restart the run (set allow_fresh_start to start over)"
        )
        return CheckResult(
            "checkpoints",
            Status.CRITICAL,
            f"{len(invalid)} checkpoint(s) match {cfg.pattern!r} but none is valid "
            f"({invalid[-1].path.name}: {invalid[-1].reason}); {then}",
            details,
            _fix(ws, staged, False),
            metrics,
        )
    problems: list[str] = []
    if invalid:
        problems.append(f"{len(invalid)} invalid ({invalid[-1].path.name}: {invalid[-1].reason})")
    if staged:
        problems.append(f"{len(staged)} staged leftover(s)")
    if newest is not None:
        age = max(0.0, now - newest.mtime)
        metrics.append(Metric("checkpoint_newest_age_s", round(age, 1), "s"))
        also = f" and {len(counted)} older ones counted, not opened" if counted else ""
        summary = (
            f"newest valid: {newest.path.name}, {age / 60:.0f} min old; {len(valid)} checked "
            f"valid{also}"
        )
        limit = ws.config.health.checkpoint_max_age
        if limit and training and age > limit:
            problems.append(f"newest valid is {age:.0f} s old (> {limit:g} s)")
    else:
        summary = "no valid checkpoint yet"
    if in_flight:
        summary += f"; {in_flight[-1].path.name} being written"
    # More than keep_last is tidying, not a health problem (disk_space warns when it matters):
    # it is reported and --fix prunes, but the status stays OK.
    extra = f"{len(numbered)} kept, {beyond} beyond keep_last={cfg.keep_last}" if beyond else ""
    fix = _fix(ws, [*invalid, *staged], bool(beyond))
    if not problems:
        text = f"{summary}; {extra}" if extra else summary
        return CheckResult("checkpoints", Status.OK, text, details, fix, metrics)
    text = "; ".join([*problems, extra] if extra else problems)
    return CheckResult("checkpoints", Status.WARNING, text, [summary, *details], fix, metrics)


def _validate_newest(
    candidates: list[Candidate], ws: Workspace
) -> tuple[list[CheckpointInfo], list[Candidate]]:
    """Validate newest first down to the newest valid checkpoint (the one a restart would use);
    older ones are only counted by name."""
    cfg = ws.config.checkpoints
    checked: list[CheckpointInfo] = []
    older: list[Candidate] = []
    for c in reversed(candidates):
        if any(i.valid for i in checked):
            if not c.staged and c.step is not None:
                older.append(c)  # counted by name: no walk through every old checkpoint
            continue
        info = inspect(c, cfg, settle=cfg.settle_seconds, deep=False)
        if info is not None:
            checked.append(info)
    return list(reversed(checked)), older


def _fix(ws: Workspace, bad: list[CheckpointInfo], prune_too: bool) -> Fix | None:
    if not bad and not prune_too:
        return None
    cfg = ws.config.checkpoints
    parts = []
    if bad:
        parts.append(f"quarantine {', '.join(i.path.name for i in bad)}")
    if prune_too:
        parts.append(f"prune beyond keep_last={cfg.keep_last}")
    stop = threading.Event()

    def apply() -> str:
        done = [f"quarantined {_move(ws, i.path).name}" for i in bad if os.path.lexists(i.path)]
        if prune_too:
            removed = prune(
                ws.checkpoints_dir, cfg, settle=cfg.settle_seconds, cancelled=stop.is_set
            )
            done.append(f"pruned {len(removed)}")
        return "; ".join(done) or "nothing left to do"

    return Fix(" and ".join(parts), apply, key="checkpoints", stop=stop)


def _move(ws: Workspace, path: Path) -> Path:
    """Quarantine `path` if it is still bad: a staged one may have been finished meanwhile."""
    cfg = ws.config.checkpoints
    if not path.name.startswith("tmp-") and validate_checkpoint(path, cfg, deep=False)[0]:
        raise FixError(f"{path.name} is valid now; left in place")
    return quarantine(path)
