"""The watchdog itself fails or is started twice: training must not notice."""

from __future__ import annotations

import signal

from edge_cases.reaper import alive, kill_all
from edge_cases.sandbox import Sandbox
from edge_cases.scenario import Scenario, ScenarioFailed, expect
from trainguard.watchdog_status import WatchdogStatus

EX_TEMPFAIL = 75
# The test daemon: `sh` (an argv list, never a shell line of ours) waits until the pid file
# names it, SIGKILLs its parent, the watchdog, and then becomes the example daemon (exec keeps
# the pid). The pid file is the last thing the watchdog writes before it records the daemon's
# identity in the state file, so it dies between the two, with only the owner token recorded.
# The daemon's first act: SIGKILL its watchdog, which is then still writing the pid file or
# the state that records the daemon's identity (a shell starts in ~1 ms; those writes are
# fsync'd). Only the owner token, recorded before the spawn, names the daemon.
KILL_THE_WATCHDOG_AT_ONCE = ["/bin/sh", "-c", 'kill -KILL "$PPID"; exec "$@"', "kills-its-watchdog"]
WINDOW_TRIES = 5


def watchdog_killed_then_adopts(sb: Sandbox) -> str:
    sb.create()
    first = sb.start_watchdog()
    daemon_pid = sb.wait_running(past_step=10).daemon_pid
    first.kill()  # SIGKILL: no chance to stop its daemon
    first.wait()
    step = sb.trainer_step()
    sb.deadline.wait_for(
        lambda: sb.trainer_step() >= step + 10, "training going on without a watchdog", within=10
    )
    second = sb.start_watchdog()
    status = sb.wait_status(
        lambda s: s.watchdog_pid == second.pid and s.state == "RUNNING",
        "the new watchdog RUNNING",
    )
    expect(status.daemon_pid == daemon_pid, "the new watchdog did not adopt the daemon")
    daemons = [p.pid for p in sb.daemons()]
    expect(daemons == [daemon_pid], f"daemons running: {daemons}, expected only {daemon_pid}")
    adopted = sb.signal_daemon(signal.SIGKILL)  # an adopted daemon is not our child: pidfd
    after = sb.wait_running(restarts=1)
    expect(after.daemon_pid != daemon_pid, "the adopted daemon's death was not seen")
    expect(not alive(adopted), "the adopted daemon is still alive")
    return f"daemon pid {daemon_pid} kept training, adopted, its later SIGKILL recovered"


def second_watchdog_refused(sb: Sandbox) -> str:
    sb.create()
    first = sb.start_watchdog()
    status = sb.wait_running(past_step=3)
    daemon_pid = status.daemon_pid
    second = sb.start_watchdog()
    sb.deadline.wait_for(
        lambda: second.poll() is not None, "the second watchdog exiting", within=20
    )
    expect(second.returncode == EX_TEMPFAIL, f"second `run` exited {second.returncode}, not 75")
    output = "".join(p.read_text() for p in sb.root.glob("watchdog-*.out"))
    expect("already supervises" in output, "the refusal does not say why")
    expect(first.poll() is None, "the first watchdog died")
    now = sb.wait_running(past_step=status.step + 5)
    expect(now.daemon_pid == daemon_pid, "the daemon was replaced")
    expect(now.watchdog_pid == first.pid, "the state file names another watchdog")
    daemons = [p.pid for p in sb.daemons()]
    expect(daemons == [daemon_pid], f"daemons running: {daemons}")
    return "second `run` exited 75 (already supervises); first watchdog and daemon untouched"


def _watchdog_killed_by_its_daemon(sb: Sandbox) -> WatchdogStatus:
    """Start a watchdog whose daemon kills it; the state file it left."""
    first = sb.start_watchdog()
    sb.deadline.wait_for(lambda: first.poll() is not None, "the daemon killing its watchdog")
    expect(first.returncode == -signal.SIGKILL, f"the watchdog exited {first.returncode}")
    left = sb.status_now()
    expect(left.owner_token is not None, "no owner token was recorded before the spawn")
    return left


def _killed_before_the_record(sb: Sandbox) -> tuple[WatchdogStatus, int]:
    """What a watchdog killed between spawn and record left, and how many tries that took.

    A watchdog that wins the race records the daemon's identity before the kill lands (rare:
    two fsync'd writes against a shell's start): that try proves nothing here, so its daemon
    is ended and the fault injected again; WINDOW_TRIES such tries in a row fail the scenario.
    """
    for attempt in range(1, WINDOW_TRIES + 1):
        left = _watchdog_killed_by_its_daemon(sb)
        if left.daemon is None:
            return left, attempt
        kill_all(sb.daemon_tree())
    raise ScenarioFailed(
        f"the fault missed its window {WINDOW_TRIES} times: the watchdog recorded its daemon "
        "before its daemon's first act, a SIGKILL to it, landed"
    )


def watchdog_killed_between_spawn_and_record(sb: Sandbox) -> str:
    sb.create()
    sb.configure("daemon", command=[*KILL_THE_WATCHDOG_AT_ONCE, *sb.daemon_argv])
    left, tries = _killed_before_the_record(sb)
    daemons = sb.deadline.wait_for(
        lambda: [p.pid for p in sb.daemons()], "the daemon training on alone", within=10
    )
    expect(len(daemons) == 1, f"daemons running: {daemons}")
    named = daemons[0]
    # Its successor runs the plain example daemon, should it (wrongly) start one.
    sb.configure("daemon", command=sb.daemon_argv)
    second = sb.start_watchdog()
    status = sb.wait_status(
        lambda s: s.watchdog_pid == second.pid and s.state in ("RUNNING", "FATAL"),
        "the new watchdog RUNNING",
    )
    expect(status.state == "RUNNING", f"the new watchdog went FATAL: {status.fatal_reason}")
    expect(status.daemon_pid == named, f"supervising pid {status.daemon_pid}, not {named}")
    expect(status.owner_token == left.owner_token, "the adopted daemon's token was not kept")
    expect("by its owner token" in sb.watchdog_log(), "the log does not say how it was adopted")
    now = sb.wait_running(past_step=status.step + 10)
    daemons = [p.pid for p in sb.daemons()]
    expect(daemons == [named], f"daemons running: {daemons}, expected only {named}")
    expect(
        now.daemon_pid == named and now.restart_count == 0,
        f"the daemon was replaced: pid {now.daemon_pid}, {now.restart_count} restarts",
    )
    return (
        f"watchdog killed after the spawn, before recording pid {named} (try {tries}); "
        f"its successor adopted it by owner token; training went on to step {now.step}"
    )


SCENARIOS = (
    Scenario(
        name="watchdog_killed_then_adopts",
        summary="a SIGKILLed watchdog leaves training running; its successor adopts the daemon",
        fault="SIGKILL to the watchdog, a new `run`, then SIGKILL to the adopted daemon",
        expected="training goes on alone; the new watchdog adopts the same daemon pid (no second "
        "daemon) and still sees and recovers its death",
        deadline=45,
        run=watchdog_killed_then_adopts,
    ),
    Scenario(
        name="watchdog_killed_between_spawn_and_record",
        summary="a watchdog killed after starting its daemon, before recording it: the daemon "
        "is adopted, never doubled",
        fault="the daemon's first act is a SIGKILL to its watchdog (only its owner token is "
        "recorded by then), then a new `run`",
        expected="the new watchdog adopts that daemon by its recorded owner token (RUNNING, same "
        "pid, no restart); exactly one daemon runs; training goes on",
        deadline=45,
        run=watchdog_killed_between_spawn_and_record,
    ),
    Scenario(
        name="second_watchdog_refused",
        summary="a second watchdog on a workspace exits 75 and disturbs nothing",
        fault="a second `daemon-watchdog run` on a supervised workspace",
        expected="exit 75 with 'already supervises'; the first watchdog and its daemon go on",
        deadline=45,
        run=second_watchdog_refused,
    ),
)
