"""Was a SIGKILLed process killed for memory? Only evidence says so, never the signal alone.

The OOM-kill counters (one small file each) decide whether the kernel log is worth reading
at all, so the common kill -9 of an operator costs two file reads (~60 us). The kernel's line
naming the pid is the best evidence (it tells the memory the process held); a grown cgroup
counter is enough on its own.
"""

from __future__ import annotations

from dataclasses import dataclass

from crash_detector.kernel_log import find_oom_kill
from crash_detector.oom_counters import OomSnapshot


@dataclass(frozen=True)
class OomEvidence:
    found: str | None  # one line saying what proves the OOM kill; None: nothing does
    checked: str  # what was looked at, for the message when nothing was found


def look_for_oom_kill(before: OomSnapshot) -> OomEvidence:
    """Evidence that the process of `before` (taken when it started) was killed for memory."""
    cgroup = before.cgroup_growth()
    system = before.system_grew()
    checked = []
    line = None
    if cgroup is not None or system is not False:
        search = find_oom_kill({before.pid}, since_mono=before.taken_mono)
        line = search.line
        checked.append(
            f"no OOM kill of pid {before.pid} in {search.source}"
            if search.source
            else "kernel log not readable"
        )
    else:
        checked.append("no OOM kill on this machine since it started (/proc/vmstat oom_kill)")
    if line is not None:
        return OomEvidence(f"kernel log: {line}", "")
    if cgroup is not None:
        return OomEvidence(f"its memory cgroup counts an OOM kill: {cgroup}", "")
    if before.cgroup_file is not None:
        checked.append(f"cgroup oom_kill unchanged ({before.cgroup_file})")
    return OomEvidence(None, "; ".join(checked))
