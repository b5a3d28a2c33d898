"""A user's own trainer without the progress protocol: it only prints `step N`, then finishes.

usage: python -m edge_cases.children.printing_trainer STEPS INTERVAL_S
"""

from __future__ import annotations

import sys
import time


def main() -> int:
    steps, interval = int(sys.argv[1]), float(sys.argv[2])
    for step in range(1, steps + 1):
        print(f"train | step {step} | loss {1.0 / step:.4f}", flush=True)
        time.sleep(interval)
    print("training done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
