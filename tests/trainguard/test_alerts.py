"""Alerts reach a real local HTTP receiver through apprise's json:// target, once per cooldown."""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from trainguard.alerts import Alert, Alerter
from trainguard.config import AlertsSection


class Receiver:
    def __init__(self) -> None:
        self.posts: list[dict[str, Any]] = []
        received = self.posts

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                received.append(json.loads(self.rfile.read(length)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"json://127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.shutdown()
    r.server.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def crash(category: str = "cuda_oom") -> Alert:
    return Alert(
        "crash",
        f"crash:{category}",
        f"training crashed: {category}",
        "suggestion: lower the batch size",
    )


def test_a_crash_alert_is_delivered_once_within_the_cooldown(
    receiver: Receiver, tmp_path: Path
) -> None:
    alerter = Alerter(AlertsSection(urls=[receiver.url], cooldown=600), tmp_path / "alerts.json")
    first = alerter.send(crash())
    assert first is not None
    first.join(timeout=30)
    assert len(receiver.posts) == 1
    assert receiver.posts[0]["title"] == "training crashed: cuda_oom"
    assert "lower the batch size" in receiver.posts[0]["message"]

    assert alerter.send(crash()) is None  # identical, within the cooldown
    other = alerter.send(crash("nccl"))  # a different crash is news
    assert other is not None
    other.join(timeout=30)
    assert [p["title"] for p in receiver.posts] == [
        "training crashed: cuda_oom",
        "training crashed: nccl",
    ]


def test_the_cooldown_holds_across_processes(receiver: Receiver, tmp_path: Path) -> None:
    state = tmp_path / "alerts.json"
    config = AlertsSection(urls=[receiver.url], cooldown=600)
    sent = Alerter(config, state).send(crash())
    assert sent is not None
    sent.join(timeout=30)
    # A new Alerter (the next hourly health-check) reads the same state file.
    assert Alerter(config, state).send(crash()) is None
    again = Alerter(replace(config, cooldown=0), state).send(crash())
    assert again is not None
    again.join(timeout=30)
    assert len(receiver.posts) == 2


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_an_unreachable_target_is_logged_and_never_raises(tmp_path: Path) -> None:
    url = f"json://127.0.0.1:{free_port()}/"
    alerter = Alerter(AlertsSection(urls=[url], cooldown=0), tmp_path / "alerts.json")
    logger = logging.getLogger("trainguard.alerts")
    lines, level = Lines(), logger.level
    logger.addHandler(lines)  # not caplog: the watchdog's CLI may have stopped propagation
    logger.setLevel(logging.INFO)
    try:
        thread = alerter.send(crash())
        assert thread is not None
        thread.join(timeout=30)
    finally:
        logger.removeHandler(lines)
        logger.setLevel(level)
    assert not thread.is_alive()
    assert any("crash:cuda_oom: not delivered" in line for line in lines.lines), lines.lines


def test_no_urls_or_an_unwanted_kind_sends_nothing(receiver: Receiver, tmp_path: Path) -> None:
    assert Alerter(AlertsSection(), tmp_path / "a.json").send(crash()) is None
    only_fatal = AlertsSection(urls=[receiver.url], kinds=["fatal"])
    assert Alerter(only_fatal, tmp_path / "b.json").send(crash()) is None
    assert receiver.posts == []


def test_a_failed_delivery_does_not_silence_the_next_alert(tmp_path: Path) -> None:
    url = f"json://127.0.0.1:{free_port()}/"
    alerter = Alerter(AlertsSection(urls=[url], cooldown=600), tmp_path / "alerts.json")
    first = alerter.send(crash())
    assert first is not None
    first.join(timeout=30)
    again = alerter.send(crash())  # the first never arrived: this one is not a duplicate
    assert again is not None
    again.join(timeout=30)
