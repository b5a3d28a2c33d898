"""Stopping our processes: a polite signal, a grace period, SIGKILL, and a report of who died how.

The polite signal is followed by SIGCONT, so that a stopped (SIGSTOPped, frozen) process handles
it at once instead of sitting out the grace period until SIGKILL.

Every target is verified right before it is signalled. On Linux >= 5.3 it is also pinned with a
pidfd first, so the signal reaches that very process even if its pid is recycled meanwhile, and
the wait polls the pidfds: no sleep loop, and no reaping, so whoever owns a child (a Popen) still
gets its real exit status. Elsewhere (older kernels such as RHEL 8's, macOS) psutil does both:
`send_signal` refuses a recycled pid with NoSuchProcess (it compares start times) and
`wait_procs` waits, reaping our own children, whose status is then only in the report.
"""

from __future__ import annotations

import math
import os
import select
import signal
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import psutil

from trainguard.procs import ProcessIdentity, find_marked, locate, locate_marked

KILL_TIMEOUT = 10.0
"""How long SIGKILLed processes get to vanish: a GPU process can take seconds to free its device."""

_Outcome = Literal["sent", "gone", "denied"]

_NO_CONTINUE = frozenset(
    {signal.SIGKILL, signal.SIGSTOP, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU, signal.SIGCONT}
)
"""Signals not to follow with SIGCONT: SIGKILL ends a stopped process anyway, and SIGCONT would
discard a stop signal still pending."""


@dataclass(frozen=True)
class KillReport:
    """Pids by how they ended; `returncodes` holds what is known (None: not our child)."""

    exited: tuple[int, ...] = ()  # ended after the polite signal, within the grace period
    killed: tuple[int, ...] = ()  # needed SIGKILL
    already_gone: tuple[int, ...] = ()  # gone, a zombie, or a recycled pid before we signalled
    survivors: tuple[int, ...] = ()  # still alive: kill_after=False, or stuck in the kernel
    denied: tuple[int, ...] = ()  # not ours to signal (another uid, or ourselves)
    returncodes: Mapping[int, int | None] = field(default_factory=dict)

    @property
    def stopped(self) -> bool:
        return not self.survivors and not self.denied


@dataclass
class _Target:
    proc: psutil.Process
    pidfd: int | None  # pins the verified process; None where pidfds are unavailable


def _pidfd_works() -> bool:
    if not (hasattr(os, "pidfd_open") and hasattr(signal, "pidfd_send_signal")):
        return False
    try:
        fd = os.pidfd_open(os.getpid())
    except OSError:  # kernel < 5.3, or a seccomp policy
        return False
    os.close(fd)
    return True


_PIDFD = _pidfd_works()


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _pin(proc: psutil.Process) -> _Target | None:
    """Verify `proc` and pin it; None if it is gone, a zombie, or its pid now names another."""
    fd: int | None = None
    if _PIDFD:
        try:
            fd = os.pidfd_open(proc.pid)
        except ProcessLookupError:
            return None
        except OSError:  # out of file descriptors: psutil's checks still guard this one
            fd = None
    # Verified after opening: if the pid still names our process now, the pidfd names it too.
    if _alive(proc):
        return _Target(proc, fd)
    if fd is not None:
        os.close(fd)
    return None


def _send(target: _Target, sig: int) -> _Outcome:
    try:
        if target.pidfd is not None:
            signal.pidfd_send_signal(target.pidfd, sig)
        else:
            target.proc.send_signal(sig)  # NoSuchProcess if the pid was recycled
    except (ProcessLookupError, psutil.NoSuchProcess):
        return "gone"
    except (PermissionError, psutil.AccessDenied):
        return "denied"
    return "sent"


def _wait(targets: Sequence[_Target], timeout: float) -> tuple[list[_Target], list[_Target]]:
    """Wait up to `timeout` s for `targets` to end; return (ended, alive). Zombies have ended."""
    deadline = time.monotonic() + timeout
    pinned = {t.pidfd: t for t in targets if t.pidfd is not None}
    unpinned = [t for t in targets if t.pidfd is None]
    ended: list[_Target] = []
    poller = select.poll()
    for fd in pinned:
        poller.register(fd, select.POLLIN)
    while pinned and (remaining := deadline - time.monotonic()) > 0:
        for fd, _ in poller.poll(math.ceil(remaining * 1000)):
            poller.unregister(fd)
            ended.append(pinned.pop(fd))
    alive = list(pinned.values())
    if unpinned:
        remaining = max(0.0, deadline - time.monotonic())
        gone, _ = psutil.wait_procs([t.proc for t in unpinned], timeout=remaining)
        gone_pids = {proc.pid for proc in gone}
        for t in unpinned:
            # psutil cannot wait for a zombie that is not our child: it counts as ended too.
            (ended if t.proc.pid in gone_pids or not _alive(t.proc) else alive).append(t)
    return ended, alive


def _returncode(target: _Target) -> int | None:
    if target.pidfd is None:
        code: int | None = getattr(target.proc, "returncode", None)  # set by psutil.wait_procs
        return code
    try:
        # WNOWAIT: read the status and leave the zombie for its owner to reap.
        info = os.waitid(os.P_PID, target.proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return None
    if info is None:
        return None
    return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status


def _signal_group(leader: _Target, targets: Sequence[_Target], sig: int) -> set[int]:
    """Signal the group `leader` leads and return the targets that got it that way.

    Only a verified, still-running leader: while it runs, its pid cannot name another group.
    Never our own group, nor a group the leader merely belongs to.
    """
    pgid = leader.proc.pid
    try:
        if os.getpgid(pgid) != pgid or pgid == os.getpgrp() or not _alive(leader.proc):
            return set()
        members = {t.proc.pid for t in targets if os.getpgid(t.proc.pid) == pgid}
        os.killpg(pgid, sig)
    except OSError:
        return set()
    return members


def _continue(leader: _Target | None, signalled: Sequence[_Target]) -> None:
    """SIGCONT what was just signalled: a stopped (frozen) process keeps every signal but
    SIGKILL pending until continued, so it would sit out the grace period and be SIGKILLed
    without ever running its handler. Harmless to a running process. Through the group where
    the signal went that way, which also reaches members forked after the snapshot; and to
    each pinned target, which the group may have missed."""
    if leader is not None:
        _signal_group(leader, signalled, signal.SIGCONT)
    for target in signalled:
        _send(target, signal.SIGCONT)


def _stop(
    procs: Iterable[psutil.Process],
    *,
    sig: int,
    timeout: float,
    kill_after: bool,
    kill_timeout: float,
    group_leader: int | None = None,
) -> KillReport:
    targets: list[_Target] = []
    gone: list[int] = []
    denied: list[int] = []
    seen: set[int] = set()
    try:
        for proc in procs:
            if proc.pid in seen:
                continue
            seen.add(proc.pid)
            if proc.pid == os.getpid():
                denied.append(proc.pid)
            elif (target := _pin(proc)) is None:
                gone.append(proc.pid)
            else:
                targets.append(target)
        leader = next((t for t in targets if t.proc.pid == group_leader), None)
        by_group = _signal_group(leader, targets, sig) if leader is not None else set()
        signalled: list[_Target] = []
        for target in targets:
            outcome: _Outcome = "sent" if target.proc.pid in by_group else _send(target, sig)
            if outcome == "sent":
                signalled.append(target)
            elif outcome == "gone":
                gone.append(target.proc.pid)
            else:
                denied.append(target.proc.pid)
        if sig not in _NO_CONTINUE:
            _continue(leader if by_group else None, signalled)
        exited, alive = _wait(signalled, timeout)
        killed: list[_Target] = []
        if alive and kill_after:
            doomed: list[_Target] = []
            for target in alive:
                outcome = _send(target, signal.SIGKILL)
                if outcome == "sent":
                    doomed.append(target)
                elif outcome == "gone":  # ended on its own just now
                    exited.append(target)
                else:
                    denied.append(target.proc.pid)
            killed, alive = _wait(doomed, kill_timeout)
        return KillReport(
            exited=tuple(t.proc.pid for t in exited),
            killed=tuple(t.proc.pid for t in killed),
            already_gone=tuple(gone),
            survivors=tuple(t.proc.pid for t in alive),
            denied=tuple(denied),
            returncodes={t.proc.pid: _returncode(t) for t in (*exited, *killed)},
        )
    finally:
        for target in targets:
            if target.pidfd is not None:
                os.close(target.pidfd)


def kill_tree(
    procs: Sequence[psutil.Process],
    *,
    sig: int = signal.SIGTERM,
    timeout: float,
    kill_after: bool = True,
    kill_timeout: float = KILL_TIMEOUT,
) -> KillReport:
    """Send `sig` to each of `procs`, give them `timeout` s, then SIGKILL the rest (`kill_after`).

    Trusts its caller that `procs` are ours (from `descendants` of a verified root, or
    `find_marked`); it only guarantees that a recycled pid is never signalled.
    """
    return _stop(procs, sig=sig, timeout=timeout, kill_after=kill_after, kill_timeout=kill_timeout)


def stop_process_tree(
    identity: ProcessIdentity,
    *,
    sig: int = signal.SIGTERM,
    timeout: float,
    token: str | None = None,
    kill_after: bool = True,
    kill_timeout: float = KILL_TIMEOUT,
) -> KillReport:
    """Stop the process `identity` recorded, its descendants and, with `token`, every marked one.

    If the identity no longer matches, the pid's current owner is left alone and reported as
    already gone. A root that leads its own process group gets `sig` through the group too,
    which also reaches children forked after the snapshot. Marked processes that appear during
    the grace period (a dying daemon respawning workers) get SIGKILL at the end.
    """
    root = locate_marked(identity, token)
    procs: list[psutil.Process] = []
    if root is not None:
        # Snapshot first: once the root dies, its children are re-parented out of reach.
        try:
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            procs = [root]
    if token:
        procs += find_marked(token)
    report = _stop(
        procs,
        sig=sig,
        timeout=timeout,
        kill_after=kill_after,
        kill_timeout=kill_timeout,
        group_leader=root.pid if root is not None else None,
    )
    if root is None:
        report = _merged(report, KillReport(already_gone=(identity.pid,)))
    if token:
        handled = {*report.exited, *report.killed, *report.already_gone, *report.denied}
        handled |= set(report.survivors)
        late = [proc for proc in find_marked(token) if proc.pid not in handled]
        if late:
            swept = _stop(
                late, sig=signal.SIGKILL, timeout=kill_timeout, kill_after=False, kill_timeout=0
            )
            report = _merged(report, swept, polite=False)
    return report


def signal_tree(root: ProcessIdentity, sig: int) -> list[int]:
    """Send `sig` to the verified `root` and its descendants (no waiting); the pids signalled."""
    proc = locate(root)
    if proc is None:
        return []
    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        procs = [proc]
    signalled: list[int] = []
    for member in procs:
        target = _pin(member)
        if target is None:
            continue
        try:
            if _send(target, sig) == "sent":
                signalled.append(member.pid)
        finally:
            if target.pidfd is not None:
                os.close(target.pidfd)
    return signalled


def _merged(first: KillReport, second: KillReport, *, polite: bool = True) -> KillReport:
    """Combine two reports; with `polite=False`, whatever ended in `second` counts as killed."""
    exited = second.exited if polite else ()
    killed = second.killed if polite else (*second.exited, *second.killed)
    return KillReport(
        exited=(*first.exited, *exited),
        killed=(*first.killed, *killed),
        already_gone=(*first.already_gone, *second.already_gone),
        survivors=(*first.survivors, *second.survivors),
        denied=(*first.denied, *second.denied),
        returncodes={**first.returncodes, **second.returncodes},
    )


def stop_started(started: Sequence[subprocess.Popen[bytes]], *, timeout: float) -> None:
    """Stop processes we started (a demo's runner, supervisor) with their whole trees, and wait
    for them: even after a failure or Ctrl+C, nothing they started is left behind."""
    for proc in started:
        if proc.poll() is None:
            try:
                root = psutil.Process(proc.pid)
                tree = [root, *root.children(recursive=True)]
            except psutil.Error:
                tree = []
            kill_tree(tree, sig=signal.SIGTERM, timeout=timeout)
        proc.wait()
