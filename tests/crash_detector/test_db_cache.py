"""The compiled-rules cache: where it lives, and filling it from a process of its own."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from crash_detector import db_cache
from crash_detector.rules import load_rules
from crash_detector.scanner import NotCached, Scanner, hyperscan

needs_hyperscan = pytest.mark.skipif(hyperscan is None, reason="hyperscan not installed")


def _fill_cache() -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "crash_detector.db_cache"]
    return subprocess.run(command, capture_output=True, text=True, check=False)


def _only_home(monkeypatch: pytest.MonkeyPatch, home: Path | str) -> None:
    monkeypatch.delenv("CACHE_DIRECTORY", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(home))


def test_systemds_cache_directory_comes_first_then_xdg_then_home(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _only_home(monkeypatch, "/home/ml")
    assert db_cache.cache_dirs() == [Path("/home/ml/.cache/trainguard")]
    monkeypatch.setenv("XDG_CACHE_HOME", "/fast/cache")
    assert db_cache.cache_dirs() == [Path("/fast/cache/trainguard")]
    monkeypatch.setenv("CACHE_DIRECTORY", "/var/cache/trainguard")
    assert db_cache.cache_dirs() == [Path("/var/cache/trainguard"), Path("/fast/cache/trainguard")]
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")  # ignored, as the spec says
    monkeypatch.setenv("HOME", "")
    assert db_cache.cache_dirs() == [Path("/var/cache/trainguard")]


@needs_hyperscan
def test_a_scanner_that_may_not_compile_says_the_cache_lacks_a_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _only_home(monkeypatch, tmp_path / "empty-home")
    with pytest.raises(NotCached):
        Scanner(load_rules(), may_compile=False)
    assert not (tmp_path / "empty-home").exists()  # and it wrote nothing


@needs_hyperscan
def test_the_cache_filler_stores_every_database_the_bundled_catalog_needs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _only_home(monkeypatch, tmp_path / "home")
    done = _fill_cache()
    assert done.returncode == 0, done.stderr
    stored = sorted((tmp_path / "home" / ".cache" / "trainguard").glob("hyperscan-*.db"))
    assert len(stored) == 3  # rules, ignores, progress: Hyperscan accepts every bundled pattern
    scanner = Scanner(load_rules(), may_compile=False)
    assert scanner.engine == "hyperscan"


@needs_hyperscan
def test_the_cache_filler_says_in_one_line_when_no_folder_can_take_the_databases(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "afile").write_text("")
    _only_home(monkeypatch, tmp_path / "afile")  # ~/.cache cannot be made below a file
    done = _fill_cache()
    assert done.returncode == 1
    assert done.stderr.startswith("cannot store compiled rule databases (")
    assert len(done.stderr.splitlines()) == 1 and "Traceback" not in done.stderr
