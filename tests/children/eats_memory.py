"""A daemon that the kernel OOM-kills: it joins a memory cgroup with a small limit, then
allocates (and touches) memory until the OOM killer ends it.

usage: eats_memory.py CGROUP_DIR MARKER
  first run (no MARKER yet): writes MARKER, joins CGROUP_DIR, eats memory (exit 3 if it is
  never killed, so a missing limit fails the test instead of eating the machine)
  later runs: wait for a signal, as a daemon recovered by a restart would
"""

from __future__ import annotations

import os
import signal
import sys

CHUNK = 8 * 1024 * 1024
MOST = 2 * 1024 * 1024 * 1024


def main() -> int:
    cgroup, marker = sys.argv[1], sys.argv[2]
    if os.path.exists(marker):
        while True:
            signal.pause()
    with open(marker, "w") as fh:
        fh.write(str(os.getpid()))
    with open(os.path.join(cgroup, "cgroup.procs"), "w") as fh:
        fh.write(str(os.getpid()))
    print(f"eats_memory: pid {os.getpid()} joined {cgroup}", flush=True)
    held = []
    for _ in range(MOST // CHUNK):
        held.append(bytearray(CHUNK))  # zero-filled: every page is touched
    print("eats_memory: never killed", flush=True)
    return 3


if __name__ == "__main__":
    raise SystemExit(main())
