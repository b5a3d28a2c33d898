"""Exits 0 from its SIGTERM handler, as a trainer that saves and leaves does; faulthandler on.

usage: exits_on_sigterm.py READY_FILE -- writes its pid once the handler is installed.
The exit code tells a handled SIGTERM (0) from a default-action death or a SIGKILL.
"""

from __future__ import annotations

import faulthandler
import os
import signal
import sys
from types import FrameType


def handle_sigterm(signum: int, frame: FrameType | None) -> None:
    os._exit(0)


def main() -> None:
    faulthandler.enable()  # SIGABRT prints the stacks, as under the watchdog
    signal.signal(signal.SIGTERM, handle_sigterm)
    ready = sys.argv[1]
    with open(f"{ready}.tmp", "w") as fh:
        fh.write(str(os.getpid()))
    os.replace(f"{ready}.tmp", ready)
    while True:
        signal.pause()  # idle until signalled


if __name__ == "__main__":
    main()
