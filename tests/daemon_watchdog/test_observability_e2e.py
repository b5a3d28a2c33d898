"""The watchdog towards the outside, end to end: systemd's notify socket, alerts to a real HTTP
receiver, and Prometheus /metrics, each around a real crash of the example daemon."""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.daemon_watchdog.test_supervisor_e2e import SCRIPT, Run, _restarted, _running_past, run
from tests.polling import wait_until
from tests.trainguard.test_alerts import Receiver, free_port

pytestmark = pytest.mark.e2e
__all__ = ["run"]  # the fixture, imported for its name


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    yield sock
    sock.close()


def receive_until(sock: socket.socket, wanted: str, timeout: float) -> list[tuple[float, str]]:
    """Every datagram (arrival time, text) up to and including the first holding `wanted`."""
    got: list[tuple[float, str]] = []
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no {wanted!r} within {timeout} s; got {got}")
        sock.settimeout(left)
        try:
            text = sock.recv(4096).decode()
        except TimeoutError:
            continue
        got.append((time.monotonic(), text))
        if wanted in text.splitlines():
            return got


def test_ready_watchdog_pings_at_half_the_interval_and_stopping(
    run: Run, notify_socket: socket.socket
) -> None:
    assert SCRIPT
    env = {**os.environ, "NOTIFY_SOCKET": notify_socket.getsockname(), "WATCHDOG_USEC": "600000"}
    out = open(run.base / "watchdog.out", "ab")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen([SCRIPT, "run", "-c", str(run.config)], stdout=out, stderr=out, env=env)
    out.close()
    run.procs.append(proc)

    ready = receive_until(notify_socket, "READY=1", timeout=30)
    assert any("STATUS=STARTING: daemon pid" in text for _, text in ready)
    pings: list[float] = []
    start = time.monotonic()
    while time.monotonic() - start < 3.0:
        notify_socket.settimeout(max(0.01, 3.0 - (time.monotonic() - start)))
        try:
            if notify_socket.recv(4096) == b"WATCHDOG=1":
                pings.append(time.monotonic())
        except TimeoutError:
            break
    # WatchdogSec = 0.6 s: a ping every 0.3 s, so about 10 in 3 s (a busy CI box may lose a few).
    assert 6 <= len(pings) <= 12, pings
    assert max(b - a for a, b in itertools.pairwise(pings)) < 0.6

    proc.send_signal(signal.SIGTERM)
    receive_until(notify_socket, "STOPPING=1", timeout=30)
    assert proc.wait(30) == 0


def test_a_crash_alerts_once_and_a_repeat_within_the_cooldown_does_not(run: Run) -> None:
    receiver = Receiver()
    try:
        with open(run.config, "a") as fh:
            fh.write(f'\n[alerts]\nurls = ["{receiver.url}"]\ncooldown = 600\n')
        run.start()
        run.wait_for(_running_past(15), "training past step 15")
        os.kill(run.status()["daemon_pid"], signal.SIGKILL)
        run.wait_for(_restarted(1), "the first restart")
        wait_until(lambda: receiver.posts, timeout=30, message="the crash alert")
        assert receiver.posts[0]["title"].endswith(": unknown")
        assert "suggestion:" in receiver.posts[0]["message"]

        run.wait_for(_running_past(5), "training again")
        os.kill(run.status()["daemon_pid"], signal.SIGKILL)
        run.wait_for(_restarted(2), "the second restart")
        log = run.base / "logs" / "watchdog.log"
        wait_until(
            lambda: "alert crash:unknown not sent: an identical one" in log.read_text(),
            message="the repeat to be suppressed",
        )
        assert len(receiver.posts) == 1
    finally:
        receiver.server.shutdown()
        receiver.server.server_close()


def scrape(port: int) -> dict[str, dict[str, float]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    found: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            found.setdefault(sample.name, {})[key] = sample.value
    return found


def test_metrics_parse_and_the_restart_counter_moves(run: Run) -> None:
    port = free_port()
    with open(run.config, "a") as fh:
        fh.write(f'\n[metrics]\nlisten = "127.0.0.1:{port}"\n')
    run.start()
    run.wait_for(_running_past(15), "training past step 15")
    before = wait_until(lambda: _try_scrape(port), message="/metrics up")
    assert before["trainguard_watchdog_state"]["state=RUNNING"] == 1
    # there from the start, at 0 for every category, so the first restart is a visible rise
    assert set(before["trainguard_watchdog_restarts_total"].values()) == {0.0}
    assert "category=host_oom" in before["trainguard_watchdog_restarts_total"]
    assert before["trainguard_daemon_rss_bytes"][""] > 1_000_000

    os.kill(run.status()["daemon_pid"], signal.SIGKILL)
    run.wait_for(_restarted(1), "one restart")
    after = scrape(port)
    assert after["trainguard_watchdog_restarts_total"]["category=unknown"] == 1
    assert after["trainguard_progress_step"][""] >= 1
    assert after["trainguard_checkpoints"][""] >= 1


def _try_scrape(port: int) -> dict[str, dict[str, float]] | None:
    try:
        metrics = scrape(port)
    except OSError:
        return None
    return metrics if "trainguard_daemon_rss_bytes" in metrics else None


def test_a_hang_alert_is_delivered_though_the_hung_tree_is_killed(run: Run) -> None:
    """The alert's sender is a child of the watchdog, like the orphans it kills: it must live."""
    receiver = Receiver()
    try:
        run.configure(command_extra=["--fault", "hang@12"])
        with open(run.config, "a") as fh:
            fh.write(f'\n[alerts]\nurls = ["{receiver.url}"]\n')
        run.start()
        run.wait_for(_restarted(1), "a restart after the hang", timeout=60)
        wait_until(lambda: receiver.posts, timeout=30, message="the hang alert")
        assert receiver.posts[0]["title"].startswith("training hung on ")
        assert "no progress for" in receiver.posts[0]["message"]
        log = (run.base / "logs" / "watchdog.log").read_text()
        assert "alert_sender" not in log  # never taken for an orphan and killed
    finally:
        receiver.server.shutdown()
        receiver.server.server_close()
