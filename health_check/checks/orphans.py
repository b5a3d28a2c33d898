"""Workers of ours that outlived their daemon: they hold GPU memory and write into the run.

"Ours" is proven, never guessed: our uid and the owner token the watchdog put into the daemon's
environment (every descendant inherits it). A process that merely looks like `train.py` is not
touched.
"""

from __future__ import annotations

import signal

import psutil

from health_check.context import Context
from health_check.result import CheckResult, Fix, Metric, Status
from health_check.supervision import read_supervision
from trainguard.process_tree import kill_tree
from trainguard.procs import descendants, find_marked, identify, locate


def probe(ctx: Context) -> CheckResult:
    ws = ctx.ws
    sup = read_supervision(ws)
    token = sup.token
    if token is None:
        return CheckResult("orphans", Status.OK, "none (no live run recorded by a watchdog)")
    marked = find_marked(token)
    # Whatever lives in a live watchdog's tree is its to handle: the daemon, its workers, and
    # orphans re-parented to it (a subreaper), which it stops within milliseconds. Only marked
    # processes outside that tree, or any when no watchdog runs, are orphans.
    spared = (
        {sup.daemon.pid, *(p.pid for p in descendants(sup.daemon.pid))} if sup.daemon else set()
    )
    if sup.watchdog is not None:
        spared |= {sup.watchdog.pid, *(p.pid for p in descendants(sup.watchdog.pid))}
    marked = [p for p in marked if p.pid not in spared]
    metrics = [Metric("orphans", len(marked))]
    if not marked:
        return CheckResult("orphans", Status.OK, "none", metrics=metrics)
    names = [f"pid {p.pid} ({_describe(p)})" for p in marked]
    where = "outside the live daemon's tree" if sup.daemon else "without a live daemon"
    identities = [i for p in marked if (i := identify(p.pid)) is not None]
    timeout = ws.config.daemon.stop_timeout

    def stop() -> str:
        # Re-prove each one: a pid may have been reused since the check ran.
        still = [p for i in identities if (p := locate(i)) is not None]
        if not still:
            return "orphans already gone"
        report = kill_tree(still, sig=signal.SIGTERM, timeout=min(timeout, 10.0))
        exited, killed = list(report.exited), list(report.killed)
        return f"stopped {len(still)} orphan(s): exited {exited}, killed {killed}"

    return CheckResult(
        "orphans",
        Status.CRITICAL,
        f"{len(marked)} worker(s) of ours {where}: {', '.join(names)}",
        names,
        Fix(f"stop orphans {', '.join(str(p.pid) for p in marked)}", stop, key="orphans"),
        metrics,
    )


def _describe(proc: psutil.Process) -> str:
    try:
        return " ".join(proc.cmdline())[:80] or proc.name()
    except psutil.Error:
        return "?"
