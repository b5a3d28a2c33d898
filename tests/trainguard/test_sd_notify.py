"""The notify protocol against a real unix datagram socket standing in for systemd."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from trainguard.sd_notify import Notifier


@pytest.fixture
def systemd_socket(tmp_path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.settimeout(5)
    yield sock
    sock.close()


def test_messages_arrive_as_datagrams(systemd_socket: socket.socket) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": systemd_socket.getsockname()})
    assert notifier.ready("RUNNING: daemon pid 42")
    assert notifier.ping()
    assert notifier.stopping()
    got = [systemd_socket.recv(4096).decode() for _ in range(3)]
    assert got == ["READY=1\nSTATUS=RUNNING: daemon pid 42", "WATCHDOG=1", "STOPPING=1"]
    notifier.close()


def test_abstract_namespace_address(tmp_path: Path) -> None:
    name = f"trainguard-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(5)
    try:
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).ready()
        assert sock.recv(100) == b"READY=1"
    finally:
        sock.close()


def test_ping_interval_is_half_of_watchdog_sec_and_only_for_the_watched_pid() -> None:
    env = {"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "60000000"}
    assert Notifier(env).ping_interval == 30.0
    assert Notifier({**env, "WATCHDOG_PID": str(os.getpid())}).ping_interval == 30.0
    assert Notifier({**env, "WATCHDOG_PID": str(os.getpid() + 1)}).ping_interval is None
    assert Notifier({"WATCHDOG_USEC": "60000000"}).ping_interval is None


def test_outside_systemd_everything_is_a_quiet_no_op(tmp_path: Path) -> None:
    assert not Notifier({}).ready()
    gone = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})
    assert gone.enabled and not gone.ping()  # a vanished socket is not an error
