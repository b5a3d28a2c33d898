"""Find, validate, quarantine and prune the `checkpoint-<step>/` folders of a training run.

The watchdog resumes from the newest checkpoint that passes `validate_checkpoint`, so a
checkpoint cut short by a crash, a full disk or a stray FIFO must fail validation, quickly
and without an exception. Validation reads headers and checksums only, never the tensors.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from fnmatch import fnmatchcase
from pathlib import Path
from typing import BinaryIO

from trainguard import safetensors_header, torch_zip
from trainguard.atomicio import fsync_dir

DEFAULT_PATTERN = "checkpoint-*"
STAGED_PREFIX = "tmp-"  # the trainer writes here, then renames: such a folder is unfinished
QUARANTINE_DIR = "quarantine"
TRAINER_STATE = "trainer_state.json"
TORCH_SUFFIXES = (".bin", ".pt", ".pth")
WEIGHT_SUFFIXES = (".safetensors", *TORCH_SUFFIXES)
SHARD_INDEX_SUFFIX = ".index.json"  # e.g. model.safetensors.index.json of a sharded model

_TRAILING_INT = re.compile(r"(\d+)$")


@dataclass(frozen=True)
class CheckpointInfo:
    path: Path
    step: int | None  # the folder name's trailing integer
    valid: bool
    reason: str | None  # why it is invalid, naming the file; None when valid
    staged: bool
    mtime: float


def validate_checkpoint(path: Path) -> tuple[bool, str | None]:
    """Return (valid, reason); never raises for a damaged, odd or vanishing checkpoint.

    A missing trainer_state.json is no fault: only Hugging Face trainers write one.
    """
    reason = _find_problem(path)
    return reason is None, reason


def list_checkpoints(directory: Path, pattern: str = DEFAULT_PATTERN) -> list[CheckpointInfo]:
    """Validate every checkpoint folder, staged ones included, oldest first (no step first).

    A missing `directory` has no checkpoints; any other error reading it is raised, since
    "no checkpoints" would make the caller restart training from scratch.
    """
    found = (_inspect(path) for path in _candidates(directory, pattern))
    return [info for info in found if info is not None]


def newest_valid(directory: Path, pattern: str = DEFAULT_PATTERN) -> CheckpointInfo | None:
    """The checkpoint to resume from: validates newest first and stops at the first good one."""
    for path in reversed(_candidates(directory, pattern)):
        info = None if _is_staged(path.name) else _inspect(path)
        if info is not None and info.valid:
            return info
    return None


def find_candidates(directory: Path, pattern: str = DEFAULT_PATTERN) -> list[Path]:
    """Checkpoint and staged folders, oldest first, by name only: nothing is read or validated
    (for callers that must stay cheap however large the checkpoints are)."""
    return _candidates(directory, pattern)


def inspect(path: Path) -> CheckpointInfo | None:
    """Validate one checkpoint folder; None when it vanished meanwhile."""
    return _inspect(path)


def is_staged(path: Path) -> bool:
    return _is_staged(path.name)


def step_of(path: Path) -> int | None:
    """The folder name's trailing step number (`checkpoint-500` -> 500), if any."""
    return _step_of(path.name)


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
    directory: Path, keep_last: int, pattern: str = DEFAULT_PATTERN, *, dry_run: bool = False
) -> list[Path]:
    """Delete the oldest valid checkpoints beyond the newest `keep_last` valid ones.

    Staged and invalid folders are left alone (invalid ones are the caller's to quarantine),
    and so are folders without a step number (e.g. `checkpoint-best`: their age is unknown)
    and symlinks (their contents live outside `directory`). Returns what was (or would be)
    removed.
    """
    if keep_last < 1:
        raise ValueError(f"keep_last must be >= 1, got {keep_last}: the newest valid one stays")
    root = directory.resolve()
    ranked = [
        info.path
        for info in list_checkpoints(directory, pattern)
        if info.valid and not info.staged and info.step is not None
    ]
    doomed = [path for path in ranked[:-keep_last] if _is_inside(path, root)]
    if not dry_run:
        for path in doomed:
            _remove(path)
    return doomed


def _candidates(directory: Path, pattern: str) -> list[Path]:
    """Checkpoint and staged folders in `directory`, oldest first, without validating them."""
    try:
        with os.scandir(directory) as scan:
            entries = list(scan)
    except FileNotFoundError:
        return []
    wanted = (pattern, STAGED_PREFIX + pattern)
    found = [
        Path(entry.path)
        for entry in entries
        if entry.name != QUARANTINE_DIR
        and any(fnmatchcase(entry.name, glob) for glob in wanted)
        and entry.is_dir()
    ]
    return sorted(found, key=_age_key)


def _age_key(path: Path) -> tuple[bool, int, str]:
    step = _step_of(path.name)
    return step is not None, step or 0, path.name


def _inspect(path: Path) -> CheckpointInfo | None:
    """Validate one folder; None when it vanished meanwhile (renamed by the trainer, pruned)."""
    try:
        mtime = os.stat(path).st_mtime
    except FileNotFoundError:
        return None
    except OSError:
        mtime = 0.0  # validation reports the error itself
    valid, reason = validate_checkpoint(path)
    if not valid and not os.path.lexists(path):
        return None
    return CheckpointInfo(path, _step_of(path.name), valid, reason, _is_staged(path.name), mtime)


def _step_of(name: str) -> int | None:
    match = _TRAILING_INT.search(name)
    return int(match.group(1)) if match else None


def _is_staged(name: str) -> bool:
    return name.startswith(STAGED_PREFIX)


def _find_problem(folder: Path) -> str | None:
    if _is_staged(folder.name):
        return "staged (incomplete) checkpoint"
    try:
        if not stat.S_ISDIR(os.stat(folder).st_mode):
            return "not a directory"
        files = _files_in(folder)
        if not any(file.name.endswith(WEIGHT_SUFFIXES) for file in files):
            return "no weights file"
        # Cheap checks of every file first, so a stray FIFO or empty file is found before
        # CRC-checking gigabytes of optimizer state; torch zips, the slowest, go last.
        for file in files:
            problem = _stat_problem(file)
            if problem:
                return f"{file.relative_to(folder)}: {problem}"
        for file in sorted(files, key=lambda file: file.name.endswith(TORCH_SUFFIXES)):
            problem = _content_problem(file, folder)
            if problem:
                return f"{file.relative_to(folder)}: {problem}"
    except OSError as exc:
        return _describe(exc, folder)
    return None


def _files_in(folder: Path) -> list[Path]:
    """Every non-directory entry below `folder`; unlike os.walk's default, errors are raised."""

    def fail(exc: OSError) -> None:
        raise exc

    found: list[Path] = []
    for root, _dirs, names in os.walk(folder, onerror=fail):
        found.extend(Path(root, name) for name in names)
    return sorted(found)


def _stat_problem(file: Path) -> str | None:
    # stat before any open: opening a FIFO blocks until a writer appears, and opening some
    # device files has side effects.
    info = os.stat(file)
    if not stat.S_ISREG(info.st_mode):
        return "not a regular file"
    if info.st_size == 0:
        return "empty file"
    return None


def _content_problem(file: Path, folder: Path) -> str | None:
    """Run the format check the name calls for; other files need only be regular, non-empty."""
    name = file.name
    is_state = file == folder / TRAINER_STATE
    if not (name.endswith(WEIGHT_SUFFIXES) or name.endswith(SHARD_INDEX_SUFFIX) or is_state):
        return None
    opened = _open_regular(file)
    if opened is None:
        return "not a regular file"
    fh, size = opened
    with fh:
        if name.endswith(".safetensors"):
            return safetensors_header.check(fh, size)
        if name.endswith(TORCH_SUFFIXES):
            return _checked_zip(fh)
        if is_state:
            return _trainer_state_problem(fh, _step_of(folder.name))
        return _shard_index_problem(fh, file.parent)


# A torch zip's check reads every byte (CRCs): a long-running watchdog re-validates the same
# checkpoints at every prune, so results are kept per file version (device, inode, size,
# mtime). A rewritten or truncated file has a new version and is read again.
_ZIP_VERDICTS: dict[tuple[int, int, int, int], str | None] = {}
_ZIP_VERDICTS_MAX = 4096
ZIP_SETTLED_S = 2.0


def _checked_zip(fh: BinaryIO) -> str | None:
    info = os.fstat(fh.fileno())
    key = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
    if key in _ZIP_VERDICTS:
        return _ZIP_VERDICTS[key]
    verdict = torch_zip.check(fh)
    # mtime ticks are coarse (a few ms): a file written moments ago could change again with
    # the same key, so only settled files are remembered.
    if time.time() - info.st_mtime > ZIP_SETTLED_S:
        if len(_ZIP_VERDICTS) >= _ZIP_VERDICTS_MAX:
            _ZIP_VERDICTS.clear()
        _ZIP_VERDICTS[key] = verdict
    return verdict


def _open_regular(file: Path) -> tuple[BinaryIO, int] | None:
    """Open `file` and return it with its size, or None if it is no longer a regular file.

    The file may have been swapped since it was stat'ed: O_NONBLOCK makes opening a FIFO
    return at once, and fstat on the descriptor judges what was actually opened.
    """
    fd = os.open(file, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if stat.S_ISREG(info.st_mode):
            return os.fdopen(fd, "rb"), info.st_size
    except BaseException:
        os.close(fd)
        raise
    os.close(fd)
    return None


def _trainer_state_problem(fh: BinaryIO, folder_step: int | None) -> str | None:
    state, problem = _load_json_object(fh)
    if state is None:
        return problem
    step = state.get("global_step")
    if step is None:
        return None
    if not isinstance(step, int) or isinstance(step, bool):
        return f"global_step {step!r} is not an integer"
    if folder_step is not None and step != folder_step:
        return f"global_step {step} does not match the folder's step {folder_step}"
    return None


def _shard_index_problem(fh: BinaryIO, folder: Path) -> str | None:
    """A sharded model lists its shards in an index; one missing shard makes it unloadable."""
    index, problem = _load_json_object(fh)
    if index is None:
        return problem
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        return "weight_map is not a map of tensor names to shard files"
    missing = sorted(shard for shard in set(weight_map.values()) if not (folder / shard).is_file())
    return f"shard {missing[0]!r} listed in weight_map is missing" if missing else None


def _load_json_object(fh: BinaryIO) -> tuple[dict[str, object] | None, str | None]:
    try:
        value = json.loads(fh.read())
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return None, "not valid JSON"
    if not isinstance(value, dict):
        return None, "not a JSON object"
    return value, None


def _describe(exc: OSError, folder: Path) -> str:
    """The OS's words for an error, naming the file relative to the checkpoint folder."""
    words = exc.strerror or str(exc)
    if not isinstance(exc.filename, str):
        return words
    name = os.path.relpath(exc.filename, folder)
    return f"{folder.name if name == '.' else name}: {words}"


def _utc_stamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def _is_inside(path: Path, root: Path) -> bool:
    return not path.is_symlink() and path.resolve().parent == root


def _remove(path: Path) -> None:
    # Move it out of the pattern's sight first, so a prune interrupted half-way never leaves a
    # half-deleted folder that could pass for a checkpoint to resume from.
    trash = Path(tempfile.mkdtemp(prefix=f".pruning-{path.name}-", dir=path.parent))
    os.rename(path, trash / path.name)
    shutil.rmtree(trash)
