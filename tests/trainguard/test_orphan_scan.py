"""Which parent counts as a watchdog: its workers re-parented to it are that run's business."""

from __future__ import annotations

import pytest

from trainguard.orphan_scan import is_watchdog_cmdline


@pytest.mark.parametrize(
    "argv",
    [
        ["/opt/trainguard/venv/bin/python3", "/opt/trainguard/venv/bin/daemon-watchdog", "run"],
        ["/opt/trainguard/venv/bin/daemon-watchdog", "run", "-c", "/etc/trainguard.toml"],
        ["/usr/bin/python3", "-m", "daemon_watchdog", "run", "-c", "ws/trainguard.toml"],
        ["python3", "-m", "daemon_watchdog.cli", "run"],
    ],
)
def test_a_watchdog_is_recognised_by_its_command_line(argv: list[str]) -> None:
    assert is_watchdog_cmdline(argv)


@pytest.mark.parametrize(
    "argv",
    [
        ["python3", "train.py", "--config", "daemon-watchdog"],  # an argument, not the program
        ["python3", "-m", "daemon_watchdog_tools"],
        ["python3", "-c", "import daemon_watchdog", "-m", "x"],
        ["bash", "-c", "daemon-watchdog run"],
        [],
    ],
)
def test_anything_else_is_not_a_watchdog(argv: list[str]) -> None:
    assert not is_watchdog_cmdline(argv)
