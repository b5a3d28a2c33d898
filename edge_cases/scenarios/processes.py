"""Whose processes the watchdog may signal: its daemon's orphans yes, anybody else's never."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import psutil

from edge_cases.reaper import alive
from edge_cases.sandbox import Sandbox
from edge_cases.scenario import Scenario, expect
from trainguard.procs import OWNER_ENV

NAGIOS_WARNING = 1


def orphan_worker_cleanup(sb: Sandbox) -> str:
    sb.create()
    sb.start_watchdog()
    sb.wait_running(past_step=5)
    workers = sb.workers()
    expect(len(workers) == 1, f"expected one train.py worker, found {len(workers)}")
    old = workers[0]
    # The example daemon gives its worker no PR_SET_PDEATHSIG: killed, it leaves an orphan.
    sb.signal_daemon(signal.SIGKILL)
    sb.deadline.wait_for(
        lambda: not alive(old), f"orphaned worker pid {old.pid} stopped", within=15
    )
    sb.wait_running(restarts=1)
    now = sb.workers()
    expect(
        len(now) == 1 and now[0].pid != old.pid,
        f"after the restart: workers {[p.pid for p in now]}, old one {old.pid}",
    )
    code, report = sb.tool_json("health_check", "--only", "orphans")
    expect(code == 0, f"health-check orphans exit {code}: {report.get('checks')}")
    return f"orphaned worker pid {old.pid} stopped; one new worker; health-check orphans OK"


def _bystander_script(sb: Sandbox) -> Path:
    """A `train.py` of someone else's: it matches orphan_patterns but is not ours."""
    other = sb.root / "someone-elses-run"
    other.mkdir()
    script = other / "train.py"
    script.write_text("import signal\nwhile True:\n    signal.pause()\n")
    return script


def _fix_then_stop(sb: Sandbox, checks: str, *, code: int = 0) -> None:
    """What an operator's cron and hands do next: `health-check --fix`, then a stop."""
    fixed = sb.tool("health_check", "--only", checks, "--fix", "--quiet")
    expect(
        fixed.returncode == code,
        f"health-check --fix exit {fixed.returncode}, not {code}: {fixed.stdout.strip()}; "
        f"{sb.describe()}",
    )
    stop = sb.tool("daemon_watchdog", "stop")
    expect(stop.returncode == 0, f"daemon-watchdog stop exit {stop.returncode}: {stop.stderr}")


def unrelated_process_untouched(sb: Sandbox) -> str:
    sb.create()
    script = _bystander_script(sb)
    plain = sb.spawn([sys.executable, str(script)], label="bystander")
    # Another watchdog's worker: it carries an owner token, just not ours.
    foreign_env = {**sb.env(), OWNER_ENV: "another-watchdogs-token"}
    foreign = sb.spawn([sys.executable, str(script), "foreign"], label="foreign", env=foreign_env)
    sb.start_watchdog()
    sb.wait_running(past_step=5)
    sb.signal_daemon(signal.SIGKILL)
    sb.wait_running(restarts=1)
    code, report = sb.tool_json("health_check", "--only", "orphans")
    summary = str(report.get("checks", [{}])[0].get("summary"))
    expect(code == NAGIOS_WARNING, f"health-check orphans exit {code}, not 1: {summary}")
    for name, proc in (("plain train.py", plain), ("train.py with a foreign token", foreign)):
        expect(f"pid {proc.pid} (" in summary, f"the unrelated {name} is not reported: {summary}")
    # The suspects make it a WARNING still after the repair: they are reported, never stopped.
    _fix_then_stop(sb, "orphans,daemon", code=NAGIOS_WARNING)
    for name, proc in (("plain train.py", plain), ("train.py with a foreign token", foreign)):
        expect(proc.poll() is None, f"the unrelated {name} was killed (exit {proc.returncode})")
    return (
        "an unrelated train.py and another run's worker were reported by health-check "
        "orphans and survived crash, --fix and stop"
    )


def stale_pid_reuse(sb: Sandbox) -> str:
    sb.create()
    bystander = sb.spawn([sys.executable, "-m", "edge_cases.children.idle"], label="bystander")
    proc = psutil.Process(bystander.pid)
    cmdline = sb.deadline.wait_for(
        lambda: (c := proc.cmdline()) and "edge_cases.children.idle" in c and c, "bystander up"
    )
    # What an earlier watchdog recorded about its daemon, whose pid the kernel has since given
    # to the bystander: same pid and cmdline, an earlier start time.
    recorded = {
        "pid": bystander.pid,
        "create_time": proc.create_time() - 3600,
        "cmdline": cmdline,
        "uid": os.getuid(),
    }
    state = {
        "state": "RUNNING",
        "daemon": recorded,
        "daemon_pid": bystander.pid,
        "owner_token": "token-of-a-daemon-long-gone",
        "restart_count": 0,
        "restarts": [],
    }
    sb.path("status/watchdog.json").write_text(json.dumps(state))
    sb.path(".daemon.pid").write_text(f"{bystander.pid}\n")
    sb.start_watchdog()
    status = sb.wait_running(past_step=5)
    expect(status.daemon_pid != bystander.pid, "the watchdog adopted the reused pid")
    _fix_then_stop(sb, "daemon,orphans")
    expect(bystander.poll() is None, f"the process holding the reused pid {bystander.pid} died")
    return f"reused pid {bystander.pid} neither adopted nor signalled; a new daemon was started"


SCENARIOS = (
    Scenario(
        name="orphan_worker_cleanup",
        summary="the worker of a SIGKILLed daemon does not outlive it",
        fault="SIGKILL to the example daemon, whose train.py worker is left running",
        expected="the orphaned worker is stopped within 15 s; after the restart exactly one "
        "worker runs; health-check orphans OK",
        deadline=45,
        run=orphan_worker_cleanup,
    ),
    Scenario(
        name="unrelated_process_untouched",
        summary="look-alike processes of ours that the watchdog cannot prove its own survive",
        fault="an unrelated train.py and one with another run's owner token, daemon SIGKILLed",
        expected="health-check orphans reports both (WARNING); both survive the crash recovery, "
        "health-check --fix and daemon-watchdog stop",
        deadline=45,
        run=unrelated_process_untouched,
    ),
    Scenario(
        name="stale_pid_reuse",
        summary="a state and pid file naming a reused pid: neither adopted nor signalled",
        fault="state file + .daemon.pid name a live bystander (same cmdline, other start time)",
        expected="a new daemon starts; the bystander survives health-check --fix and `stop`",
        deadline=45,
        run=stale_pid_reuse,
    ),
)
