"""A daemon alive but going nowhere, or one that will not stop when asked."""

from __future__ import annotations

import json
import re
import time

from edge_cases.reaper import alive
from edge_cases.sandbox import Sandbox
from edge_cases.scenario import Scenario, expect

PROGRESS_TIMEOUT = 3
DEFAULT_PROGRESS_TIMEOUT = 600  # [watchdog] progress_timeout's default
# The hang reason's threshold when the trainer's rhythm set it (daemon_watchdog/step_rhythm.py).
LEARNED_THRESHOLD = re.compile(r"; threshold ([0-9.]+) s, learned: (\S+ x \S+ s)")
STOP_TIMEOUT = 2


def daemon_hang_sigstop(sb: Sandbox) -> str:
    sb.create()
    sb.hang_timeout(PROGRESS_TIMEOUT)
    # The default stop_timeout (30 s) and hang_dump_timeout: a frozen tree must not wait
    # out either (stack capture skips stopped processes, SIGCONT follows the SIGTERM).
    sb.configure("daemon", stop_timeout=30)
    sb.start_watchdog()
    sb.wait_running(past_step=10)
    frozen = sb.suspend_tree()
    status = sb.wait_running(restarts=1)
    crash = status.restarts[0]
    expect(crash.category == "timeout", f"classified {crash.category!r}")
    expect(crash.reason.startswith("hang"), f"reason {crash.reason!r}")
    expect(
        "stopped (SIGSTOP)" in crash.reason, f"the reason does not say stopped: {crash.reason!r}"
    )
    survivors = [p.pid for p in frozen if alive(p)]
    expect(not survivors, f"stopped processes {survivors} were not killed")
    incidents = list(sb.path("status/incidents").glob("*hang*.json"))
    expect(len(incidents) == 1, f"{len(incidents)} hang incident files")
    stopped = json.loads(incidents[0].read_text()).get("stopped")
    expect(stopped == sorted(p.pid for p in frozen), f"the incident's stopped pids: {stopped}")
    expect("ignored SIGTERM" not in sb.watchdog_log(), "the frozen tree waited out stop_timeout")
    return f"SIGSTOPped tree of {len(frozen)} seen as stopped, ended by SIGTERM+SIGCONT, restarted"


def daemon_hang_no_progress(sb: Sandbox) -> str:
    sb.create()
    sb.hang_timeout(PROGRESS_TIMEOUT)
    sb.daemon_args("--fault", "hang@20")
    sb.start_watchdog()
    started = time.monotonic()
    status = sb.wait_running(restarts=1)
    crash = status.restarts[0]
    expect(crash.category == "timeout", f"classified {crash.category!r}")
    incidents = list(sb.path("status/incidents").glob("*hang*.json"))
    expect(len(incidents) == 1, f"{len(incidents)} hang incident files")
    stacks = str(json.loads(incidents[0].read_text()).get("stacks"))
    expect("_wait_for_allreduce" in stacks, "the incident's stacks do not show where it hung")
    sb.wait_running(past_step=25, restarts=1)
    took = time.monotonic() - started
    return f"hang at step 20 seen, stacks saved (in _wait_for_allreduce), resumed; {took:.0f} s"


def hang_seen_by_learned_rhythm(sb: Sandbox) -> str:
    sb.create()
    # The default progress_timeout: ten minutes, far past the deadline. Only a threshold
    # learned from the trainer's 50 ms steps (5 x its longest silence, at least the floor)
    # can see this hang in time.
    floor = PROGRESS_TIMEOUT
    sb.configure("watchdog", progress_timeout=DEFAULT_PROGRESS_TIMEOUT, progress_timeout_min=floor)
    sb.daemon_args("--fault", "hang@40")
    sb.start_watchdog()
    started = time.monotonic()
    status = sb.wait_running(restarts=1)
    took = time.monotonic() - started
    crash = status.restarts[0]
    expect(crash.category == "timeout", f"classified {crash.category!r}")
    expect("at step 39 (train;" in crash.reason, f"not the hang at step 40: {crash.reason!r}")
    judged = LEARNED_THRESHOLD.search(crash.reason)
    expect(judged is not None, f"not judged by a learned threshold: {crash.reason!r}")
    assert judged is not None
    threshold = float(judged[1])
    expect(
        PROGRESS_TIMEOUT <= threshold < DEFAULT_PROGRESS_TIMEOUT,
        f"a learned threshold of {threshold:g} s, not within the floor ({PROGRESS_TIMEOUT} s) "
        f"and progress_timeout ({DEFAULT_PROGRESS_TIMEOUT} s)",
    )
    kept = status.step_rhythm.get("train")
    expect(kept is not None and kept > 0, f"status step_rhythm: {dict(status.step_rhythm)}")
    sb.wait_running(past_step=45, restarts=1)
    return (
        f"hang at step 40 restarted {took:.0f} s after the start on a learned threshold of "
        f"{threshold:g} s ({judged[2]}), not progress_timeout {DEFAULT_PROGRESS_TIMEOUT} s; "
        "resumed past step 45"
    )


def sigterm_ignored_escalates_to_sigkill(sb: Sandbox) -> str:
    sb.create()
    sb.configure(
        "daemon",
        stop_timeout=STOP_TIMEOUT,
        command=[
            "{python}",
            "-m",
            "edge_cases.children.stubborn_daemon",
            "--base-dir",
            "{base_dir}",
        ],
    )
    watchdog = sb.start_watchdog()
    sb.wait_running(past_step=5)
    tree = sb.daemon_tree()
    expect(len(tree) == 2, f"expected the stubborn daemon and its worker, found {len(tree)}")
    started = time.monotonic()
    stop = sb.tool("daemon_watchdog", "stop", "--timeout", "30")
    took = time.monotonic() - started
    expect(stop.returncode == 0, f"`stop` exit {stop.returncode}: {stop.stderr.strip()}")
    expect(took >= STOP_TIMEOUT * 0.9, f"`stop` returned after {took:.1f} s, before stop_timeout")
    expect(took < STOP_TIMEOUT + 10, f"`stop` took {took:.1f} s for stop_timeout={STOP_TIMEOUT}")
    survivors = [p.pid for p in tree if alive(p)]
    expect(not survivors, f"processes {survivors} survived `stop`")
    expect("ignored SIGTERM" in sb.watchdog_log(), "the escalation to SIGKILL is not logged")
    sb.deadline.wait_for(lambda: watchdog.poll() is not None, "the watchdog exiting", within=10)
    final = sb.status_now().state
    expect(final == "STOPPED", f"state {final}")
    return (
        f"SIGTERM ignored by daemon and worker: SIGKILL after stop_timeout; stop took {took:.1f} s"
    )


PRINTED_STEPS = 120


def trainer_that_only_prints(sb: Sandbox) -> str:
    sb.create()
    sb.configure(
        "daemon",
        command=["{python}", "-m", "edge_cases.children.printing_trainer", str(PRINTED_STEPS),
                 "0.05"],
    )  # fmt: skip
    # Far shorter than its run: a watchdog that waits for a progress file calls it hung.
    sb.configure("watchdog", startup_grace=2, progress_timeout=2, progress_regex=r"step (\d+) \|")
    sb.start_watchdog()
    running = sb.wait_running(past_step=10)
    expect(running.liveness == "log output", f"liveness {running.liveness!r}")
    expect(
        "no progress file" in (running.liveness_note or ""),
        f"status does not say the trainer writes no progress file: {running.liveness_note!r}",
    )
    done = sb.wait_state("STOPPED", within=60)
    expect(done.restart_count == 0, f"{done.restart_count} restarts of a healthy trainer")
    expect(done.last_crash is None, f"a crash was recorded: {done.last_crash}")
    return (
        f"{PRINTED_STEPS} printed steps, no progress file: RUNNING by its output, steps read "
        f"by progress_regex (step {running.step} seen), finished with no restart"
    )


SCENARIOS = (
    Scenario(
        name="daemon_hang_sigstop",
        summary="a frozen (SIGSTOPped) daemon tree is a hang: killed and restarted",
        fault="SIGSTOP to the daemon and its worker",
        expected="after progress_timeout: category timeout, reason 'hang ... stopped (SIGSTOP)', "
        "incident lists the stopped pids, the tree ends on SIGTERM (no stop_timeout wait), "
        "restart RUNNING",
        deadline=45,
        run=daemon_hang_sigstop,
    ),
    Scenario(
        name="daemon_hang_no_progress",
        summary="a live worker stuck in a collective is seen by missing progress",
        fault="--fault hang@20: the worker blocks forever in _wait_for_allreduce",
        expected="after progress_timeout: incident with the stuck stack, category timeout, "
        "restart; training passes step 25",
        deadline=45,
        run=daemon_hang_no_progress,
        sabotage={
            "TRAINGUARD_WATCHDOG__PROGRESS_TIMEOUT": "3600",
            "TRAINGUARD_WATCHDOG__PHASE_TIMEOUTS__EVAL": "3600",
            "TRAINGUARD_WATCHDOG__ADAPTIVE_TIMEOUT": "false",  # nothing learned below it
        },
        sabotage_deadline=12,
    ),
    Scenario(
        name="hang_seen_by_learned_rhythm",
        summary="a fast trainer that hangs is restarted on the threshold learned from its "
        "rhythm, long before the default 600 s progress_timeout",
        fault="--fault hang@40 in a 50 ms-a-step trainer, progress_timeout 600 (the default), "
        "progress_timeout_min 3",
        expected="restart (category timeout) whose reason names the hang at step 39 and a "
        "learned threshold ('learned: 5 x ...', between 3 and 600 s); status step_rhythm has "
        "the train phase; training passes step 45",
        deadline=45,
        run=hang_seen_by_learned_rhythm,
    ),
    Scenario(
        name="trainer_that_only_prints",
        summary="a trainer that only prints `step N` is alive by its log, never killed as hung",
        fault="a daemon without the progress protocol, startup_grace and progress_timeout 2 s",
        expected="RUNNING by its output, steps read by progress_regex, status says no progress "
        "file; finishes STOPPED with no restart",
        deadline=60,
        run=trainer_that_only_prints,
        sabotage={"TRAINGUARD_WATCHDOG__LIVENESS": '"progress"'},
        sabotage_deadline=20,
    ),
    Scenario(
        name="sigterm_ignored_escalates_to_sigkill",
        summary="a daemon that ignores SIGTERM is SIGKILLed after stop_timeout",
        fault="a daemon and worker with SIGTERM ignored, then `daemon-watchdog stop`",
        expected="`stop` exits 0 after about stop_timeout; both processes gone; the log says "
        "they ignored SIGTERM; state STOPPED",
        deadline=45,
        run=sigterm_ignored_escalates_to_sigkill,
    ),
)
