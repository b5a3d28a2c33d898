"""Workers that outlived their daemon: they hold GPU memory and write into the run.

"Ours" is proven, never guessed: our uid and the owner token the watchdog put into the daemon's
environment (every descendant inherits it). Those are CRITICAL, and `--fix` stops them. A
process that merely matches `watchdog.orphan_patterns` (a `train.py` of someone else's, another
run's worker, one started by hand) is reported with its user and the GPU memory it holds, as a
WARNING, and never touched.
"""

from __future__ import annotations

import signal
from collections.abc import Sequence

import psutil

from health_check.checks.gpu_memory import GpuMemory, read_gpu_memory
from health_check.context import Context
from health_check.result import CheckResult, Fix, Metric, Status
from health_check.supervision import Supervision, read_supervision
from trainguard.orphan_scan import Suspect, scan_orphans
from trainguard.process_tree import kill_tree
from trainguard.procs import descendants, identify, locate


def probe(ctx: Context) -> CheckResult:
    ws = ctx.ws
    sup = read_supervision(ws)
    found = scan_orphans(sup.token, ws.config.watchdog.orphan_patterns, spared=_live_trees(sup))
    marked, suspects = list(found.marked), list(found.suspects)
    metrics = [Metric("orphans", len(marked)), Metric("orphan_suspects", len(suspects))]
    # NVML only when there is someone to ask about: starting it can take a second.
    memory = read_gpu_memory(ctx.nvml) if suspects else GpuMemory(present=False, complete=False)
    suspect_lines = [_suspect_line(s, memory, sup.token) for s in suspects]
    suspected = ", ".join(_suspect_brief(s, memory) for s in suspects)
    if not marked:
        if not suspects:
            none = "none" if sup.token else "none (no live run recorded by a watchdog)"
            return CheckResult("orphans", Status.OK, none, metrics=metrics)
        return CheckResult(
            "orphans",
            Status.WARNING,
            f"{_processes(suspects)} matching orphan_patterns, not ours (left alone): {suspected}",
            suspect_lines,
            None,
            metrics,
        )
    names = [f"pid {p.pid} ({_describe(p)})" for p in marked]
    where = "outside the live daemon's tree" if sup.daemon else "without a live daemon"
    identities = [i for p in marked if (i := identify(p.pid)) is not None]
    timeout = ws.config.daemon.stop_timeout
    left = ", ".join(str(s.pid) for s in suspects)
    spare_note = f"; not ours, left alone: {left}" if suspects else ""

    def stop() -> str:
        # Re-prove each one: a pid may have been reused since the check ran.
        still = [p for i in identities if (p := locate(i)) is not None]
        if not still:
            return "orphans already gone" + spare_note
        report = kill_tree(still, sig=signal.SIGTERM, timeout=min(timeout, 10.0))
        exited, killed = list(report.exited), list(report.killed)
        return f"stopped {len(still)} orphan(s): exited {exited}, killed {killed}{spare_note}"

    action = f"stop orphans {', '.join(str(p.pid) for p in marked)}"
    action += f" (not ours, left alone: {left})" if suspects else ""
    also = f"; also {_processes(suspects)} not ours (left alone): {suspected}" if suspects else ""
    return CheckResult(
        "orphans",
        Status.CRITICAL,
        f"{len(marked)} worker(s) of ours {where}: {', '.join(names)}{also}",
        names + suspect_lines,
        Fix(action, stop, key="orphans"),
        metrics,
    )


def _live_trees(sup: Supervision) -> set[int]:
    """Whatever lives in a live watchdog's tree is its to handle: the daemon, its workers, and
    orphans re-parented to it (a subreaper), which it stops within milliseconds."""
    spared: set[int] = set()
    if sup.daemon is not None:
        spared |= {sup.daemon.pid, *(p.pid for p in descendants(sup.daemon.pid))}
    if sup.watchdog is not None:
        spared |= {sup.watchdog.pid, *(p.pid for p in descendants(sup.watchdog.pid))}
    return spared


def _suspect_brief(suspect: Suspect, memory: GpuMemory) -> str:
    facts = [suspect.user, memory.describe(suspect.pid)]
    return f"pid {suspect.pid} ({', '.join(fact for fact in facts if fact)})"


def _suspect_line(suspect: Suspect, memory: GpuMemory, token: str | None) -> str:
    whose = ""
    if suspect.token:
        whose = " (our run's token, another user)" if suspect.token == token else " (another run's)"
    brief = _brief(suspect.cmdline, 120)
    return f"{_suspect_brief(suspect, memory)}: {brief} - not ours{whose}: left alone"


def _processes(items: Sequence[object]) -> str:
    return f"{len(items)} process{'es' * (len(items) != 1)}"


def _brief(cmdline: str, limit: int) -> str:
    """`cmdline` in at most about `limit` characters. Each long argument keeps its start and its
    file name (`/tmp/pytest-…/train.py`): the script's name is what tells a reader whose process
    it is, and deep paths (a CI checkout, a scratch folder) would otherwise push it out."""
    words = [_elide_path(word) for word in cmdline.split(" ")]
    text = " ".join(words)
    if len(text) <= limit:
        return text
    return f"{text[: limit - 1]}…"


def _elide_path(word: str, keep: int = 40) -> str:
    if len(word) <= keep or "/" not in word:
        return word
    name = word.rsplit("/", 1)[1]
    head = max(keep - len(name) - 2, 8)
    return f"{word[:head]}…/{name}"


def _describe(proc: psutil.Process) -> str:
    try:
        return _brief(" ".join(proc.cmdline()), 80) or proc.name()
    except psutil.Error:
        return "?"
