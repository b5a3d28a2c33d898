"""`daemon-watchdog start`: `run` detached from the terminal, returning once it is up.

The watchdog is started in a session of its own (a closed terminal or Ctrl+C in the shell does
not reach it), with no terminal for its stdin and its stdout/stderr appended to
`logs/watchdog.out` beside its own log. `start` then waits until the state file names the new
watchdog and its daemon has started (or it settled in another state), or until it exits: so
`start` then `status` (or a look at the daemon's pid file) never races, and a refusal
(another watchdog holds the workspace: 75; a bad config: 78) is `start`'s own exit code, with
the watchdog's last words.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from trainguard import exitcodes
from trainguard.errors import ExitCode, TrainguardError
from trainguard.watchdog_status import read_watchdog_status
from trainguard.workspace import Workspace

START_TIMEOUT = 60.0  # seconds the watchdog may take to publish its first state
POLL = 0.05  # seconds between looks at the state file while it starts (a CLI, bounded)
OUTPUT = "logs/watchdog.out"


def start_detached(ws: Workspace, config: Path, *, timeout: float = START_TIMEOUT) -> int:
    out = ws.path(OUTPUT)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        log = open(out, "ab")  # noqa: SIM115 - handed to the child, closed right after
    except OSError as exc:
        raise TrainguardError(f"cannot write {out}: {exc.strerror or exc}") from None
    with log:
        offset = log.tell()
        child = subprocess.Popen(
            [sys.executable, "-m", "daemon_watchdog", "run", "-c", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=ws.base_dir,
        )
    deadline = time.monotonic() + timeout
    published = None
    while time.monotonic() < deadline:
        code = child.poll()
        status = read_watchdog_status(ws.state_file)
        if status is not None and status.watchdog_pid == child.pid:
            published = status
            # Up: its daemon started (pid file written), or it settled otherwise (BACKOFF,
            # FATAL): `start` then `kill $(cat .daemon.pid)` or `status` never races.
            if status.daemon_pid is not None or status.state != "STARTING":
                daemon = f", daemon pid {status.daemon_pid}" if status.daemon_pid else ""
                print(f"watchdog started (pid {child.pid}): {status.state}{daemon}; "
                      f"output in {out}")  # fmt: skip
                return exitcodes.OK
        if code is not None:
            for line in _tail(out, offset):  # its own words, already "daemon-watchdog: ..."
                print(line, file=sys.stderr)
            raise ExitCode(code or exitcodes.FAILURE)
        time.sleep(POLL)
    if published is not None:  # still choosing the checkpoint to resume from (a huge one)
        print(f"watchdog started (pid {child.pid}): still STARTING after {timeout:g} s; "
              f"`daemon-watchdog status` shows when its daemon runs")  # fmt: skip
        return exitcodes.OK
    raise TrainguardError(
        f"the watchdog (pid {child.pid}) published no state within {timeout:g} s; it is left "
        f"running: see {out} and `daemon-watchdog status`"
    )


def _tail(path: Path, offset: int, lines: int = 5) -> list[str]:
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            text = fh.read().decode(errors="replace")
    except OSError:
        return []
    return [line for line in text.strip().splitlines() if line.strip()][-lines:]
