"""What the watchdog's state file says about the daemon, checked against the live system.

health-check reads `status/watchdog.json` through the typed record of the core (the contract's
format): it may not import daemon_watchdog, and it must work when no watchdog ever ran here.
"""

from __future__ import annotations

from dataclasses import dataclass

import psutil

from trainguard.procs import ProcessIdentity, locate, locate_marked
from trainguard.watchdog_status import WatchdogStatus, read_watchdog_status
from trainguard.workspace import Workspace


@dataclass(frozen=True)
class Supervision:
    state: WatchdogStatus | None  # the state file, None when absent or unreadable
    watchdog: psutil.Process | None  # the live watchdog the state names, proven by identity
    daemon: psutil.Process | None  # the live daemon the state names, proven by identity
    daemon_identity: ProcessIdentity | None

    @property
    def state_name(self) -> str | None:
        return self.state.state if self.state else None

    @property
    def token(self) -> str | None:
        return self.state.owner_token if self.state else None


def read_supervision(ws: Workspace) -> Supervision:
    state = read_watchdog_status(ws.state_file)
    daemon_identity = state.daemon if state else None
    daemon = (
        locate_marked(daemon_identity, state.owner_token) if state and daemon_identity else None
    )
    watchdog = locate(state.watchdog) if state and state.watchdog else None
    return Supervision(state, watchdog, daemon, daemon_identity)
