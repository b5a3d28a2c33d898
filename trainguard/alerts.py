"""Alerts through apprise URLs (Slack, Discord, e-mail, ntfy, json://...), de-duplicated.

Delivery runs in a short-lived child process (`python -m trainguard.alert_sender`) watched by
a daemon thread: apprise (~15 MiB, a quarter second to import) never enters the watchdog, and
a slow or dead target can only time out that child, never stall supervision. The outcome comes
back on the child's stdout, not its exit status: a supervisor that reaps every child (the
watchdog does, as a subreaper) may collect that status first.

De-duplication: an alert's `key` (e.g. `crash:cuda_oom`) is sent at most once per `cooldown`,
across processes (the watchdog and hourly health-check runs) through a small state file.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from trainguard.atomicio import write_json_atomic
from trainguard.config import AlertsSection

log = logging.getLogger("trainguard.alerts")

SEVERITIES = ("info", "success", "warning", "failure")  # apprise's notify types


@dataclass(frozen=True)
class Alert:
    kind: str  # one of trainguard.config.ALERT_KINDS
    key: str  # identical keys within the cooldown are sent once
    title: str
    body: str
    severity: str = "failure"


class Alerter:
    def __init__(self, config: AlertsSection, state_file: Path) -> None:
        self.config = config
        self.state_file = state_file
        # Senders still running: a supervisor that reaps every child can tell them apart.
        self.sender_pids: set[int] = set()

    @property
    def enabled(self) -> bool:
        return bool(self.config.urls)

    def send(self, alert: Alert) -> threading.Thread | None:
        """Start delivering `alert` unless it is off, not wanted, or within its cooldown.

        Returns the delivering thread (join it before a short-lived process exits), or None.
        """
        if not self.enabled or alert.kind not in self.config.kinds:
            return None
        try:
            fresh = self._claim(alert.key)
        except OSError as exc:  # no state file: better a duplicate than a lost alert
            log.warning("alert de-duplication unavailable (%s): sending anyway", exc)
            fresh = True
        if not fresh:
            log.info(
                "alert %s not sent: an identical one went out within %g s",
                alert.key,
                self.config.cooldown,
            )
            return None
        thread = threading.Thread(target=self._deliver, args=(alert,), name="alert", daemon=True)
        thread.start()
        return thread

    def _claim(self, key: str) -> bool:
        """Record `key` as sent now, unless it was sent within the cooldown (under a lock)."""
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.state_file.with_name(self.state_file.name + ".lock")
        with open(lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                with open(self.state_file, "rb") as fh:
                    sent = json.loads(fh.read())
            except (OSError, ValueError):
                sent = {}
            if not isinstance(sent, dict):
                sent = {}
            now = time.time()
            last = sent.get(key)
            if isinstance(last, (int, float)) and 0 <= now - last < self.config.cooldown:
                return False
            # Forget keys whose cooldown ended long ago, so the file stays small.
            sent = {
                k: v
                for k, v in sent.items()
                if isinstance(v, (int, float)) and now - v < max(self.config.cooldown, 1) * 10
            }
            sent[key] = now
            write_json_atomic(self.state_file, sent)
            return True

    def _deliver(self, alert: Alert) -> None:
        request = {
            "urls": self.config.urls,
            "title": alert.title,
            "body": alert.body,
            "severity": alert.severity,
        }
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "trainguard.alert_sender"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env={**os.environ, "PYTHONWARNINGS": "ignore"},
            )
        except OSError as exc:
            log.error("alert %s: cannot start the sender: %s", alert.key, exc)
            return
        self.sender_pids.add(proc.pid)
        try:
            stdout, stderr = proc.communicate(json.dumps(request), timeout=self.config.timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            log.error(
                "alert %s: no answer from its targets within %g s", alert.key, self.config.timeout
            )
            return
        finally:
            self.sender_pids.discard(proc.pid)
        done = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
        try:
            outcome = json.loads(done.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
            log.error("alert %s: sender failed: %s", alert.key, tail)
            return
        if outcome.get("ok"):
            log.info("alert %s sent to %d target(s)", alert.key, len(self.config.urls))
        else:
            errors = "; ".join(outcome.get("errors") or ["unknown error"])
            log.error("alert %s: not delivered: %s", alert.key, errors)
