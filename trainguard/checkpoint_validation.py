"""Is one checkpoint, a folder or a single file, complete and intact?

Validation never raises for a damaged, odd or vanishing checkpoint: it returns the reason,
naming the file. It reads headers, JSON and zip directories; a deep check also reads every
byte of torch zips against their CRCs, which for a multi-GB optimizer file takes seconds, so
deep checks can be cancelled and their verdicts are remembered per file version.
"""

from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

from trainguard import safetensors_header, torch_zip
from trainguard.torch_zip import Cancelled

STAGED_PREFIX = "tmp-"  # the trainer writes here, then renames: such a folder is unfinished
TRAINER_STATE = "trainer_state.json"
# torch.save files: Hugging Face's pytorch_model.bin/optimizer.pt/rng_state.pth, Lightning's
# .ckpt, a plain loop's .pt.
TORCH_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
WEIGHT_SUFFIXES = (".safetensors", *TORCH_SUFFIXES)
# What a checkpoint that is one file may be called; `torch.save(..., "x.pth.tar")` is an old
# habit. Other files matching the pattern (notes, logs) are not checkpoints at all.
FILE_SUFFIXES = (*WEIGHT_SUFFIXES, ".tar")
SHARD_INDEX_SUFFIX = ".index.json"  # e.g. model.safetensors.index.json of a sharded model

__all__ = ["Cancelled", "problem_of"]


def problem_of(
    path: Path,
    *,
    required_files: Sequence[str] = (TRAINER_STATE,),
    step: int | None = None,
    deep: bool = True,
    cancelled: Callable[[], bool] | None = None,
) -> str | None:
    """Why the checkpoint at `path` cannot be resumed from, or None when it can.

    `step` is the one its name gives, checked against trainer_state.json's global_step.
    Raises Cancelled when `cancelled()` turns true during a deep check.
    """
    if path.name.startswith(STAGED_PREFIX):
        return "staged (incomplete) checkpoint"
    try:
        mode = os.stat(path).st_mode
        if stat.S_ISDIR(mode):
            return _folder_problem(path, required_files, step, deep, cancelled)
        if not stat.S_ISREG(mode):
            return "not a regular file or folder"
        return _file_problem(path, path.parent, step, deep, cancelled, is_checkpoint=True)
    except OSError as exc:
        return _describe(exc, path)


def _folder_problem(
    folder: Path,
    required_files: Sequence[str],
    step: int | None,
    deep: bool,
    cancelled: Callable[[], bool] | None,
) -> str | None:
    for name in required_files:
        if not os.path.lexists(folder / name):
            return f"{name} missing: an unfinished save (required_files)"
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
        problem = _file_problem(file, folder, step, deep, cancelled, is_checkpoint=False)
        if problem:
            return f"{file.relative_to(folder)}: {problem}"
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


def _file_problem(
    file: Path,
    folder: Path,
    step: int | None,
    deep: bool,
    cancelled: Callable[[], bool] | None,
    *,
    is_checkpoint: bool,
) -> str | None:
    """Run the format check the name calls for. Inside a folder, other files need only be
    regular and non-empty; a checkpoint that is one file must be a format we can check."""
    name = file.name
    is_state = not is_checkpoint and file == folder / TRAINER_STATE
    is_torch = name.endswith(TORCH_SUFFIXES) or (is_checkpoint and name.endswith(".tar"))
    known = is_torch or name.endswith((".safetensors", SHARD_INDEX_SUFFIX)) or is_state
    if not known:
        return (
            "not a checkpoint file (.safetensors or a torch.save file)" if is_checkpoint else None
        )
    opened = _open_regular(file)
    if opened is None:
        return "not a regular file"
    fh, size = opened
    with fh:
        if size == 0:
            return "empty file"
        if name.endswith(".safetensors"):
            return safetensors_header.check(fh, size)
        if is_torch:
            return _checked_zip(fh, deep, cancelled)
        if is_state:
            return _trainer_state_problem(fh, step)
        return _shard_index_problem(fh, file.parent)


# A torch zip's deep check reads every byte (CRCs): a long-running watchdog re-validates the
# same checkpoints at every prune, so deep verdicts are kept per file version (device, inode,
# size, mtime). A rewritten or truncated file has a new version and is read again.
_ZIP_VERDICTS: dict[tuple[int, int, int, int], str | None] = {}
_ZIP_VERDICTS_MAX = 4096
ZIP_SETTLED_S = 2.0


def _checked_zip(fh: BinaryIO, deep: bool, cancelled: Callable[[], bool] | None) -> str | None:
    info = os.fstat(fh.fileno())
    key = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
    if key in _ZIP_VERDICTS:
        return _ZIP_VERDICTS[key]
    verdict = torch_zip.check(fh, deep=deep, cancelled=cancelled)
    # mtime ticks are coarse (a few ms): a file written moments ago could change again with
    # the same key, so only settled files are remembered.
    if deep and time.time() - info.st_mtime > ZIP_SETTLED_S:
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


def _describe(exc: OSError, checkpoint: Path) -> str:
    """The OS's words for an error, naming the file relative to the checkpoint."""
    words = exc.strerror or str(exc)
    if not isinstance(exc.filename, str):
        return words
    name = os.path.relpath(exc.filename, checkpoint)
    return f"{checkpoint.name if name == '.' else name}: {words}"
