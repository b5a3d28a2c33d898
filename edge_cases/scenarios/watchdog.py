"""The watchdog itself fails or is started twice: training must not notice."""

from __future__ import annotations

import signal

from edge_cases.reaper import alive
from edge_cases.sandbox import Sandbox
from edge_cases.scenario import Scenario, expect

EX_TEMPFAIL = 75


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
        name="second_watchdog_refused",
        summary="a second watchdog on a workspace exits 75 and disturbs nothing",
        fault="a second `daemon-watchdog run` on a supervised workspace",
        expected="exit 75 with 'already supervises'; the first watchdog and its daemon go on",
        deadline=45,
        run=second_watchdog_refused,
    ),
)
