"""What the watchdog's state file says about the daemon, checked against the live system.

health-check reads `status/watchdog.json` as a file (the contract's format): it may not import
daemon_watchdog, and it must work when no watchdog ever ran here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psutil

from trainguard.atomicio import read_json
from trainguard.procs import ProcessIdentity, locate, locate_marked
from trainguard.workspace import Workspace


@dataclass(frozen=True)
class Supervision:
    state: dict[str, Any] | None  # the state file, None when absent or unreadable
    watchdog: psutil.Process | None  # the live watchdog the state names, proven by identity
    daemon: psutil.Process | None  # the live daemon the state names, proven by identity
    daemon_identity: ProcessIdentity | None

    @property
    def state_name(self) -> str | None:
        value = self.state.get("state") if self.state else None
        return value if isinstance(value, str) else None

    @property
    def token(self) -> str | None:
        value = self.state.get("owner_token") if self.state else None
        return value if isinstance(value, str) and value else None


def read_supervision(ws: Workspace) -> Supervision:
    try:
        data = read_json(ws.state_file)
    except (OSError, ValueError):
        data = None
    state = data if isinstance(data, dict) else None
    token = state.get("owner_token") if state else None
    daemon_identity = _identity(state, "daemon")
    daemon = (
        locate_marked(daemon_identity, token if isinstance(token, str) else None)
        if daemon_identity is not None
        else None
    )
    return Supervision(state, _live(state, "watchdog"), daemon, daemon_identity)


def _identity(state: dict[str, Any] | None, key: str) -> ProcessIdentity | None:
    if not state:
        return None
    try:
        return ProcessIdentity.from_json(state.get(key))
    except ValueError:
        return None


def _live(state: dict[str, Any] | None, key: str) -> psutil.Process | None:
    identity = _identity(state, key)
    return locate(identity) if identity is not None else None
