"""Finding and killing what a sandbox started: only processes provably its own.

A process belongs to a sandbox when it runs as our uid and either names the sandbox's private
`mkdtemp` folder on its command line (daemons, workers and bystanders all do) or carries an
owner token the sandbox's watchdogs issued. Nothing else is ever signalled.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterable
from pathlib import Path

import psutil

from trainguard.process_tree import kill_tree
from trainguard.procs import find_marked

KILL_WAIT = 5.0


def alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def cmdline(proc: psutil.Process) -> list[str]:
    try:
        return proc.cmdline()
    except psutil.Error:
        return []


def with_descendants(procs: Iterable[subprocess.Popen[bytes]]) -> list[psutil.Process]:
    found: list[psutil.Process] = []
    for popen in procs:
        try:
            proc = psutil.Process(popen.pid)
            found += [proc, *proc.children(recursive=True)]
        except psutil.Error:
            continue
    return found


def belonging_to(root: Path, tokens: Iterable[str]) -> list[psutil.Process]:
    """Live processes of ours that name `root` on their command line or carry one of `tokens`."""
    me = psutil.Process()
    skip = {me.pid, *(parent.pid for parent in me.parents())}
    uid = os.getuid()
    folder = str(root)
    found: dict[int, psutil.Process] = {}
    for proc in psutil.process_iter(["uids", "cmdline"]):
        uids, argv = proc.info["uids"], proc.info["cmdline"] or []
        if proc.pid in skip or uids is None or uids.real != uid:
            continue
        if any(folder in arg for arg in argv):
            found[proc.pid] = proc
    for token in list(tokens):
        for proc in find_marked(token):
            found.setdefault(proc.pid, proc)
    return [p for p in found.values() if alive(p)]


def kill_all(procs: Iterable[psutil.Process]) -> None:
    """SIGKILL at once: a throwaway run has nothing to save, and a polite stop could hang."""
    living = [p for p in procs if alive(p)]
    if living:
        kill_tree(living, sig=signal.SIGKILL, timeout=KILL_WAIT)
