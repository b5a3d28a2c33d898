"""Atomic files: a reader never sees half a state file, a crash never leaves one."""

from __future__ import annotations

import json
import os
import stat
import tempfile
from contextlib import suppress
from pathlib import Path
from typing import Any


def write_bytes_atomic(
    path: str | os.PathLike[str], data: bytes, *, mode: int = 0o644, durable: bool = True
) -> None:
    """Write `data` to a temp file beside `path`, fsync it, rename it over `path`, fsync the dir.

    Atomic either way: a reader sees the old file or the new one, and a process that dies
    after the rename (a watchdog SIGKILLed) leaves the new one, in the page cache. `durable`
    adds the two fsyncs that keep it through a power cut; without them a write costs no disk
    wait, which on a disk busy with a checkpoint write can be seconds."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        with suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_dir(target.parent)


def write_text_atomic(
    path: str | os.PathLike[str], text: str, *, mode: int = 0o644, durable: bool = True
) -> None:
    write_bytes_atomic(path, text.encode("utf-8"), mode=mode, durable=durable)


def write_json_atomic(
    path: str | os.PathLike[str], obj: Any, *, mode: int = 0o644, durable: bool = True
) -> None:
    text = json.dumps(obj, indent=2, sort_keys=True) + "\n"
    write_text_atomic(path, text, mode=mode, durable=durable)


MAX_JSON_BYTES = 1 << 20  # progress and state files are a few KB: more is not one of ours


class UnreadableJson(ValueError):
    """Not a small regular file: a FIFO, a device, a folder's worth of bytes."""


def read_json(path: str | os.PathLike[str], *, max_bytes: int = MAX_JSON_BYTES) -> Any:
    """Read a small JSON file; raises OSError, or ValueError for what is not one (JSON errors,
    and UnreadableJson for a FIFO or device, which is never read, or a file over `max_bytes`).
    """
    return json.loads(read_small_file(path, max_bytes=max_bytes))


def read_small_file(path: str | os.PathLike[str], *, max_bytes: int = MAX_JSON_BYTES) -> bytes:
    """A small regular file's bytes; raises OSError, or UnreadableJson for a FIFO or device,
    which is never read, or a file over `max_bytes`.

    O_NONBLOCK: opening a FIFO with no writer would otherwise wait forever (a watchdog whose
    progress file someone replaced with a FIFO must not hang on it).
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
    except BaseException:
        os.close(fd)
        raise
    if not stat.S_ISREG(mode):
        os.close(fd)  # fdopen would refuse a folder's fd without closing it
        raise UnreadableJson(f"not a regular file ({_kind(mode)})")
    with os.fdopen(fd, "rb") as fh:
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise UnreadableJson(f"larger than {max_bytes} bytes")
    return data


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISDIR, "a folder")):  # fmt: skip
        if test(mode):
            return name
    return "not a plain file"


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make a rename durable: without this a power cut can undo it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems (e.g. certain FUSE mounts) refuse fsync on a directory
    finally:
        os.close(fd)
