"""The kernel's OOM-kill counters, read when a process starts and compared when it dies.

Two counters: the `oom_kill` of the memory cgroup the process runs in (cgroup v2
`memory.events`, v1 `memory.oom_control`; both count kills of its members, whatever the
memory limit that was hit), and the system-wide `oom_kill` of /proc/vmstat (every kernel OOM
kill, global or in any cgroup). A cgroup counter that grew is evidence of an OOM kill in that
cgroup; a system counter that did not grow proves there was none anywhere, so the kernel log
need not be read at all. Each read is one small file of procfs or cgroupfs: no blocking.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
CGROUP_ROOT = Path("/sys/fs/cgroup")
MAX_READ = 64 * 1024  # bytes: these files are a few hundred bytes


@dataclass(frozen=True)
class OomSnapshot:
    """OOM-kill counters at the start of process `pid` (None where unreadable)."""

    pid: int
    taken_mono: float  # time.monotonic() when read: kernel log lines older than this are history
    cgroup_file: Path | None
    cgroup_kills: int | None
    system_kills: int | None
    vmstat_file: Path = PROC / "vmstat"

    @classmethod
    def read_for(
        cls, pid: int, *, proc: Path = PROC, cgroup_root: Path = CGROUP_ROOT
    ) -> OomSnapshot:
        taken = time.monotonic()
        found = cgroup_counter_file(pid, proc=proc, cgroup_root=cgroup_root)
        return cls(
            pid=pid,
            taken_mono=taken,
            cgroup_file=found,
            cgroup_kills=None if found is None else read_oom_kill(found),
            system_kills=read_oom_kill(proc / "vmstat"),
            vmstat_file=proc / "vmstat",
        )

    def cgroup_growth(self) -> str | None:
        """`oom_kill 3 -> 4 in FILE` if the cgroup's counter grew since the snapshot."""
        if self.cgroup_file is None or self.cgroup_kills is None:
            return None
        now = read_oom_kill(self.cgroup_file)
        if now is None or now <= self.cgroup_kills:
            return None
        return f"oom_kill {self.cgroup_kills} -> {now} in {self.cgroup_file}"

    def system_grew(self) -> bool | None:
        """Did any OOM kill happen on this machine since the snapshot? None: cannot tell."""
        now = read_oom_kill(self.vmstat_file)
        if now is None or self.system_kills is None:
            return None
        return now > self.system_kills


def parse_oom_kill(text: str) -> int | None:
    """The `oom_kill N` line of memory.events, memory.oom_control or /proc/vmstat."""
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "oom_kill":
            try:
                return int(value.strip())
            except ValueError:
                return None
    return None


def read_oom_kill(path: Path) -> int | None:
    try:
        with open(path, "rb") as fh:
            return parse_oom_kill(fh.read(MAX_READ).decode("ascii", "replace"))
    except OSError:
        return None


def cgroup_counter_file(
    pid: int, *, proc: Path = PROC, cgroup_root: Path = CGROUP_ROOT
) -> Path | None:
    """The file holding the oom_kill counter of `pid`'s memory cgroup, if there is one.

    /proc/PID/cgroup names the cgroup: `0::/PATH` (v2, unified: under the cgroup root, or
    under its `unified/` in a hybrid setup) or `N:...memory...:/PATH` (v1's memory controller).
    A cgroup without the memory controller has no memory.events: no counter, not an error.
    """
    try:
        with open(proc / str(pid) / "cgroup", "rb") as fh:
            text = fh.read(MAX_READ).decode("utf-8", "replace")
    except OSError:
        return None
    candidates: list[Path] = []
    for line in text.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        relative = path.strip().lstrip("/")
        if ".." in Path(relative).parts:
            continue  # never leave the cgroup root, whatever the file says
        if hierarchy == "0" and controllers == "":
            candidates += [
                cgroup_root / relative / "memory.events",
                cgroup_root / "unified" / relative / "memory.events",
            ]
        elif "memory" in controllers.split(","):
            candidates.append(cgroup_root / "memory" / relative / "memory.oom_control")
    for candidate in candidates:
        if read_oom_kill(candidate) is not None:
            return candidate
    return None
