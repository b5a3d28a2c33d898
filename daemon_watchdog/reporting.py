"""What the watchdog tells the outside world: systemd (sd_notify), people (alerts) and
Prometheus (metrics). None of it may disturb supervision: every call here returns at once and
swallows its own failures (they are logged)."""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from typing import Any

from trainguard.alerts import Alert, Alerter
from trainguard.sd_notify import Notifier
from trainguard.watchdog_status import WatchdogStatus
from trainguard.workspace import Workspace

log = logging.getLogger("daemon_watchdog")


class Reporter:
    def __init__(self, ws: Workspace, notifier: Notifier | None = None) -> None:
        self.ws = ws
        self.notifier = notifier or Notifier()
        self.alerter = Alerter(ws.config.alerts, ws.path(ws.config.alerts.state_file))
        self.host = socket.gethostname()
        self._metrics: Any = None
        self._stopping_sent = False

    # --- lifecycle ------------------------------------------------------------------------

    def start_metrics(self, snapshot: Callable[[], WatchdogStatus | None]) -> None:
        if not self.ws.config.metrics.listen:
            return
        from daemon_watchdog.metrics import serve

        try:
            self._metrics = serve(self.ws, snapshot)
        except OSError as exc:  # port taken, bad address: report, keep supervising
            log.error("cannot serve metrics on %s: %s", self.ws.config.metrics.listen, exc)

    def close(self) -> None:
        if self._metrics is not None:
            self._metrics.shutdown()
            self._metrics.server_close()
            self._metrics = None
        self.notifier.close()

    # --- systemd --------------------------------------------------------------------------

    @property
    def ping_interval(self) -> float | None:
        return self.notifier.ping_interval

    def ready(self, status: str) -> None:
        self.notifier.ready(status)

    def ping(self) -> None:
        self.notifier.ping()

    def status(self, text: str) -> None:
        self.notifier.status(text[:200])

    def stopping(self) -> None:
        if not self._stopping_sent:
            self._stopping_sent = True
            self.notifier.stopping()

    # --- alerts ---------------------------------------------------------------------------

    def alert_senders(self) -> set[int]:
        """Our own alert delivery children: never orphans to kill."""
        return self.alerter.senders()

    def crash(self, category: str, reason: str, suggestion: str, evidence: str, then: str) -> None:
        self._send(
            "crash",
            f"crash:{category}",
            f"training crashed on {self.host}: {category}",
            f"{reason}\nevidence: {evidence or '-'}\nsuggestion: {suggestion}\n{then}",
        )

    def hang(self, reason: str, incident: str) -> None:
        self._send(
            "hang",
            "hang",
            f"training hung on {self.host}",
            f"{reason}\nwhere it was stuck: {incident}\nthe watchdog restarts it",
        )

    def fatal(self, category: str, reason: str, suggestion: str) -> None:
        self._send(
            "fatal",
            f"fatal:{category}",
            f"training FATAL on {self.host}: no more restarts",
            f"{reason}\nsuggestion: {suggestion}\n"
            "fix the cause, then run `daemon-watchdog restart`",
        )

    def disk_low(self, message: str) -> None:
        self._send("disk_low", "disk_low", f"low disk on {self.host}", message)

    def _send(self, kind: str, key: str, title: str, body: str) -> None:
        try:
            self.alerter.send(Alert(kind, key, title, f"{body}\nworkspace: {self.ws.base_dir}"))
        except Exception as exc:  # an alert must never take supervision down
            log.error("alert %s failed: %s", key, exc)
