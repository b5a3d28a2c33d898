"""Finding and killing what a sandbox started: only processes provably its own.

A process belongs to a sandbox when it runs as our uid and either carries the sandbox's marker
in its environment (`SANDBOX_ENV`, set for everything the sandbox starts and inherited by their
children) or an owner token the sandbox's watchdogs issued. A process merely naming the
sandbox's folder (an operator's `tail -f` on its log) is not ours. Nothing else is signalled.
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
SANDBOX_ENV = "TRAINGUARD_EDGE_SANDBOX"  # no "__": not a config override


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
    """Live processes of ours marked with `root` or carrying one of `tokens`. The folder on the
    command line only narrows the search: reading every process's environment is slower."""
    me = psutil.Process()
    skip = {me.pid, *(parent.pid for parent in me.parents())}
    uid = os.getuid()
    folder = str(root)
    found: dict[int, psutil.Process] = {}
    for proc in psutil.process_iter(["uids", "cmdline"]):
        uids, argv = proc.info["uids"], proc.info["cmdline"] or []
        if proc.pid in skip or uids is None or uids.real != uid:
            continue
        if any(folder in arg for arg in argv) and _marked(proc, folder):
            found[proc.pid] = proc
    for token in list(tokens):
        for proc in find_marked(token):
            found.setdefault(proc.pid, proc)
    return [p for p in found.values() if alive(p)]


def _marked(proc: psutil.Process, root: str) -> bool:
    try:
        return proc.environ().get(SANDBOX_ENV) == root and proc.is_running()
    except psutil.Error:
        return False


def kill_all(procs: Iterable[psutil.Process]) -> None:
    """SIGKILL at once: a throwaway run has nothing to save, and a polite stop could hang."""
    living = [p for p in procs if alive(p)]
    if living:
        kill_tree(living, sig=signal.SIGKILL, timeout=KILL_WAIT)
