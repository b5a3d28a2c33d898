"""A trainer whose GPU 1 falls off the bus once: the first run prints what the driver and CUDA
say (an Xid 79 line, a CUDA error) and exits 1; every later run sleeps until signalled.

usage: python -m edge_cases.children.gpu_falls_off MARKER -- MARKER records that the failure
already happened. SIMULATION: the lines are what the driver and CUDA print; no GPU failed.
"""

from __future__ import annotations

import os
import signal
import sys


def main() -> None:
    marker = sys.argv[1]
    if not os.path.exists(marker):
        with open(marker, "w") as fh:
            fh.write(str(os.getpid()))
        print("[ 512.1] NVRM: Xid (PCI:0000:86:00): 79, pid=1, name=python, GPU has fallen off")
        print("RuntimeError: CUDA error: unspecified launch failure", flush=True)
        sys.exit(1)
    while True:
        signal.pause()  # idle until signalled


if __name__ == "__main__":
    main()
