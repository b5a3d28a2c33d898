"""A training daemon that ignores SIGTERM, as a wedged trainer effectively does.

usage: python -m edge_cases.children.stubborn_daemon --base-dir DIR [--worker]

It writes the progress protocol every 0.1 s and starts one worker (itself with `--worker`), which
ignores SIGTERM too. Only SIGKILL ends either of them.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from pathlib import Path

from trainguard.progress import write_progress

STEP_SECONDS = 0.1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stubborn_daemon")
    parser.add_argument("--base-dir", required=True, type=Path)
    parser.add_argument("--worker", action="store_true")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if args.worker:
        while True:
            signal.pause()
    base: Path = args.base_dir
    command = [sys.executable, "-m", "edge_cases.children.stubborn_daemon", "--base-dir"]
    worker = subprocess.Popen([*command, str(base), "--worker"])
    print(f"stubborn daemon: worker pid {worker.pid}; SIGTERM is ignored", flush=True)
    step = 0
    while True:
        step += 1
        write_progress(base / "status" / "progress.json", step=step, phase="train")
        time.sleep(STEP_SECONDS)


if __name__ == "__main__":
    raise SystemExit(main())
