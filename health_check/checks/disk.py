"""Free space and inodes on every filesystem the run writes to."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

from health_check.context import Context
from health_check.result import CheckResult, Fix, Metric, Status
from trainguard.checkpoints import count_numbered, prune
from trainguard.workspace import Workspace

GB = 1e9


@dataclass(frozen=True)
class Usage:
    path: Path  # the first configured path on this filesystem
    free_gb: float
    free_pct: float
    inodes_free_pct: float | None  # None where the filesystem has no inode limit (btrfs)


def _existing(path: Path) -> Path:
    """The path itself, or its nearest existing ancestor (a missing folder is made there)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def watched_paths(ws: Workspace) -> list[Path]:
    paths = [ws.base_dir, ws.checkpoints_dir, ws.daemon_log.parent]
    paths += [ws.path(p) for p in ws.config.health.disk_paths]
    return paths


def measure(paths: list[Path]) -> list[Usage]:
    """One entry per filesystem (by st_dev), in the order the paths were given."""
    seen: set[int] = set()
    found: list[Usage] = []
    for path in paths:
        real = _existing(path)
        dev = os.stat(real).st_dev
        if dev in seen:
            continue
        seen.add(dev)
        st = os.statvfs(real)
        total = st.f_blocks * st.f_frsize
        free = st.f_bavail * st.f_frsize
        inodes = 100.0 * st.f_favail / st.f_files if st.f_files else None
        found.append(Usage(real, free / GB, 100.0 * free / total if total else 0.0, inodes))
    return found


def probe(ctx: Context) -> CheckResult:
    ws = ctx.ws
    health = ws.config.health
    usages = measure(watched_paths(ws))
    status = Status.OK
    problems: list[str] = []
    details: list[str] = []
    metrics: list[Metric] = []
    low_devs: set[int] = set()
    for u in usages:
        inode_text = f", {u.inodes_free_pct:.1f}% inodes free" if u.inodes_free_pct else ""
        details.append(f"{u.path}: {u.free_gb:.1f} GB free ({u.free_pct:.1f}%){inode_text}")
        label = str(u.path)
        metrics.append(
            Metric("disk_free_gb", round(u.free_gb, 2), "GB", None, health.disk_min_free_gb, label)
        )
        metrics.append(
            Metric(
                "disk_free_pct", round(u.free_pct, 2), "%", health.disk_min_free_pct, None, label
            )
        )
        if u.free_gb < health.disk_min_free_gb:
            status = Status.CRITICAL
            problems.append(f"{u.path}: {u.free_gb:.1f} GB free < {health.disk_min_free_gb:g} GB")
            low_devs.add(os.stat(u.path).st_dev)
        elif u.free_pct < health.disk_min_free_pct:
            status = max(status, Status.WARNING)
            problems.append(f"{u.path}: {u.free_pct:.1f}% free < {health.disk_min_free_pct:g}%")
            low_devs.add(os.stat(u.path).st_dev)
        if u.inodes_free_pct is not None:
            metrics.append(
                Metric(
                    "inodes_free_pct",
                    round(u.inodes_free_pct, 2),
                    "%",
                    None,
                    health.inodes_min_free_pct,
                    label,
                )
            )
            if u.inodes_free_pct < health.inodes_min_free_pct:
                status = Status.CRITICAL
                problems.append(f"{u.path}: {u.inodes_free_pct:.1f}% inodes free")
    if not problems:
        tightest = min(usages, key=lambda u: u.free_gb)
        return CheckResult(
            "disk_space",
            Status.OK,
            f"{len(usages)} filesystem(s), least free {tightest.free_gb:.1f} GB ({tightest.path})",
            details,
            metrics=metrics,
        )
    return CheckResult(
        "disk_space", status, "; ".join(problems), details, _prune_fix(ws, low_devs), metrics
    )


def _prune_fix(ws: Workspace, low_devs: set[int]) -> Fix | None:
    """Old checkpoints beyond keep_last are the one thing here we may delete to make room.

    Proposed by name alone: knowing which are valid means reading them (every byte of a torch
    zip), and a disk verdict must never wait for that. The fix itself validates."""
    folder, cfg = ws.checkpoints_dir, ws.config.checkpoints
    try:
        if os.stat(folder).st_dev not in low_devs:
            return None
        numbered = count_numbered(folder, cfg.pattern)
    except OSError:
        return None
    if numbered <= cfg.keep_last:
        return None

    stop = threading.Event()

    def apply() -> str:
        removed = prune(folder, cfg, settle=cfg.settle_seconds, cancelled=stop.is_set)
        return f"pruned {len(removed)} checkpoint(s) beyond keep_last={cfg.keep_last}"

    return Fix(
        f"prune old checkpoints beyond keep_last={cfg.keep_last} ({numbered} on disk)",
        apply,
        key="prune-checkpoints",
        stop=stop,
    )
