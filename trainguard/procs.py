"""Process identity and ownership: prove a pid is still a process of ours before touching it.

A pid alone proves nothing: pid files outlive their processes and the kernel recycles pids. A
recorded process is ours only while pid, start time, cmdline and uid all still match; a worker
that escaped the tree is ours only when it runs as our uid and carries our owner token.
Stopping processes lives in `trainguard.process_tree`.
"""

from __future__ import annotations

import math
import os
import re
import signal
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psutil

from trainguard.start_ticks import current_boot_id, read_start_ticks

OWNER_ENV = "TRAINGUARD_OWNER"
"""Set in the daemon's environment by its supervisor and inherited by every descendant. No "__"
in the name: `TRAINGUARD_<SECTION>__<KEY>` variables are config overrides."""

CREATE_TIME_TOLERANCE = 0.005
"""Half of Linux's 0.01 s start-time resolution (1/USER_HZ): absorbs float noise from JSON and
finer-grained platforms, while start times one tick apart still never match. Used only where
the kernel's tick count is not known on both sides (see `ProcessIdentity`)."""

_BOOT_ID_MAX = 64


@dataclass(frozen=True)
class ProcessIdentity:
    """What we record about a process we started, so that we can recognise it later.

    `uid` is the real uid. The start is recorded twice: `start_ticks` (clock ticks since boot,
    /proc/PID/stat field 22) with `boot_id` say it in the kernel's terms, which a step of the
    wall clock (NTP) does not move, and decide whenever both the record and the live process
    have them; `create_time` (psutil's, seconds since the epoch) is derived from a boot time
    that does move with the clock, and is the fallback where /proc is missing (macOS) or the
    record comes from a watchdog that predates the tick count. Those two are None then.
    """

    pid: int
    create_time: float
    cmdline: tuple[str, ...]
    uid: int
    start_ticks: int | None = None
    boot_id: str | None = None

    def __post_init__(self) -> None:
        # pid 0 and negative pids address whole process groups in kill(2): never an identity.
        if self.pid <= 0:
            raise ValueError(f"pid must be > 0, got {self.pid}")

    def to_json(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "create_time": self.create_time,
            "cmdline": list(self.cmdline),
            "uid": self.uid,
            "start_ticks": self.start_ticks,
            "boot_id": self.boot_id,
        }

    @classmethod
    def from_json(cls, data: object) -> ProcessIdentity:
        """Rebuild an identity from `to_json` output; ValueError on any other shape.

        Unknown keys are ignored so that a newer writer does not lock out an older reader, and
        `start_ticks` / `boot_id` may be missing or null (an older writer, or no /proc).
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"process identity must be an object, got {type(data).__name__}")
        missing = [key for key in ("pid", "create_time", "cmdline", "uid") if key not in data]
        if missing:
            raise ValueError(f"process identity lacks {', '.join(missing)}")
        pid, create_time, cmdline, uid = (
            data["pid"],
            data["create_time"],
            data["cmdline"],
            data["uid"],
        )
        # bool is an int in Python, but `"pid": true` is a corrupt file, not pid 1.
        if not _is_int(pid) or pid <= 0:
            raise ValueError(f"process identity: pid must be a positive integer, got {pid!r}")
        if not (_is_int(create_time) or isinstance(create_time, float)) or not (
            math.isfinite(create_time) and create_time > 0
        ):
            raise ValueError(
                f"process identity: create_time must be a positive number, got {create_time!r}"
            )
        if not isinstance(cmdline, list) or not all(isinstance(arg, str) for arg in cmdline):
            raise ValueError(
                f"process identity: cmdline must be a list of strings, got {cmdline!r}"
            )
        if not _is_int(uid) or uid < 0:
            raise ValueError(f"process identity: uid must be an integer >= 0, got {uid!r}")
        start_ticks, boot_id = data.get("start_ticks"), data.get("boot_id")
        if start_ticks is not None and (not _is_int(start_ticks) or start_ticks < 0):
            raise ValueError(
                f"process identity: start_ticks must be an integer >= 0, got {start_ticks!r}"
            )
        if boot_id is not None and not _is_boot_id(boot_id):
            raise ValueError(f"process identity: boot_id must be a boot id, got {boot_id!r}")
        return cls(
            pid=pid,
            create_time=float(create_time),
            cmdline=tuple(cmdline),
            uid=uid,
            start_ticks=start_ticks,
            boot_id=boot_id,
        )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_boot_id(value: object) -> bool:
    # The kernel's is a UUID; any short printable word without spaces is accepted, so that a
    # kernel that spells it otherwise does not make every state file unreadable.
    return (
        isinstance(value, str)
        and 0 < len(value) <= _BOOT_ID_MAX
        and value.isprintable()
        and not any(ch.isspace() for ch in value)
    )


def identify(pid: int) -> ProcessIdentity | None:
    """Record who `pid` is now; None if it is gone, a zombie or not ours to inspect."""
    if pid <= 0:
        return None
    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            if proc.status() == psutil.STATUS_ZOMBIE:
                return None
            identity = ProcessIdentity(
                pid=pid,
                create_time=proc.create_time(),
                cmdline=tuple(proc.cmdline()),
                uid=proc.uids().real,
                start_ticks=read_start_ticks(pid),
                boot_id=current_boot_id(),
            )
        # The pid may have been recycled between the reads above; psutil's own check
        # (pid + boot-relative start time) rules that out.
        return identity if proc.is_running() else None
    except psutil.Error:
        return None


def matches(identity: ProcessIdentity, proc: psutil.Process) -> bool:
    """True only if `proc` is alive, not a zombie, and is the very process `identity` recorded."""
    if proc.pid != identity.pid:
        return False
    try:
        with proc.oneshot():
            same = (
                proc.is_running()
                and proc.status() != psutil.STATUS_ZOMBIE
                and started_as_recorded(identity, proc)
                and tuple(proc.cmdline()) == identity.cmdline
                and proc.uids().real == identity.uid
            )
        # Checked again: a pid recycled during the reads would lend us a stranger's cmdline.
        return same and proc.is_running()
    except psutil.Error:
        return False


def started_as_recorded(identity: ProcessIdentity, proc: psutil.Process) -> bool:
    """Whether `proc` started when `identity` says, judged so that a clock step changes nothing.

    Recorded in another boot: never (the pid names someone else now). Tick counts known on
    both sides: they alone decide, exactly. Otherwise psutil's create_time, within a tick.
    Raises psutil.Error like the psutil calls it makes; it does not check pid or liveness.
    """
    boot_id = current_boot_id()
    if identity.boot_id is not None and boot_id is not None and identity.boot_id != boot_id:
        return False
    if identity.start_ticks is not None and identity.boot_id is not None:
        ticks = read_start_ticks(proc.pid)
        if ticks is not None and boot_id is not None:
            return ticks == identity.start_ticks
    return abs(proc.create_time() - identity.create_time) <= CREATE_TIME_TOLERANCE


def locate(identity: ProcessIdentity) -> psutil.Process | None:
    """The live process `identity` recorded, or None if that process no longer runs."""
    try:
        proc = psutil.Process(identity.pid)
    except psutil.Error:
        return None
    return proc if matches(identity, proc) else None


def still_running(identity: ProcessIdentity) -> bool:
    return locate(identity) is not None


def locate_marked(identity: ProcessIdentity, token: str | None) -> psutil.Process | None:
    """`locate`, or else the process with the recorded pid, start time and uid that carries
    our owner `token`: its cmdline may have changed since it was recorded (a wrapper script
    that execs the trainer, setproctitle), and the token proves it ours without it."""
    proc = locate(identity)
    if proc is not None or not token:
        return proc
    try:
        candidate = psutil.Process(identity.pid)
        with candidate.oneshot():
            same = (
                candidate.status() != psutil.STATUS_ZOMBIE
                and started_as_recorded(identity, candidate)
                and candidate.uids().real == identity.uid
            )
    except psutil.Error:
        return None
    return candidate if same and has_owner_mark(candidate, token) else None


def has_owner_mark(proc: psutil.Process, token: str) -> bool:
    """Whether `proc` inherited our owner token; an empty token proves nothing and never matches."""
    return bool(token) and owner_token(proc) == token


def owner_token(proc: psutil.Process) -> str | None:
    """The owner token in `proc`'s environment (any watchdog's); None if none or unreadable."""
    try:
        token = proc.environ().get(OWNER_ENV)
        # environ() reads by pid: make sure it was not a recycled pid's environment.
        return token if token and proc.is_running() else None
    except psutil.Error:
        return None


def is_ours(proc: psutil.Process, token: str, *, uid: int | None = None) -> bool:
    """Same real uid (default: ours) and our owner token: safe to signal."""
    wanted = os.getuid() if uid is None else uid
    try:
        same_user = proc.uids().real == wanted
    except psutil.Error:
        return False
    return same_user and has_owner_mark(proc, token)


def descendants(pid: int) -> list[psutil.Process]:
    """Snapshot of `pid`'s children, grandchildren and so on; empty if `pid` is gone.

    Read from the kernel's per-thread child lists (`/proc/PID/task/TID/children`): a walk of
    the tree itself, not a read of every process's stat file as psutil does (~1 ms on an idle
    machine, tens on a busy node, paid by a runner after each of its attempts). psutil where
    the kernel has no such lists (CONFIG_PROC_CHILDREN off)."""
    if pid <= 0:
        return []
    if _HAS_CHILD_LISTS:
        pids = _descendant_pids(pid)
        if pids is not None:
            found = []
            for child in pids:
                try:
                    found.append(psutil.Process(child))
                except psutil.Error:
                    continue  # gone since it was listed
            return found
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def child_pids(pid: int) -> list[int] | None:
    """`pid`'s children from the kernel's child lists; None where there are none to read
    (no such process, or a kernel without CONFIG_PROC_CHILDREN)."""
    if not _HAS_CHILD_LISTS:
        return None
    found: list[int] = []
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    for tid in threads:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as fh:
                found += map(int, fh.read().split())
        except OSError:
            continue
    return found


def _descendant_pids(root: int) -> list[int] | None:
    """Pids below `root`, parents before their children; None if `root` is gone."""
    found: list[int] = []
    queue = [root]
    while queue:
        pid = queue.pop(0)
        try:
            threads = os.listdir(f"/proc/{pid}/task")
        except OSError:
            if pid == root:
                return None
            continue  # ended while we walked
        for tid in threads:
            try:
                with open(f"/proc/{pid}/task/{tid}/children", "rb") as fh:
                    listed = fh.read().split()
            except OSError:
                continue
            for child in map(int, listed):
                if child not in found:
                    found.append(child)
                    queue.append(child)
    return found


_HAS_CHILD_LISTS = os.path.exists(f"/proc/{os.getpid()}/task/{os.getpid()}/children")


_STOPPED = frozenset({psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP})


def stopped_pids(pids: Iterable[int]) -> list[int]:
    """Those of `pids` frozen by a stop signal (SIGSTOP, SIGTSTP, ...) or a tracer, in order.

    Such a process runs no signal handler and answers no stack dump until it is continued, so
    waiting for one only burns the time before the restart. Gone or unreadable pids are left
    out; each pid costs a read or two of /proc/PID/stat.
    """
    found: list[int] = []
    for pid in pids:
        if pid <= 0:
            continue
        try:
            if psutil.Process(pid).status() in _STOPPED:
                found.append(pid)
        except psutil.Error:
            continue
    return found


def find_any_marked(tokens: Collection[str]) -> list[psutil.Process]:
    """Our uid's processes carrying any of `tokens`, in pid order: one scan of every process
    for many tokens (a runner sweeping after many short attempts at once)."""
    wanted = {token for token in tokens if token}
    if not wanted:
        return []
    me = psutil.Process()
    skip = {me.pid, *(parent.pid for parent in me.parents())}
    uid = os.getuid()
    found = []
    for proc in psutil.process_iter(["uids"]):
        uids = proc.info["uids"]
        if proc.pid in skip or uids is None or uids.real != uid:
            continue
        if owner_token(proc) in wanted:
            found.append(proc)
    return sorted(found, key=lambda proc: proc.pid)


def find_marked(
    token: str, *, patterns: Sequence[str] = (), uid: int | None = None
) -> list[psutil.Process]:
    """Processes of `uid` (default: ours) that carry `token`, in pid order.

    With `patterns`, a process must also have a joined cmdline matching one of them
    (`re.search`). We and our ancestors are never returned, even if they carry the token.
    """
    if not token:
        return []
    wanted = os.getuid() if uid is None else uid
    compiled = [re.compile(pattern) for pattern in patterns]
    me = psutil.Process()
    skip = {me.pid, *(parent.pid for parent in me.parents())}
    found: list[psutil.Process] = []
    for proc in psutil.process_iter(["uids", "cmdline"]):
        uids, cmdline = proc.info["uids"], proc.info["cmdline"]
        if proc.pid in skip or uids is None or uids.real != wanted:
            continue
        if compiled and not any(rx.search(" ".join(cmdline or ())) for rx in compiled):
            continue
        if has_owner_mark(proc, token):
            found.append(proc)
    return sorted(found, key=lambda proc: proc.pid)


# --- how a process ended, in words ------------------------------------------------------------

_SIGNAL_MEANINGS = {
    "SIGABRT": "aborted",
    "SIGBUS": "bus error",
    "SIGFPE": "floating-point exception",
    "SIGHUP": "hangup",
    "SIGILL": "illegal instruction",
    "SIGINT": "interrupted",
    "SIGKILL": "killed",
    "SIGPIPE": "broken pipe",
    "SIGQUIT": "quit",
    "SIGSEGV": "segmentation fault",
    "SIGTERM": "terminated",
    "SIGXCPU": "CPU time limit exceeded",
}


def signal_name(signum: int) -> str:
    """`SIGKILL` for 9; `signal 42` for numbers this platform has no name for."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def decode_wait_status(returncode: int) -> str:
    """Say how a process ended, from a subprocess-style returncode (negative: killed by a signal).

    Exit codes 129..255 that look like a shell's 128+N also name the signal, since a wrapper
    shell or launcher usually reports its child's death that way.
    """
    if returncode < 0:
        return f"terminated by {signal_name(-returncode)}"
    text = f"exited with code {returncode}"
    signum = returncode - 128
    if returncode <= 255 and signum > 0:
        try:
            name = signal.Signals(signum).name
        except ValueError:
            return text
        meaning = _SIGNAL_MEANINGS.get(name)
        return f"{text} (128+{name}: {meaning})" if meaning else f"{text} (128+{name})"
    return text


def decode_raw_wait_status(status: int) -> str:
    """Say how a process ended, from a raw `os.waitpid` status (core dumps included)."""
    if os.WIFSIGNALED(status):
        core = " (core dumped)" if os.WCOREDUMP(status) else ""
        return f"terminated by {signal_name(os.WTERMSIG(status))}{core}"
    if os.WIFEXITED(status):
        return decode_wait_status(os.WEXITSTATUS(status))
    if os.WIFSTOPPED(status):
        return f"stopped by {signal_name(os.WSTOPSIG(status))}"
    if os.WIFCONTINUED(status):
        return "continued"
    return f"unknown wait status {status:#x}"
