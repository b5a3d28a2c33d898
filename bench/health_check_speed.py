"""How long a whole `health-check` run takes on the example workspace (goal: under 1 s).

    .venv/bin/python bench/health_check_speed.py [--runs 10] [--keep]

Makes a workspace with `daemon-watchdog init`, trains it to the end under the real watchdog
(`daemon-watchdog run --exit-when-done`, 40 steps, a checkpoint every 10) so that checkpoints,
progress, the watchdog's state and the crash history all exist, then times `--runs` runs of
`health-check -c WS/trainguard.toml --json` as a fresh process each (start-up and imports
included: that is what cron pays) and prints the median, p90 and the slowest check's own time.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VENV_BIN = Path(sys.executable).parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--keep", action="store_true", help="keep the workspace")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="hc-bench-"))
    try:
        ws = root / "ws"
        config = ws / "trainguard.toml"
        _run([str(VENV_BIN / "daemon-watchdog"), "init", str(ws)])
        job = json.loads((ws / "config.json").read_text())
        job.update(total_steps=40, save_steps=10, step_seconds=0.01)
        (ws / "config.json").write_text(json.dumps(job))
        _run([str(VENV_BIN / "daemon-watchdog"), "run", "-c", str(config), "--exit-when-done"])
        argv = [str(VENV_BIN / "health-check"), "-c", str(config), "--json"]
        print("$", " ".join(argv))
        walls: list[float] = []
        slowest: dict[str, float] = {}
        for _ in range(args.runs):
            t0 = time.perf_counter()
            done = subprocess.run(argv, capture_output=True, text=True, check=False)
            walls.append(time.perf_counter() - t0)
            report = json.loads(done.stdout)
            for check in report["checks"]:
                slowest[check["name"]] = max(slowest.get(check["name"], 0.0), check["duration_s"])
        print(f"status of the last run: {report['status']} (exit {done.returncode})")
        walls.sort()
        p90 = walls[max(0, round(0.9 * len(walls)) - 1)]
        print(
            f"whole run, {len(walls)} runs: median {statistics.median(walls) * 1000:.0f} ms, "
            f"p90 {p90 * 1000:.0f} ms, max {walls[-1] * 1000:.0f} ms"
        )
        print("slowest time of each check (its own thread, all at once):")
        for name, took in sorted(slowest.items(), key=lambda kv: -kv[1]):
            print(f"  {name:15s} {took * 1000:7.1f} ms")
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import health_check.cli"], check=True)
        print(
            f"python -c 'import health_check.cli': {(time.perf_counter() - started) * 1000:.0f} ms"
        )
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return 0


def _run(argv: list[str]) -> None:
    print("$", " ".join(argv))
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, timeout=300)


if __name__ == "__main__":
    sys.exit(main())
