"""Find, order, quarantine and prune the checkpoints of a training run: folders
(`checkpoint-500/`, Hugging Face) or single files (`epoch=3-step=400.ckpt`, `ckpt_000400.pt`).

Finding is by name and stat only; whether one can be resumed from is `checkpoint_validation`'s
question. An invalid checkpoint whose newest file changed within `settle` seconds, while a
trainer may still be writing it, is in flight rather than broken: left alone, never resumed
from. A prune neither deletes nor counts any checkpoint that changed within `settle` seconds.
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import itertools
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from fnmatch import fnmatchcase
from pathlib import Path

from trainguard.atomicio import fsync_dir
from trainguard.checkpoint_validation import FILE_SUFFIXES, STAGED_PREFIX, Cancelled, problem_of
from trainguard.config import CheckpointsSection

DEFAULT_PATTERN = "checkpoint-*"
QUARANTINE_DIR = "quarantine"
PRUNING_PREFIX = ".pruning-"  # a prune's trash folder; one left by a killed prune is removed

# `step=400` (Lightning), `global_step400` (DeepSpeed); else the name's last number after a
# separator or a letter (`checkpoint-400`, `ckpt_000400.pt`, `model_epoch3`), once suffixes and
# Lightning's `-v1` are cut off; else Lightning's `epoch=3`. Digits after `.` or `=` are a
# metric's (`epoch=2-val_loss=0.31`), never a step.
_NAMED_STEP = re.compile(r"(?:^|[^a-z0-9])(?:global_)?step[=_-]?(\d+)", re.IGNORECASE)
_NAMED_EPOCH = re.compile(r"(?:^|[^a-z0-9])epoch[=_-]?(\d+)", re.IGNORECASE)
_VERSION = re.compile(r"-v(\d+)$")
_HF_FOLDER = re.compile(r"checkpoint-(\d+)")
_TRAILING_INT = re.compile(r"(?:^|[-_a-zA-Z])(\d+)$")
_SUFFIXES = (".pth.tar", *FILE_SUFFIXES)

__all__ = ["Cancelled", "Candidate", "CheckpointInfo", "problem_of"]


@dataclass(eq=False)
class Candidate:
    """A checkpoint as found by name: nothing in it has been read."""

    path: Path
    step: int | None  # from the name; None for `last.ckpt`, `checkpoint-best`
    staged: bool

    @functools.cached_property
    def mtime(self) -> float:
        """When anything in it last changed (0 if it vanished). Looked up only when asked: for
        a folder it takes a stat of every file in it."""
        return _newest_mtime(self.path) or 0.0

    def in_flight(self, settle: float, now: float | None = None) -> bool:
        """Changed within `settle` seconds: a trainer may still be writing it."""
        return settle > 0 and (time.time() if now is None else now) - self.mtime < settle


@dataclass(frozen=True)
class CheckpointInfo:
    path: Path
    step: int | None
    valid: bool
    reason: str | None  # why it is invalid, naming the file; None when valid
    staged: bool
    mtime: float
    in_flight: bool = False


def step_of(name: str) -> int | None:
    """The training step a checkpoint's name gives, if any."""
    stem = _stem(name)
    for found in (_NAMED_STEP.search(stem), _TRAILING_INT.search(_VERSION.sub("", stem))):
        if found:
            return int(found.group(1))
    epoch = _NAMED_EPOCH.search(stem)
    return int(epoch.group(1)) if epoch else None


def _global_step(name: str) -> int | None:
    """The step a trainer_state.json inside must hold: only for names that give the global step
    (`checkpoint-400`, `step=400`), not an epoch or a number of another kind."""
    named = _NAMED_STEP.search(_stem(name))
    if named:
        return int(named.group(1))
    hf = _HF_FOLDER.fullmatch(name)
    return int(hf.group(1)) if hf else None


def _stem(name: str) -> str:
    return next((name[: -len(s)] for s in _SUFFIXES if name.endswith(s)), name)


def _version(name: str) -> int:
    """Lightning's `-v1`, `-v2` for a name saved again: a later version is newer."""
    found = _VERSION.search(_stem(name))
    return int(found.group(1)) if found else 0


def find_candidates(directory: Path, pattern: str = DEFAULT_PATTERN) -> list[Candidate]:
    """Checkpoints and the trainer's staged ones, oldest first, by name and stat only.

    Ordered by the step in their names; one without a step goes after every numbered one
    written no later than it (so a fresh `last.ckpt` is the newest). A missing `directory` has
    none; any other error listing it is raised, since "no checkpoints" would make the caller
    restart training from scratch.
    """
    found = [
        Candidate(Path(entry.path), step_of(entry.name), entry.name.startswith(STAGED_PREFIX))
        for entry in _matching(directory, pattern)
    ]
    return _ordered(found)


def count_numbered(directory: Path, pattern: str = DEFAULT_PATTERN) -> int:
    """How many checkpoints with a step in their names there are (staged ones aside), never
    looking inside them (a disk verdict must not wait on a walk of 100,000 files)."""
    return sum(
        1
        for entry in _matching(directory, pattern)
        if not entry.name.startswith(STAGED_PREFIX) and step_of(entry.name) is not None
    )


def _matching(directory: Path, pattern: str) -> list[os.DirEntry[str]]:
    """The entries of `directory` that are checkpoints or the trainer's staged ones, by name:
    the pattern (or `tmp-` + it), not our quarantine or prune trash, and a plain file only
    with a checkpoint's suffix (notes or a log beside them are not checkpoints)."""
    try:
        with os.scandir(directory) as scan:
            entries = list(scan)
    except FileNotFoundError:
        return []
    wanted = (pattern, STAGED_PREFIX + pattern)
    return [
        entry
        for entry in entries
        if entry.name != QUARANTINE_DIR
        and not entry.name.startswith(PRUNING_PREFIX)
        and any(fnmatchcase(entry.name, glob) for glob in wanted)
        and (entry.name.endswith(FILE_SUFFIXES) or _is_dir_or_other(entry))
    ]


def _is_dir_or_other(entry: os.DirEntry[str]) -> bool:
    """A folder, or something odd (a FIFO) that validation should name, not skip."""
    try:
        return not entry.is_file()
    except OSError:
        return True


def _ordered(found: list[Candidate]) -> list[Candidate]:
    numbered = sorted(
        (c for c in found if c.step is not None),
        key=lambda c: (c.step, _version(c.path.name), c.path.name),
    )
    unnumbered = sorted((c for c in found if c.step is None), key=lambda c: (c.mtime, c.path.name))
    if not unnumbered:
        return numbered  # no mtime needed: nothing inside the folders is looked at
    written_by = list(itertools.accumulate((c.mtime for c in numbered), max))
    slots: list[list[Candidate]] = [[] for _ in range(len(numbered) + 1)]
    for c in unnumbered:
        slots[bisect.bisect_right(written_by, c.mtime)].append(c)
    ordered = list(slots[0])
    for c, after in zip(numbered, slots[1:], strict=True):
        ordered += [c, *after]
    return ordered


def _newest_mtime(path: Path) -> float | None:
    """A file's mtime, or the newest mtime of a folder and everything below it."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    if not os.path.isdir(path):
        return info.st_mtime
    newest = info.st_mtime
    for root, dirs, files in os.walk(path):
        for name in itertools.chain(dirs, files):
            try:
                newest = max(newest, os.lstat(os.path.join(root, name)).st_mtime)
            except OSError:
                continue
    return newest


def inspect(
    candidate: Candidate,
    rules: CheckpointsSection,
    *,
    settle: float = 0.0,
    deep: bool = True,
    cancelled: Callable[[], bool] | None = None,
) -> CheckpointInfo | None:
    """Validate one checkpoint; None when it vanished meanwhile. One that is not (yet) valid
    and changed within `settle` seconds is in flight: being written, not broken."""
    c = candidate
    reason = problem_of(
        c.path,
        required_files=rules.required_files,
        step=_global_step(c.path.name),
        deep=deep,
        cancelled=cancelled,
    )
    if reason is not None and not os.path.lexists(c.path):
        return None
    in_flight = reason is not None and c.in_flight(settle)
    return CheckpointInfo(c.path, c.step, reason is None, reason, c.staged, c.mtime, in_flight)


def validate_checkpoint(
    path: Path, rules: CheckpointsSection | None = None, *, deep: bool = True
) -> tuple[bool, str | None]:
    """Return (valid, reason) for one checkpoint folder or file; never raises."""
    rules = rules or CheckpointsSection()
    reason = problem_of(path, required_files=rules.required_files,
                        step=_global_step(path.name), deep=deep)  # fmt: skip
    return reason is None, reason


def list_checkpoints(
    directory: Path, rules: CheckpointsSection, *, settle: float = 0.0, deep: bool = True
) -> list[CheckpointInfo]:
    """Validate every checkpoint, staged and in-flight ones included, oldest first."""
    found = (
        inspect(c, rules, settle=settle, deep=deep)
        for c in find_candidates(directory, rules.pattern)
    )
    return [info for info in found if info is not None]


def newest_valid(
    directory: Path, rules: CheckpointsSection, *, settle: float = 0.0
) -> CheckpointInfo | None:
    """The checkpoint to resume from: validates newest first and stops at the first good one."""
    for c in reversed(find_candidates(directory, rules.pattern)):
        if c.staged:
            continue
        info = inspect(c, rules, settle=settle)
        if info is not None and info.valid:
            return info
    return None


def quarantine(path: Path) -> Path:
    """Move a bad checkpoint to `<parent>/quarantine/<name>.<UTC time>`, keeping every byte.

    A sibling folder keeps the move a rename on one filesystem: atomic, and no copy that could
    fill the disk. Raises OSError (EXDEV included) rather than ever falling back to deleting.
    """
    folder = path.parent / QUARANTINE_DIR
    folder.mkdir(exist_ok=True)
    base = f"{path.name}.{_utc_stamp()}"
    target = folder / base
    counter = 1
    while os.path.lexists(target):
        target = folder / f"{base}.{counter}"
        counter += 1
    os.rename(path, target)
    fsync_dir(path.parent)
    fsync_dir(folder)
    return target


def prune(
    directory: Path,
    rules: CheckpointsSection,
    *,
    settle: float,
    dry_run: bool = False,
    cancelled: Callable[[], bool] | None = None,
) -> list[Path]:
    """Delete the numbered checkpoints older than the newest `keep_last` valid ones.

    The kept ones are checked deeply (every CRC): keeping a corrupt one in place of a good
    one would leave nothing to resume from. What is deleted is only checked quickly, and only
    valid ones are deleted: invalid ones are the caller's to quarantine. Staged and in-flight
    checkpoints, names without a step (`last.ckpt`, `checkpoint-best`: their age is unknown)
    and symlinks (their contents live outside `directory`) are left alone and not counted.
    Raises Cancelled when `cancelled()` turns true; what was deleted by then stays deleted.
    Returns what was (or would be) removed.
    """
    keep_last = rules.keep_last
    if keep_last < 1:
        raise ValueError(f"keep_last must be >= 1, got {keep_last}: the newest valid one stays")
    if not dry_run:
        clean_leftovers(directory)
    root = directory.resolve()
    kept = 0
    doomed: list[Path] = []
    for c in reversed(find_candidates(directory, rules.pattern)):
        if c.staged or c.step is None or c.in_flight(settle):
            continue
        _check(cancelled)
        info = inspect(c, rules, deep=kept < keep_last, cancelled=cancelled)
        if info is None or not info.valid:
            continue
        if kept < keep_last:
            kept += 1
        elif _is_inside(c.path, root):
            doomed.append(c.path)
    if not dry_run:
        for path in reversed(doomed):  # oldest first: an interrupted prune keeps the newer
            _check(cancelled)
            _remove(path)
    return list(reversed(doomed))


def clean_leftovers(directory: Path) -> list[Path]:
    """Finish what a prune killed half-way left: its `.pruning-*` trash folders."""
    try:
        with os.scandir(directory) as scan:
            trash = [Path(e.path) for e in scan if e.name.startswith(PRUNING_PREFIX) and e.is_dir()]
    except OSError:
        return []
    for path in trash:
        shutil.rmtree(path, ignore_errors=True)
    return trash


def _check(cancelled: Callable[[], bool] | None) -> None:
    if cancelled is not None and cancelled():
        raise Cancelled("prune")


def _utc_stamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def _is_inside(path: Path, root: Path) -> bool:
    return not path.is_symlink() and path.resolve().parent == root


def _remove(path: Path) -> None:
    # Move it out of the pattern's sight first, so a prune interrupted half-way never leaves a
    # half-deleted checkpoint that could pass for one to resume from.
    trash = Path(tempfile.mkdtemp(prefix=f"{PRUNING_PREFIX}{path.name}-", dir=path.parent))
    # FileNotFoundError: quarantined meanwhile, or another prune (the watchdog's and a
    # health-check --fix can overlap) cleaned up the trash as a leftover.
    with contextlib.suppress(FileNotFoundError):
        os.rename(path, trash / path.name)
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(trash)
