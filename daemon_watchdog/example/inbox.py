"""The example daemon's job queue: JSON files moved between the folders of `inbox/` by rename.

    inbox/<name>.json          waiting, taken in name order
    inbox/claimed/<name>.json  being trained: claimed by one atomic rename, owned under a lock
    inbox/done/<name>.json     trained; moved here only once its final checkpoint is complete
    inbox/failed/<name>.json   refused, with the reason beside it in <name>.reason.txt

Claiming is an `os.rename` out of `inbox/`: of two daemons renaming one file, one wins and the
other gets ENOENT. Owning is an exclusive `flock` on the claimed file, held by the daemon and
inherited by the worker it starts: a claimed job nobody holds was left by a crash and is
adopted by the next daemon that looks, while one still being trained (by another daemon, or
by the orphaned worker of a killed one) is left alone. Every move is a rename within `inbox/`,
so a job file is always in exactly one of these folders: never lost, never in two.
Dot-files and names not ending in `.json` are ignored: write a job elsewhere (or as
`.name.json`) and rename it in, so the daemon never reads half a file.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
from dataclasses import dataclass
from pathlib import Path

from trainguard.atomicio import fsync_dir, write_text_atomic

CLAIMED, DONE, FAILED = "claimed", "done", "failed"
# A name becomes a folder name and a word in log lines: no spaces, no control characters.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


@dataclass
class Job:
    """A claimed job this process owns: `fd` holds its lock until `release`."""

    name: str
    path: Path  # inbox/claimed/<name>.json
    fd: int
    adopted: bool  # claimed earlier, by a daemon that died before finishing it

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class Inbox:
    """`folder` is the workspace's inbox/; `outputs/<name>` is where a job's checkpoints go."""

    def __init__(self, folder: Path, outputs: Path) -> None:
        self.folder = folder
        self.outputs = outputs

    def waiting(self) -> list[Path]:
        return _job_files(self.folder)

    def claimed(self) -> list[Path]:
        return _job_files(self.folder / CLAIMED)

    def next_job(self) -> tuple[Job | None, list[str]]:
        """The next job to work on: a claimed one nobody holds first, else the first waiting one
        that can be claimed; and one line for each waiting file refused on the way."""
        for path in self.claimed():
            job = self._own(path, adopted=True)
            if job is not None:
                return job, []
        refused: list[str] = []
        for path in self.waiting():
            reason = self._unclaimable(path)
            if reason is not None:
                if self._refuse(path, reason):
                    refused.append(f"{path.name}: {reason}")
                continue
            job = self.claim(path)
            if job is not None:
                return job, refused
        return None, refused

    def claim(self, path: Path) -> Job | None:
        """Rename a waiting job into `claimed/` and lock it; None if another daemon was first."""
        target = self.folder / CLAIMED / path.name
        target.parent.mkdir(exist_ok=True)
        try:
            os.rename(path, target)
        except FileNotFoundError:
            return None  # claimed (or refused) by another daemon between listing and renaming
        fsync_dir(self.folder)
        fsync_dir(target.parent)
        # Between the rename and the lock, a daemon that just started may adopt it: then it is
        # that daemon's, and this one goes on to the next.
        return self._own(target, adopted=False)

    def finish(self, job: Job) -> Path:
        """Move a trained job to `done/`: the caller has made sure its final output is complete."""
        return self._move(job, DONE)

    def fail(self, job: Job, reason: str) -> Path:
        """Move a claimed job that cannot be trained to `failed/`, with its reason beside it."""
        return self._move(job, FAILED, reason)

    def _move(self, job: Job, where: str, reason: str | None = None) -> Path:
        folder = self.folder / where
        folder.mkdir(exist_ok=True)
        target = _free_name(folder, job.path.name) if where == FAILED else folder / job.path.name
        if reason is not None:
            write_text_atomic(_reason_file(target), reason.rstrip("\n") + "\n")
        os.rename(job.path, target)  # still locked: nobody can adopt it mid-move
        fsync_dir(job.path.parent)
        fsync_dir(folder)
        job.release()
        return target

    def _own(self, path: Path, *, adopted: bool) -> Job | None:
        """Lock a claimed job file; None when someone holds it or it moved meanwhile."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # The file may have been finished and moved by its owner between our open and lock.
            if os.stat(path).st_ino != os.fstat(fd).st_ino:
                raise FileNotFoundError(path)
        except OSError as exc:
            os.close(fd)
            if isinstance(exc, FileNotFoundError) or exc.errno in (errno.EAGAIN, errno.EACCES):
                return None
            raise
        return Job(path.stem, path, fd, adopted)

    def _unclaimable(self, path: Path) -> str | None:
        """Why a waiting file cannot become a job. A name already claimed, done, or with
        checkpoints of its own would mix two jobs' files (or resume one from the other's)."""
        name = path.stem
        if not _NAME.fullmatch(name):
            return (
                "a job name must be 1 to 100 letters, digits, '.', '_' or '-', starting with a "
                "letter or digit"
            )
        for where in (CLAIMED, DONE):
            if (self.folder / where / path.name).exists():
                return f"a job named {name!r} is already in inbox/{where}/: rename this one"
        if os.path.lexists(self.outputs / name):
            return (
                f"a job named {name!r} was trained before (its checkpoints are in "
                f"{self.outputs / name}): rename this one, or remove those"
            )
        return None

    def _refuse(self, path: Path, reason: str) -> bool:
        """Move an unclaimable waiting file to `failed/`; False if another daemon took it."""
        folder = self.folder / FAILED
        folder.mkdir(exist_ok=True)
        target = _free_name(folder, path.name)
        write_text_atomic(_reason_file(target), reason + "\n")
        try:
            os.rename(path, target)
        except FileNotFoundError:
            _reason_file(target).unlink(missing_ok=True)
            return False
        fsync_dir(self.folder)
        fsync_dir(folder)
        return True


def _job_files(folder: Path) -> list[Path]:
    try:
        with os.scandir(folder) as scan:
            names = [e.name for e in scan if e.is_file()]
    except FileNotFoundError:
        return []
    return [folder / n for n in sorted(names) if n.endswith(".json") and not n.startswith(".")]


def _free_name(folder: Path, name: str) -> Path:
    """`name`, or `<stem>-2.json`, `-3`...: a refused job never replaces an earlier one."""
    stem = name.removesuffix(".json")
    candidate, n = folder / name, 1
    while candidate.exists() or _reason_file(candidate).exists():
        n += 1
        candidate = folder / f"{stem}-{n}.json"
    return candidate


def _reason_file(job_file: Path) -> Path:
    return job_file.with_name(job_file.name.removesuffix(".json") + ".reason.txt")
