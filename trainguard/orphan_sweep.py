"""Find and end what a dead child left behind: its workers, which hold GPU memory and write files.

Two proofs make a process such an orphan, and nothing else does. Ancestry: a supervisor that is
a child subreaper (`child_process.become_subreaper`) inherits every process of its children's
trees that loses its parent, so its descendants outside the live children's trees are orphans
of dead ones, even if they scrubbed their environment. The owner token: a process that left the
tree (started through systemd-run, ssh localhost, a container runtime) but still carries a dead
child's token, with our uid.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import psutil

from trainguard.process_tree import KillReport, kill_tree
from trainguard.procs import child_pids, descendants, find_marked

LATE_FORK_ROUNDS = 3
"""Sweeps again (`reparented`) for processes forked while their parents were being killed."""


@dataclass(frozen=True)
class Swept:
    """What one sweep ended: `names` ("pid (cmdline)") in the order found, and the kill report."""

    names: tuple[str, ...]
    report: KillReport


def reparented(live: Collection[int], exclude: Collection[int] = ()) -> list[psutil.Process]:
    """Our descendants outside the trees of the `live` pids, less `exclude` (our own helpers)."""
    direct = child_pids(os.getpid())
    if direct is not None and set(direct) <= set(live):
        return []  # every child is a live one: nothing outside their trees (one read per thread)
    found = descendants(os.getpid())
    return [
        p for p in found if p.pid not in live and p.pid not in exclude and not _in_tree(p, live)
    ]


def orphans_of(
    token: str, *, live: Collection[int], exclude: Collection[int] = (), tree: bool
) -> list[psutil.Process]:
    """What a dead child (owner `token`) left: re-parented to us and, unless `tree` says our
    process tree holds them all, the processes carrying its token."""
    found = reparented(live, exclude)
    if not tree:
        known = {p.pid for p in found}
        found += [p for p in find_marked(token) if p.pid not in known]
    return found


def kill_orphans(procs: Sequence[psutil.Process], *, timeout: float) -> Swept:
    """SIGKILL `procs` (already proven ours). Headless workers of a dead child: what they did
    since the last checkpoint is lost anyway, and a polite stop could hold the restart for a
    whole step or stop timeout. SIGKILL frees the GPU at once."""
    names = tuple(f"{p.pid} ({describe(p)})" for p in procs)
    return Swept(names, kill_tree(procs, sig=signal.SIGKILL, timeout=timeout))


def describe(proc: psutil.Process) -> str:
    """Its command line, shortened, for logs and reports."""
    try:
        return " ".join(proc.cmdline())[:80] or proc.name()
    except psutil.Error:
        return "?"


def _in_tree(proc: psutil.Process, roots: Collection[int]) -> bool:
    try:
        return any(parent.pid in roots for parent in proc.parents())
    except psutil.Error:
        return False
