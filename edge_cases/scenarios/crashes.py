"""The daemon dies: restart and resume when that can help, FATAL when it cannot."""

from __future__ import annotations

import signal
import sys

from edge_cases.sandbox import Sandbox
from edge_cases.scenario import Scenario, expect
from edge_cases.state_file import resumed_step

STATUS_FATAL = 2  # `daemon-watchdog status` in FATAL (STOPPED is 4)


def daemon_sigkill(sb: Sandbox) -> str:
    total = 80
    sb.create(total_steps=total)
    reference = sb.root / "reference"
    sb.create_at(reference, total_steps=total, step_seconds=0)
    sb.start_watchdog()
    sb.wait_running(past_step=25)
    sb.signal_daemon(signal.SIGKILL)
    status = sb.wait_running(restarts=1)
    crash = status.restarts[0]
    expect(crash.exit_code == -signal.SIGKILL, f"exit_code {crash.exit_code}")
    resumed = resumed_step(crash)
    # The same job uninterrupted, for the bit-for-bit comparison below.
    plain = sb.run([sys.executable, str(reference / "train.py"), "--base-dir", str(reference)])
    expect(plain.returncode == 0, f"the uninterrupted reference run failed: {plain.stdout[-300:]}")
    finished = sb.wait_state("STOPPED")
    expect(finished.restart_count == 1, f"{finished.restart_count} restarts")
    expect(len(sb.history()) == 1, f"{len(sb.history())} crash history records for one crash")
    final = f"checkpoints/checkpoint-{total}/model.safetensors"
    expect(
        sb.path(final).read_bytes() == (reference / final).read_bytes(),
        "the resumed run's final weights differ from an uninterrupted run's",
    )
    return (
        f"seen as {crash.category} (exit -9), resumed from checkpoint-{resumed}, "
        "finished; final weights bit-identical to an uninterrupted run"
    )


def daemon_segfault(sb: Sandbox) -> str:
    sb.create()
    sb.daemon_args("--fault", "segfault@25")
    sb.start_watchdog()
    status = sb.wait_running(restarts=1)
    crash = status.restarts[0]
    expect(crash.category == "segfault", f"classified {crash.category!r}")
    expect(crash.exit_code == -signal.SIGSEGV, f"exit_code {crash.exit_code}")
    categories = [r.get("category") for r in sb.history()]
    expect(categories == ["segfault"], f"crash history categories: {categories}")
    sb.wait_running(past_step=30, restarts=1)
    return f"real SIGSEGV classified segfault; resumed from {crash.resume_from}, past step 30"


def crash_loop_goes_fatal(sb: Sandbox) -> str:
    sb.create()
    sb.configure("watchdog", max_restarts=2)
    sb.daemon_args("--fault", "exit:3@2", "--fault-every-run")
    watchdog = sb.start_watchdog()
    status = sb.wait_state("FATAL")
    expect(status.restart_count == 2, f"{status.restart_count} restarts, not 2")
    reason = str(status.fatal_reason)
    expect("restarts within" in reason, f"fatal_reason: {reason!r}")
    sb.deadline.wait_for(lambda: not sb.daemons(), "no daemon left running", within=10)
    expect(watchdog.poll() is None, "the watchdog must stay up in FATAL to report")
    shown = sb.tool("daemon_watchdog", "status")
    expect(shown.returncode == STATUS_FATAL, f"`status` exit {shown.returncode} in FATAL")
    return f"FATAL after 2 restarts: {reason}"


def non_retryable_goes_fatal(sb: Sandbox) -> str:
    sb.create()
    script = sb.path("train.py")
    # A broken environment (a package uninstalled under the job): every restart fails the same.
    future = "from __future__ import annotations\n"
    text = script.read_text()
    expect(future in text, "train.py changed shape: no `from __future__` line to import after")
    broken = future + "import flash_attn_removed_by_an_upgrade  # edge-cases\n"
    script.write_text(text.replace(future, broken, 1))
    sb.start_watchdog()
    status = sb.wait_state("FATAL")
    category = status.last_crash.category if status.last_crash is not None else None
    expect(category == "import_error", f"classified {category!r}")
    expect("non-retryable" in str(status.fatal_reason), f"{status.fatal_reason!r}")
    sb.deadline.sleep(1.5)  # long past the backoff: a restart would have happened by now
    again = sb.status_now()
    expect(again.restart_count == 0, f"restarted {again.restart_count} times")
    expect(again.state == "FATAL", f"state {again.state} after FATAL")
    expect(not sb.daemons(), "a daemon runs after a non-retryable crash")
    expect(len(sb.history()) == 1, f"{len(sb.history())} crash history records")
    return "ModuleNotFoundError classified import_error: FATAL at once, no restart"


def training_finished_not_restarted(sb: Sandbox) -> str:
    total = 30
    sb.create(total_steps=total, step_seconds=0.02)
    watchdog = sb.start_watchdog("--exit-when-done")
    sb.deadline.wait_for(lambda: watchdog.poll() is not None, "the watchdog exiting when done")
    expect(watchdog.returncode == 0, f"`run --exit-when-done` exited {watchdog.returncode}")
    status = sb.status_now()
    expect(status.state == "STOPPED", f"state {status.state}")
    expect(status.restart_count == 0, f"{status.restart_count} restarts")
    expect(not sb.history(), "a finished run left a crash record")
    expect(
        sb.path(f"checkpoints/checkpoint-{total}/model.safetensors").is_file(),
        "no final checkpoint",
    )
    return f"exit 0 at step {total}: STOPPED, no restart, no crash record"


SCENARIOS = (
    Scenario(
        name="daemon_sigkill",
        summary="a SIGKILLed daemon is restarted and the run ends as if nothing happened",
        fault="SIGKILL to the example daemon at step 25 of 80",
        expected="restart (exit_code -9) from the newest valid checkpoint; the run finishes "
        "(STOPPED, 1 restart, 1 history record) with weights bit-identical to an uninterrupted run",
        deadline=60,
        run=daemon_sigkill,
    ),
    Scenario(
        name="daemon_segfault",
        summary="a real SIGSEGV in the worker is classified segfault and recovered",
        fault="--fault segfault@25 (a real NULL dereference)",
        expected="restart with category segfault and exit_code -11; one history record; "
        "training passes step 30",
        deadline=45,
        run=daemon_segfault,
    ),
    Scenario(
        name="crash_loop_goes_fatal",
        summary="a daemon that always crashes ends in FATAL after max_restarts, not a loop",
        fault="--fault exit:3@2 on every run, max_restarts = 2",
        expected="FATAL with 2 restarts and the reason; no daemon left; the watchdog stays up; "
        "`status` exits 2",
        deadline=45,
        run=crash_loop_goes_fatal,
        sabotage={
            "TRAINGUARD_WATCHDOG__MAX_RESTARTS": "1000",
            "TRAINGUARD_WATCHDOG__MAX_RESTARTS_WITHOUT_PROGRESS": "1000",
        },
        sabotage_deadline=12,
    ),
    Scenario(
        name="non_retryable_goes_fatal",
        summary="an import error is not retried: FATAL at once",
        fault="train.py imports a module that is not installed",
        expected="FATAL with category import_error and 'non-retryable', 0 restarts, no daemon",
        deadline=45,
        run=non_retryable_goes_fatal,
    ),
    Scenario(
        name="training_finished_not_restarted",
        summary="a daemon that exits 0 has finished: STOPPED, never restarted",
        fault="none: 30 steps run to completion under `run --exit-when-done`",
        expected="the watchdog exits 0; state STOPPED, 0 restarts, no crash record, final "
        "checkpoint present",
        deadline=45,
        run=training_finished_not_restarted,
    ),
)
