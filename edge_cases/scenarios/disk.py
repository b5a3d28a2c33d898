"""Disk space: a filesystem that really fills up, and a free-space threshold that is crossed."""

from __future__ import annotations

import signal

from edge_cases.sandbox import Sandbox
from edge_cases.scenario import Scenario, expect
from edge_cases.state_file import resumed_step
from edge_cases.tmpfs import fill

NAGIOS_CRITICAL = 2
KEEP_LAST = 2


def disk_full(sb: Sandbox) -> str:
    sb.create(save_steps=5)
    sb.configure("watchdog", max_restarts=20)
    sb.configure("checkpoints", keep_last=KEEP_LAST)
    checkpoints = sb.path("checkpoints")
    sb.mount_tmpfs(checkpoints, "512k")
    sb.start_watchdog()
    sb.deadline.wait_for(
        lambda: len(sb.checkpoint_steps()) >= 6, "6 checkpoints on the small filesystem"
    )
    ballast = checkpoints / "ballast.bin"
    fill(ballast)
    status = sb.wait_status(
        lambda s: any(r.category == "disk_full" for r in s.restarts),
        "a crash classified disk_full",
    )
    code, report = sb.tool_json("health_check", "--only", "disk_space")
    summary = str(report.get("checks", [{}])[0].get("summary"))
    expect(code == NAGIOS_CRITICAL, f"health-check disk_space exit {code}: {summary}")
    first = next(r for r in status.restarts if r.category == "disk_full")
    resumed = resumed_step(first)
    # Only the pruning the watchdog did before restarting can make room: the ballast stays.
    sb.deadline.wait_for(
        lambda: any(step > resumed for step in sb.checkpoint_steps()),
        f"a checkpoint beyond checkpoint-{resumed} saved on the still-full filesystem",
        context=sb.describe,
    )
    expect(ballast.exists(), "the ballast file vanished")
    expect("low disk" in sb.watchdog_log(), "the watchdog log does not report the low disk")
    return (
        f"ENOSPC classified disk_full; pruned to keep_last={KEEP_LAST}, resumed from "
        f"checkpoint-{resumed} and saved past it; health-check CRITICAL"
    )


def low_disk_threshold(sb: Sandbox) -> str:
    sb.create()
    sb.configure("checkpoints", keep_last=KEEP_LAST)
    sb.configure("health", disk_min_free_gb=1_000_000)  # a petabyte: below it on any machine
    code, report = sb.tool_json("health_check", "--only", "disk_space")
    summary = str(report.get("checks", [{}])[0].get("summary"))
    expect(code == NAGIOS_CRITICAL, f"health-check disk_space exit {code}: {summary}")
    sb.start_watchdog()
    sb.deadline.wait_for(lambda: len(sb.checkpoint_steps()) >= 5, "5 checkpoints")
    sb.signal_daemon(signal.SIGKILL)
    status = sb.wait_running(restarts=1)
    resumed = resumed_step(status.restarts[-1])
    older = [step for step in sb.checkpoint_steps() if step <= resumed]
    expect(
        len(older) <= KEEP_LAST,
        f"checkpoints up to the resumed one after the restart: {older} (keep_last={KEEP_LAST})",
    )
    expect("low disk" in sb.watchdog_log(), "the watchdog log does not report the low disk")
    return f"health-check CRITICAL; pruned to {older} before resuming from checkpoint-{resumed}"


SCENARIOS = (
    Scenario(
        name="disk_full",
        summary="checkpoints on a real tmpfs that fills up: classified, pruned, resumed",
        fault="a 512 KiB tmpfs mounted on checkpoints/, filled by a ballast file while training",
        expected="the failed save is classified disk_full; before restarting the watchdog prunes "
        "to keep_last, resumes from the newest valid checkpoint and saves past it (ballast "
        "still there); health-check disk_space CRITICAL",
        deadline=60,
        run=disk_full,
        requires="root (mount -t tmpfs); skipped otherwise",
    ),
    Scenario(
        name="low_disk_threshold",
        summary="free space below health.disk_min_free_gb: CRITICAL, and pruning before restart",
        fault="disk_min_free_gb above the free space, then the daemon SIGKILLed",
        expected="health-check disk_space CRITICAL; the restart prunes old checkpoints to "
        "keep_last and logs the low disk",
        deadline=45,
        run=low_disk_threshold,
        sabotage={"TRAINGUARD_HEALTH__DISK_MIN_FREE_GB": "0"},
    ),
)
