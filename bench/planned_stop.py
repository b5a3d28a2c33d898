"""A planned stop against a trainer that answers save requests: how many steps are lost.

    .venv/bin/python bench/planned_stop.py [--runs 3] [--step-seconds 0.05]

Each run makes a throwaway workspace with edge_cases' Sandbox (the example daemon, no periodic
checkpoints: `save_steps` 100000), runs `daemon-watchdog run` until the trainer is past step 20,
then runs `daemon-watchdog stop` and reads: the trainer's step when the stop was asked, the
newest checkpoint's step, the last step the trainer reported (its progress file), and how long
`stop` took. Steps lost = last reported step - newest checkpoint step (#20's goal: 0). Every
process a run starts is killed and its folder removed at the end.
"""

from __future__ import annotations

import argparse
import threading
import time

from edge_cases.deadline import Deadline
from edge_cases.sandbox import Sandbox


def measure(step_seconds: float) -> dict[str, float]:
    sb = Sandbox("bench-stop", Deadline(120.0, threading.Event()))
    try:
        sb.create(total_steps=100000, save_steps=100000, step_seconds=step_seconds)
        sb.start_watchdog()
        sb.wait_running(past_step=20)
        asked = sb.trainer_step()
        started = time.monotonic()
        done = sb.tool("daemon_watchdog", "stop", "--timeout", "60")
        took = time.monotonic() - started
        if done.returncode != 0:
            raise SystemExit(f"stop exited {done.returncode}: {done.stderr.strip()}")
        saved = max(sb.checkpoint_steps(), default=0)
        last = sb.trainer_step()
        return {"asked": asked, "saved": saved, "last": last, "lost": last - saved, "took": took}
    finally:
        sb.close(keep=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--step-seconds", type=float, default=0.05)
    args = parser.parse_args()
    for run in range(1, args.runs + 1):
        r = measure(args.step_seconds)
        print(
            f"run {run}: stop asked at step {r['asked']:.0f}, checkpoint at step {r['saved']:.0f}, "
            f"last step reported {r['last']:.0f}: {r['lost']:.0f} steps lost; stop took "
            f"{r['took']:.2f} s",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
