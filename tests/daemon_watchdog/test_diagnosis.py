"""The watchdog loads the crash detector at start; compiling its rules is a child's job."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path
from typing import Any

import pytest

from crash_detector.classify import classify_text
from crash_detector.scanner import Scanner, hyperscan
from daemon_watchdog.diagnosis import load_scanner
from trainguard.python_child import module_argv

pytestmark = pytest.mark.skipif(hyperscan is None, reason="hyperscan not installed")
CUDA = "step 3\nRuntimeError: CUDA error: an illegal memory access was encountered\n"


@pytest.fixture
def children(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The commands the code under test runs, still run for real."""
    ran: list[list[str]] = []
    real_run = subprocess.run

    def run(command: list[str], **kwargs: Any) -> Any:
        ran.append(command)
        return real_run(command, **kwargs)

    monkeypatch.setattr(subprocess, "run", run)
    return ran


def _category(log: str, scanner: Scanner) -> str | None:
    primary = classify_text(log, scanner=scanner).primary
    return None if primary is None else primary.category


def _home(monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    monkeypatch.delenv("CACHE_DIRECTORY")
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(home))


def test_an_empty_cache_is_filled_by_a_child_and_then_loaded_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, children: list[list[str]]
) -> None:
    _home(monkeypatch, tmp_path / "home")
    scanner = load_scanner()
    assert children == [module_argv("crash_detector.db_cache")]
    assert len(list((tmp_path / "home" / ".cache" / "trainguard").glob("hyperscan-*.db"))) == 3
    assert _category(CUDA, scanner) == "cuda_error"
    children.clear()
    load_scanner()
    assert children == []  # the next watchdog finds them in the cache


def test_with_nowhere_to_keep_them_the_rules_are_compiled_here_with_a_warning(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    children: list[list[str]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    (tmp_path / "afile").write_text("")
    _home(monkeypatch, tmp_path / "afile")
    with caplog.at_level(logging.WARNING, logger="daemon_watchdog"):
        scanner = load_scanner()
    assert len(children) == 1
    assert "cannot store compiled rule databases" in caplog.text
    assert _category(CUDA, scanner) == "cuda_error"
