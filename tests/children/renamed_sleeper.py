"""Renames itself, then sleeps until a signal ends it, like sleeper.py.

usage: renamed_sleeper.py READY_FILE NAME -- sets its command name (/proc/self/comm, what
/proc/PID/stat shows in parentheses) to NAME, then writes its pid to READY_FILE.
"""

from __future__ import annotations

import os
import signal
import sys


def main() -> None:
    ready, name = sys.argv[1], sys.argv[2]
    with open("/proc/self/comm", "w") as comm:
        comm.write(name)
    with open(f"{ready}.tmp", "w") as fh:
        fh.write(str(os.getpid()))
    os.replace(f"{ready}.tmp", ready)  # a reader never sees an empty ready file
    while True:
        signal.pause()  # idle until signalled


if __name__ == "__main__":
    main()
