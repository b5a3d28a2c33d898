"""Exit codes shared by the trainguard commands (sysexits.h where one fits)."""

from __future__ import annotations

OK = 0
FAILURE = 1
USAGE = 2  # argparse's own code for bad flags
NOINPUT = 66  # EX_NOINPUT: a file or study asked for does not exist
TEMPFAIL = 75  # EX_TEMPFAIL: another watchdog holds the workspace lock
CONFIG = 78  # EX_CONFIG: a systemd unit lists it in RestartPreventExitStatus
INTERRUPTED = 130  # 128 + SIGINT, as shells report Ctrl+C
