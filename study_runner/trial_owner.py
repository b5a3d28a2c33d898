"""Which process runs an Optuna trial, and whether a RUNNING trial's process is gone.

Journal storage has no heartbeat, so a trial whose process was SIGKILLed stays RUNNING for
ever. Each trial records its owner (host, and pid with start time: a pid alone may have been
recycled) as a user attr when it starts; a later process fails a RUNNING trial only when it
can prove the owner dead. Only a process on the same host can be checked; for others, and for
a trial with no owner record, the one judge is an age given by the caller (`stale_after`).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import socket
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import psutil

from trainguard.errors import TrainguardError
from trainguard.procs import ProcessIdentity, identify, started_as_recorded

OWNER_ATTR = "trainguard.owner"
CMDLINE_ARGS = 8
CMDLINE_ARG_CHARS = 200


@dataclass(frozen=True)
class Owner:
    host: str
    process: ProcessIdentity

    def to_json(self) -> dict[str, Any]:
        return {"host": self.host, **self.process.to_json()}

    @classmethod
    def from_json(cls, data: object) -> Owner:
        """ValueError on any other shape (a user attr is anyone's to write)."""
        host = data.get("host") if isinstance(data, dict) else None
        if not isinstance(host, str) or not host:
            raise ValueError(f"trial owner must have a host, got {data!r}")
        return cls(host, ProcessIdentity.from_json(data))


@dataclass(frozen=True)
class Verdict:
    owner: Literal["alive", "dead", "unknown"]
    why: str


def this_host() -> str:
    return socket.gethostname()


def this_process() -> Owner:
    # By pid: a forked worker is an owner of its own.
    return _owner_of(os.getpid())


@functools.cache
def _owner_of(pid: int) -> Owner:
    identity = identify(pid)
    if identity is None:
        raise TrainguardError(f"cannot read this process's own identity (pid {pid})")
    # Recorded in every trial, for the operator's eyes only (liveness is pid and start time):
    # a `python -c` script must not weigh on each of them.
    cmdline = tuple(arg[:CMDLINE_ARG_CHARS] for arg in identity.cmdline[:CMDLINE_ARGS])
    return Owner(this_host(), dataclasses.replace(identity, cmdline=cmdline))


def judge(
    record: object,
    started: datetime | None,
    *,
    now: datetime,
    stale_after: float | None,
    host: str,
) -> Verdict:
    """Whether the RUNNING trial with owner `record`, started at `started`, is left by a dead
    process. `started` and `now` are Optuna's naive local times (all a trial has: ages across
    processes and hosts cannot be monotonic). A live owner on this host is never dead, however
    old its trial: failing it would make that process's own result unrecordable."""
    try:
        owner: Owner | None = Owner.from_json(record)
    except ValueError:
        owner = None
    if owner is not None and owner.host == host:
        pid = owner.process.pid
        if _alive(owner.process):
            return Verdict("alive", f"its process {pid} still runs")
        return Verdict("dead", f"its process {pid} on {host} is gone")
    age = None if started is None else (now - started).total_seconds()
    if stale_after is not None and age is not None and age > stale_after:
        return Verdict("dead", f"started {age:.0f} s ago, over stale_after={stale_after:g} s")
    whose = "it has no recorded owner"
    if owner is not None:
        whose = f"its process {owner.process.pid} runs on {owner.host}, not here"
    return Verdict("unknown", f"{whose}: cannot tell if it still runs (stale_after= fails by age)")


def _alive(identity: ProcessIdentity) -> bool:
    """pid and start time only: a live trainer may rewrite its cmdline (setproctitle)."""
    try:
        proc = psutil.Process(identity.pid)
        return proc.status() != psutil.STATUS_ZOMBIE and started_as_recorded(identity, proc)
    except psutil.NoSuchProcess:  # ZombieProcess too
        return False
    except psutil.AccessDenied:
        return True  # it exists and is not ours to read: never fail a trial on a guess
