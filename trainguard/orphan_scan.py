"""One pass over the process table: our proven orphans, and look-alikes that are not ours.

A process is ours only by proof: our uid and the owner token of our run (see `procs`). A process
whose cmdline merely matches `watchdog.orphan_patterns` (a `train.py` of someone else's, a run
started by hand, another watchdog's worker) is a suspect: worth reporting, since it may hold GPU
memory, and never ours to signal.
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import PurePath

import psutil

from trainguard.procs import owner_token


@dataclass(frozen=True)
class Suspect:
    """A process that matches an orphan pattern but that we cannot prove ours."""

    pid: int
    user: str  # the user name, or the uid where it has none
    cmdline: str  # joined with spaces, as the patterns saw it
    token: str | None  # the owner token it carries: another run's (or ours, under another uid)


@dataclass(frozen=True)
class OrphanScan:
    marked: tuple[psutil.Process, ...]  # our uid and our token, outside the spared pids
    suspects: tuple[Suspect, ...]  # match a pattern, not provably ours; in pid order


def scan_orphans(
    token: str | None, patterns: Sequence[str], *, spared: Collection[int] = ()
) -> OrphanScan:
    """Processes carrying our `token` (as `find_marked`) and those matching `patterns` that don't.

    Never listed: `spared` pids (the live daemon's and watchdog's trees), this process and its
    ancestors (a health-check started by a command line that names `train.py`). Never suspects:
    processes with no cmdline (kernel threads, zombies, ones we may not read), and workers of
    another run still under their own live daemon or watchdog (that run's business).
    Environments are read only for our uid's processes (with a token) and pattern matches.
    """
    compiled = [re.compile(pattern) for pattern in patterns]
    uid = os.getuid()
    me = psutil.Process()
    skip = {me.pid, *(parent.pid for parent in me.parents()), *spared}
    marked: list[psutil.Process] = []
    suspects: list[Suspect] = []
    # User names only for suspects: resolving every process's uid can be slow (LDAP, NIS).
    for proc in psutil.process_iter(["cmdline", "uids"]):
        argv, uids = proc.info["cmdline"], proc.info["uids"]
        if proc.pid in skip:
            continue
        same_user = uids is not None and uids.real == uid
        joined = " ".join(argv or ())
        matched = bool(joined) and any(rx.search(joined) for rx in compiled)
        if not matched and not (token and same_user):
            continue
        carried = owner_token(proc)
        if token and same_user and carried == token:
            marked.append(proc)
        elif matched and _alive(proc) and not (carried != token and _supervised(proc, carried)):
            uid_text = str(uids.real) if uids is not None else "?"
            suspects.append(Suspect(proc.pid, _user(proc, uid_text), joined, carried))
    return OrphanScan(
        tuple(sorted(marked, key=lambda p: p.pid)), tuple(sorted(suspects, key=lambda s: s.pid))
    )


def _user(proc: psutil.Process, uid: str) -> str:
    try:
        return proc.username()  # the uid, as a string, where it has no name
    except psutil.Error:
        return uid


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _supervised(proc: psutil.Process, carried: str | None) -> bool:
    """Whether another run's worker is still in its own live tree: its parent carries the same
    token (its daemon or a fellow worker lives), or is a watchdog, the subreaper that stops it."""
    if not carried:
        return False
    try:
        parent = proc.parent()
        if parent is None or parent.pid == 1:
            return False
        return owner_token(parent) == carried or is_watchdog_cmdline(parent.cmdline())
    except psutil.Error:
        return False


def is_watchdog_cmdline(argv: Sequence[str]) -> bool:
    """`daemon-watchdog ...` (the console script) or `python -m daemon_watchdog ...`."""
    if any(PurePath(arg).name == "daemon-watchdog" for arg in argv[:2]):
        return True
    return any(
        flag == "-m" and module.split(".")[0] == "daemon_watchdog"
        for flag, module in pairwise(argv)
    )
