"""Die mid-save once, for real: what a crash, an OOM kill or a preemption does to a save."""

from __future__ import annotations

import os
import signal
from pathlib import Path


def should_die(base: Path, step: int) -> bool:
    """True once, at the save of step $DIE_SAVING_AT (a marker file makes it fire only once)."""
    wanted = os.environ.get("DIE_SAVING_AT")
    marker = base / "status" / "died-saving"
    if wanted is None or int(wanted) != step or marker.exists():
        return False
    marker.write_text(str(step))
    return True


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def truncate(path: Path) -> None:
    """Cut a file in half, as a write killed half-way leaves it."""
    size = path.stat().st_size
    with open(path, "r+b") as fh:
        fh.truncate(size // 2)
