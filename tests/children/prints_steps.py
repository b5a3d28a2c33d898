"""A user's own trainer without the progress protocol: it only prints `step N`.

Usage: prints_steps.py STEPS INTERVAL_S [hang]. Prints `step 1` .. `step STEPS`, one every
INTERVAL_S seconds (flushed), then exits 0, or with `hang` blocks forever printing nothing.
"""

from __future__ import annotations

import signal
import sys
import time


def main() -> int:
    steps, interval = int(sys.argv[1]), float(sys.argv[2])
    for step in range(1, steps + 1):
        print(f"epoch 0 | step {step} | loss {1.0 / step:.4f}", flush=True)
        time.sleep(interval)
    if sys.argv[3:] == ["hang"]:
        while True:
            signal.pause()
    return 0


if __name__ == "__main__":
    sys.exit(main())
