"""A planned stop: what the trainer reached is saved before it is stopped, not lost with it."""

from __future__ import annotations

from edge_cases.sandbox import Sandbox
from edge_cases.scenario import Scenario, expect

NO_PERIODIC_SAVES = 100_000  # far past total_steps: only a save asked for writes a checkpoint


def planned_stop_loses_nothing(sb: Sandbox) -> str:
    sb.create(save_steps=NO_PERIODIC_SAVES)
    watchdog = sb.start_watchdog()
    reached = sb.wait_running(past_step=30).step
    expect(not sb.checkpoint_steps(), f"checkpoints before the stop: {sb.checkpoint_steps()}")
    stop = sb.tool("daemon_watchdog", "stop")
    expect(stop.returncode == 0, f"`stop` exit {stop.returncode}: {stop.stderr.strip()[-300:]}")
    steps = sb.checkpoint_steps()
    last = sb.trainer_step()
    expect(steps, f"no checkpoint after the stop: steps 1..{last} were trained and lost")
    newest = steps[-1]
    expect(newest >= reached, f"checkpoint-{newest} is older than step {reached}, seen first")
    expect(
        newest == last,
        f"the trainer reached step {last} but saved checkpoint-{newest}: steps "
        f"{newest + 1}..{last} were lost",
    )
    expect(
        sb.path(f"checkpoints/checkpoint-{newest}/trainer_state.json").is_file(),
        f"checkpoint-{newest} is incomplete (no trainer_state.json)",
    )
    expect(
        not sb.path("status/save_request.json").exists(),
        "status/save_request.json outlived the stop",
    )
    log = sb.watchdog_log()
    expect("asking the trainer for a checkpoint first" in log, "the log does not say it asked")
    expect("the trainer saved a checkpoint" in log, "the log does not say the trainer saved")
    sb.deadline.wait_for(lambda: watchdog.poll() is not None, "the watchdog exiting", within=10)
    final = sb.status_now().state
    expect(final == "STOPPED", f"state {final}")
    return (
        f"`stop` at step {last}: the trainer saved checkpoint-{newest} (no periodic saves) "
        "before it was stopped; nothing trained was lost; the request file is gone"
    )


SCENARIOS = (
    Scenario(
        name="planned_stop_loses_nothing",
        summary="`daemon-watchdog stop` first has the trainer save the step it reached",
        fault=f"`daemon-watchdog stop` past step 30 with save_steps {NO_PERIODIC_SAVES} (no "
        "periodic checkpoint)",
        expected="`stop` exits 0; the newest checkpoint (complete) is the last step in "
        "status/progress.json; status/save_request.json is gone; the log says the watchdog "
        "asked and the trainer saved; STOPPED",
        deadline=45,
        run=planned_stop_loses_nothing,
        sabotage={"TRAINGUARD_DAEMON__SAVE_ON_STOP_TIMEOUT": "0"},
        sabotage_deadline=20,
    ),
)
