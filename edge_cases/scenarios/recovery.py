"""Recovery by crash type (`[watchdog.recovery]`): the watchdog changes what made the run crash
before it restarts it, and says what it changed; FATAL when the change it may make cannot help.

The GPU-exclusion scenario simulates the one thing that cannot be made to fail for real, the
GPU: its watchdog (`edge_cases.children.gpu_watchdog`) is the real supervisor whose GPU survey
says GPU1 fell off the bus, and its daemon prints what the driver and CUDA print then.
"""

from __future__ import annotations

import json
import re
import sys

import psutil

from edge_cases.children import LOST_GPU_FINDING
from edge_cases.sandbox import Sandbox
from edge_cases.scenario import Scenario, expect
from edge_cases.state_file import resumed_step
from edge_cases.tmpfs import fill
from trainguard.watchdog_status import KnobChange, WatchdogStatus

FINISHED = "daemon finished (exit 0)"
# 60 steps of 30 ms, a checkpoint every 10: a crash at step 30 or 40, a resume and the end of
# the run all within a few seconds.
TOTAL_STEPS = 60
SHORT_JOB = {"total_steps": TOTAL_STEPS, "save_steps": 10, "step_seconds": 0.03}
BATCH = 64
KEEP_LAST = 2
PRUNED = re.compile(r": pruned (\d+) checkpoint\(s\) beyond keep_last")


def _ended(sb: Sandbox, what: str) -> WatchdogStatus:
    """The run's end: STOPPED or FATAL, whichever comes (waiting out the deadline for the one
    expected would hide the other's reason)."""
    return sb.wait_status(lambda s: s.state in ("STOPPED", "FATAL"), what)


def _finished(sb: Sandbox, what: str) -> WatchdogStatus:
    status = _ended(sb, what)
    expect(
        status.state == "STOPPED" and status.state_reason == FINISHED,
        f"the run ended {status.state} ({status.fatal_reason or status.state_reason}), "
        "not finished",
    )
    return status


def oom_halves_batch_size(sb: Sandbox) -> str:
    total = TOTAL_STEPS
    sb.create(**SHORT_JOB, batch_size=BATCH)
    sb.daemon_args("--fault", "cuda_oom:32@30")
    sb.configure("watchdog.recovery", cuda_oom={"halve": "config:batch_size", "floor": 1})
    sb.start_watchdog()
    done = _finished(sb, "the run finished after the OOM")
    expect(len(done.restarts) == 1, f"{len(done.restarts)} restarts, not 1")
    crash = done.restarts[0]
    expect(crash.category == "cuda_oom", f"classified {crash.category!r}")
    resumed = resumed_step(crash)
    expect(resumed == 20, f"resumed from checkpoint-{resumed}, not checkpoint-20, the newest")
    expect(
        any(line.endswith("config:batch_size 64 -> 32") for line in crash.recovery),
        f"the restart's recovery does not say 64 -> 32: {list(crash.recovery)}",
    )
    now = sb.job().get("batch_size")
    expect(now == 32, f"config.json batch_size {now!r} after the OOM, not 32")
    kept = json.loads(sb.path("config.json.before-recovery").read_text()).get("batch_size")
    expect(kept == BATCH, f"config.json.before-recovery holds batch_size {kept!r}, not {BATCH}")
    knobs = dict(done.recovery.knobs)
    expect(
        knobs == {"config:batch_size": KnobChange(BATCH, 32)},
        f"status recovery.knobs {knobs}",
    )
    daemon_log = sb.path("logs/daemon.log").read_text(errors="replace")
    expect(
        f"at step {resumed + 1} (batch_size 32)" in daemon_log,
        f"the daemon log does not show the trainer resuming at step {resumed + 1} with batch 32",
    )
    expect(
        sb.path(f"checkpoints/checkpoint-{total}/model.safetensors").is_file(),
        f"no final checkpoint-{total}",
    )

    reset = sb.tool("daemon_watchdog", "restart", "--reset-recovery")
    said = (reset.stdout + reset.stderr).strip()[-300:]
    expect(reset.returncode == 0, f"`restart --reset-recovery` exit {reset.returncode}: {said}")
    now = sb.job().get("batch_size")
    expect(now == BATCH, f"config.json batch_size {now!r} after the reset, not {BATCH}")
    again = sb.wait_status(
        lambda s: s.restart_requests >= 1 and s.state in ("STOPPED", "FATAL"),
        "the run ended again after `restart --reset-recovery`",
    )
    expect(again.state == "STOPPED", f"after the reset: {again.state} ({again.fatal_reason})")
    left = dict(again.recovery.knobs)
    expect(not left, f"status recovery.knobs after the reset: {left}")
    return (
        f"cuda_oom at step 30: batch_size 64 -> 32 in config.json (previous kept), resumed from "
        f"checkpoint-{resumed}, finished; `restart --reset-recovery` put 64 back"
    )


def oom_at_floor_goes_fatal(sb: Sandbox) -> str:
    sb.create(**SHORT_JOB, batch_size=BATCH)
    sb.daemon_args("--fault", "cuda_oom:16@30")  # 32 does not fit either
    sb.configure("watchdog.recovery", cuda_oom={"halve": "config:batch_size", "floor": 32})
    watchdog = sb.start_watchdog()
    status = _ended(sb, "FATAL once batch_size is at its floor")
    reason = str(status.fatal_reason)
    expect(status.state == "FATAL", f"the run ended {status.state} ({status.state_reason})")
    expect("already at its floor (32)" in reason, f"fatal_reason: {reason!r}")
    expect(status.restart_count == 1, f"{status.restart_count} restarts, not 1 (64 -> 32)")
    now = sb.job().get("batch_size")
    expect(now == 32, f"config.json batch_size {now!r}, not 32 (halved once, never below 32)")
    sb.deadline.wait_for(lambda: not sb.daemons(), "no daemon left running", within=10)
    expect(watchdog.poll() is None, "the watchdog must stay up in FATAL to report")
    return f"64 -> 32, then OOM again at the floor: FATAL ({reason.partition('; last')[0]})"


def nan_rewinds_past_newest_checkpoint(sb: Sandbox) -> str:
    total = TOTAL_STEPS
    sb.create(**SHORT_JOB)
    sb.daemon_args("--fault", "nan@40")
    sb.configure("watchdog.recovery", nan_loss={"rewind": 1})
    sb.start_watchdog()
    done = _finished(sb, "the run finished after the NaN")
    expect(len(done.restarts) == 1, f"{len(done.restarts)} restarts, not 1")
    crash = done.restarts[0]
    expect(crash.category == "nan_loss", f"classified {crash.category!r}")
    resumed = resumed_step(crash)
    expect(resumed == 20, f"resumed from checkpoint-{resumed}, not checkpoint-20")
    expect(
        any("rewound past checkpoint-30" in line for line in crash.recovery),
        f"the restart's recovery does not name checkpoint-30: {list(crash.recovery)}",
    )
    quarantine = sb.path("checkpoints/quarantine")
    moved = sorted(p.name for p in quarantine.iterdir()) if quarantine.is_dir() else []
    expect(
        any(name.startswith("checkpoint-30") for name in moved),
        f"checkpoint-30 is not in checkpoints/quarantine/: {moved}",
    )
    expect(
        sb.path(f"checkpoints/checkpoint-{total}/model.safetensors").is_file(),
        f"no final checkpoint-{total}",
    )
    return "NaN at step 40: checkpoint-30 quarantined, resumed from checkpoint-20, finished"


def disk_full_prunes(sb: Sandbox) -> str:
    sb.create(save_steps=5)
    sb.configure("checkpoints", keep_last=KEEP_LAST)
    # No low-disk pruning (the tmpfs is always below any threshold): only the recovery action
    # can make room before the restart.
    sb.configure("health", disk_min_free_gb=0)
    sb.configure("watchdog.recovery", disk_full={"prune": True})
    checkpoints = sb.path("checkpoints")
    sb.mount_tmpfs(checkpoints, "512k")
    sb.start_watchdog()
    sb.deadline.wait_for(
        lambda: len(sb.checkpoint_steps()) >= KEEP_LAST + 3,
        f"{KEEP_LAST + 3} checkpoints on the small filesystem",
    )
    ballast = checkpoints / "ballast.bin"
    fill(ballast)
    status = sb.wait_status(
        lambda s: any(r.category == "disk_full" for r in s.restarts),
        "a crash classified disk_full, and its restart",
    )
    crash = next(r for r in status.restarts if r.category == "disk_full")
    resumed = resumed_step(crash)
    said = next(filter(None, map(PRUNED.search, crash.recovery)), None)
    expect(said is not None, f"the restart's recovery does not say it pruned: {crash.recovery}")
    assert said is not None
    pruned = int(said[1])
    expect(pruned >= 1, f"the recovery pruned nothing: {said.string!r}")
    older = [step for step in sb.checkpoint_steps() if step <= resumed]
    expect(
        len(older) <= KEEP_LAST,
        f"checkpoints up to the resumed one after the restart: {older} (keep_last={KEEP_LAST})",
    )
    # Only the pruning before the restart can have made room: the ballast stays.
    sb.deadline.wait_for(
        lambda: any(step > resumed for step in sb.checkpoint_steps()),
        f"a checkpoint beyond checkpoint-{resumed} saved on the still-full filesystem",
        context=sb.describe,
    )
    expect(ballast.exists(), "the ballast file vanished")
    return (
        f"ENOSPC classified disk_full: pruned {pruned} checkpoint(s) beyond keep_last="
        f"{KEEP_LAST} before the restart, resumed from checkpoint-{resumed} and saved past it"
    )


def gpu_failure_left_out(sb: Sandbox) -> str:
    sb.create()
    marker = sb.path("status/gpu-failed-once")
    sb.configure("daemon", command=[sys.executable, "-m", "edge_cases.children.gpu_falls_off",
                                    str(marker)])  # fmt: skip
    sb.configure("watchdog", startup_grace=60)  # the restarted daemon idles, silent
    sb.configure("watchdog.recovery", gpu_hardware={"exclude_gpu": True, "min_gpus": 1})
    hidden = ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER")  # this machine's own: not the test's
    env = {k: v for k, v in sb.env().items() if k not in hidden}
    argv = [sys.executable, "-m", "edge_cases.children.gpu_watchdog", str(sb.config)]
    watchdog = sb.spawn(argv, label="watchdog", env=env)
    status = sb.wait_status(
        lambda s: s.restart_count >= 1 and s.daemon_pid is not None,
        "the daemon restarted after GPU1 fell off the bus",
    )
    crash = status.restarts[0]
    expect(crash.category == "gpu_hardware", f"classified {crash.category!r}")
    wanted = f"gpu_hardware: GPU1 ({LOST_GPU_FINDING}): env:CUDA_VISIBLE_DEVICES unset -> 0"
    expect(wanted in crash.recovery, f"the restart's recovery: {list(crash.recovery)}")
    assert status.daemon_pid is not None
    try:
        seen = psutil.Process(status.daemon_pid).environ()
    except psutil.Error as exc:
        raise AssertionError(f"cannot read the new daemon's environment: {exc}") from None
    got = {name: seen.get(name) for name in hidden}
    expect(
        got == {"CUDA_VISIBLE_DEVICES": "0", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"},
        f"the new daemon's environment: {got}",
    )
    stop = sb.tool("daemon_watchdog", "stop")
    expect(stop.returncode == 0, f"`stop` exit {stop.returncode}: {stop.stderr.strip()[-300:]}")
    sb.deadline.wait_for(lambda: watchdog.poll() is not None, "the watchdog exiting", within=10)
    return "GPU1 fell off the bus (simulated): the daemon restarted with CUDA_VISIBLE_DEVICES=0"


SCENARIOS = (
    Scenario(
        name="oom_halves_batch_size",
        summary="a CUDA OOM halves config.json's batch_size, the run resumes and finishes; "
        "`restart --reset-recovery` puts it back",
        fault="--fault cuda_oom:32@30 (an OOM at step 30 on every run while batch_size > 32), "
        'batch_size 64, cuda_oom = { halve = "config:batch_size", floor = 1 }',
        expected="1 restart (cuda_oom) from the newest checkpoint with batch_size 32 in "
        "config.json (config.json.before-recovery keeps 64), its recovery says "
        "'config:batch_size 64 -> 32'; the run finishes; `restart --reset-recovery` puts 64 "
        "back and status recovery.knobs is empty",
        deadline=45,
        run=oom_halves_batch_size,
    ),
    Scenario(
        name="oom_at_floor_goes_fatal",
        summary="an OOM with batch_size already at its floor is FATAL, not a crash loop",
        fault="--fault cuda_oom:16@30, batch_size 64, cuda_oom = { halve = "
        '"config:batch_size", floor = 32 }',
        expected="64 -> 32 and 1 restart, then the next OOM is FATAL 'already at its floor "
        "(32)'; batch_size stays 32; no daemon left; the watchdog stays up",
        deadline=45,
        run=oom_at_floor_goes_fatal,
    ),
    Scenario(
        name="nan_rewinds_past_newest_checkpoint",
        summary="a NaN loss resumes from the checkpoint before the newest, which is quarantined",
        fault="--fault nan@40 (save_steps 10), nan_loss = { rewind = 1 }",
        expected="1 restart (nan_loss) from checkpoint-20, its recovery says 'rewound past "
        "checkpoint-30'; checkpoint-30 is in checkpoints/quarantine/; the run finishes",
        deadline=45,
        run=nan_rewinds_past_newest_checkpoint,
        sabotage={"TRAINGUARD_WATCHDOG__RECOVERY__NAN_LOSS__REWIND": "0"},
        sabotage_deadline=20,
    ),
    Scenario(
        name="disk_full_prunes",
        summary="a crash on a full disk prunes beyond keep_last before the restart, whatever "
        "the free-space threshold",
        fault="a 512 KiB tmpfs on checkpoints/ filled by a ballast file while training; "
        "disk_min_free_gb = 0 (no low-disk pruning), disk_full = { prune = true }",
        expected="the failed save is classified disk_full; its restart's recovery says 'pruned "
        "N checkpoint(s) beyond keep_last' (N >= 1), at most keep_last checkpoints remain up to "
        "the resumed one, and the run saves past it (ballast still there)",
        deadline=60,
        run=disk_full_prunes,
        requires="root (mount -t tmpfs); skipped otherwise",
    ),
    Scenario(
        name="gpu_failure_left_out",
        summary="a GPU that fell off the bus is left out of the restarted daemon's GPUs",
        fault="SIMULATED: the watchdog's GPU survey says GPU1 (of 2) has Xid 79; the daemon "
        "prints the driver's Xid line and a CUDA error, exits 1; gpu_hardware = { min_gpus = 1 }",
        expected="1 restart (gpu_hardware), its recovery says CUDA_VISIBLE_DEVICES unset -> 0; "
        "the new daemon runs with CUDA_VISIBLE_DEVICES=0 and CUDA_DEVICE_ORDER=PCI_BUS_ID",
        deadline=30,
        run=gpu_failure_left_out,
        sabotage={"TRAINGUARD_WATCHDOG__RECOVERY__GPU_HARDWARE__EXCLUDE_GPU": "false"},
        sabotage_deadline=20,
    ),
)
