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
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from trainguard.atomicio import write_json_atomic
from trainguard.config import AlertsSection
from trainguard.python_child import module_argv

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
        # Senders still running: a supervisor that reaps or kills stray children of its own
        # must tell them apart. The lock spans fork and registration: whoever reads the set
        # after listing its children sees every sender among them.
        self.sender_pids: set[int] = set()
        self._lock = threading.Lock()

    def senders(self) -> set[int]:
        with self._lock:
            return set(self.sender_pids)

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
            fresh, previous = self._claim(alert.key)
        except OSError as exc:  # no state file: better a duplicate than a lost alert
            log.warning("alert de-duplication unavailable (%s): sending anyway", exc)
            fresh, previous = True, None
        if not fresh:
            log.info(
                "alert %s not sent: an identical one went out within %g s",
                alert.key,
                self.config.cooldown,
            )
            return None
        thread = threading.Thread(
            target=self._deliver, args=(alert, previous), name="alert", daemon=True
        )
        thread.start()
        return thread

    def _claim(self, key: str) -> tuple[bool, float | None]:
        """Record `key` as sent now, unless it was sent within the cooldown (under a lock).

        Returns (fresh, the time it was sent before), so that a failed delivery can give the
        claim back: a lost alert must not silence the next one.
        """
        with self._state() as sent:
            now = time.time()
            last = sent.get(key)
            if isinstance(last, (int, float)) and 0 <= now - last < self.config.cooldown:
                return False, None
            # Forget keys whose cooldown ended long ago, so the file stays small.
            kept = {
                k: v
                for k, v in sent.items()
                if isinstance(v, (int, float)) and now - v < max(self.config.cooldown, 1) * 10
            }
            previous = last if isinstance(last, (int, float)) else None
            sent.clear()
            sent.update(kept)
            sent[key] = now
            return True, previous

    def _unclaim(self, key: str, previous: float | None) -> None:
        try:
            with self._state() as sent:
                if previous is None:
                    sent.pop(key, None)
                else:
                    sent[key] = previous
        except OSError as exc:
            log.warning("cannot give back the alert claim %s: %s", key, exc)

    @contextmanager
    def _state(self) -> Iterator[dict[str, float]]:
        """The sent-times file, read and (if changed) rewritten under an exclusive flock."""
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.state_file.with_name(self.state_file.name + ".lock")
        with open(lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                with open(self.state_file, "rb") as fh:
                    loaded = json.loads(fh.read())
            except (OSError, ValueError):
                loaded = {}
            sent = {k: v for k, v in loaded.items()} if isinstance(loaded, dict) else {}
            before = dict(sent)
            yield sent
            if sent != before:
                write_json_atomic(self.state_file, sent)

    def _deliver(self, alert: Alert, previous: float | None) -> None:
        if not self._delivered(alert):
            self._unclaim(alert.key, previous)

    def _delivered(self, alert: Alert) -> bool:
        request = {
            "urls": self.config.urls,
            "title": alert.title,
            "body": alert.body,
            "severity": alert.severity,
        }
        try:
            with self._lock:
                proc = subprocess.Popen(
                    module_argv("trainguard.alert_sender"),
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    env={**os.environ, "PYTHONWARNINGS": "ignore"},
                )
                self.sender_pids.add(proc.pid)
        except OSError as exc:
            log.error("alert %s: cannot start the sender: %s", alert.key, exc)
            return False
        try:
            stdout, stderr = proc.communicate(json.dumps(request), timeout=self.config.timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            log.error(
                "alert %s: no answer from its targets within %g s", alert.key, self.config.timeout
            )
            return False
        finally:
            with self._lock:
                self.sender_pids.discard(proc.pid)
        done = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
        try:
            outcome = json.loads(done.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
            log.error("alert %s: sender failed: %s", alert.key, tail)
            return False
        if outcome.get("ok"):
            log.info("alert %s sent to %d target(s)", alert.key, len(self.config.urls))
            return True
        errors = "; ".join(outcome.get("errors") or ["unknown error"])
        log.error("alert %s: not delivered: %s", alert.key, errors)
        return False
