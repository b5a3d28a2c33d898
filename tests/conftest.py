"""Guards every test: it runs inside its tmp dir, writes nothing outside it, leaves no process."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parent.parent
_IGNORED = {
    ".venv",
    ".venv-trainers",
    ".git",
    "__pycache__",
    ".mypy_cache",
    ".pytest_cache",
    ".ruff_cache",
    ".hypothesis",
}
PR_SET_CHILD_SUBREAPER = 36


def pytest_configure(config: pytest.Config) -> None:
    # Orphans of the processes a test starts are re-parented to pytest instead of init, so the
    # process guard below sees every one of them, however it escaped.
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def _repo_files() -> set[str]:
    found: set[str] = set()
    for root, dirs, files in os.walk(REPO):
        dirs[:] = [
            d
            for d in dirs
            if d not in _IGNORED and not d.endswith(".egg-info") and not d.startswith(".venv")
        ]
        rel = os.path.relpath(root, REPO)
        found.update(os.path.join(rel, f) for f in files)
    return found


@pytest.fixture(scope="session")
def _compiled_rules_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("compiled-rules")


@pytest.fixture(autouse=True)
def _stay_in_tmp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, _compiled_rules_cache: Path
) -> Iterator[None]:
    """Run each test in its tmp dir with HOME and TMPDIR there; fail if it wrote into the repo.

    Compiled rule databases are shared by the whole session through systemd's cache variable
    (compiling takes ~0.5 s, in every watchdog of a test that crashes); tests of the cache
    itself unset it."""
    before = _repo_files()
    monkeypatch.setenv("CACHE_DIRECTORY", str(_compiled_rules_cache))
    home = tmp_path / "home"
    scratch = tmp_path / "tmp"
    home.mkdir()
    scratch.mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("TMPDIR", str(scratch))
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    for name in list(os.environ):
        if name.startswith("TRAINGUARD_"):
            monkeypatch.delenv(name)
    yield
    added = _repo_files() - before
    assert not added, f"test wrote into the repository: {sorted(added)}"


@pytest.fixture(autouse=True)
def _no_process_left() -> Iterator[None]:
    """Kill and report any process a test left behind (children, grandchildren, orphans)."""
    yield
    me = psutil.Process()
    leftovers = [p for p in me.children(recursive=True) if _alive(p)]
    for proc in leftovers:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(signal.SIGKILL)
    psutil.wait_procs(leftovers, timeout=5)
    _reap_zombies()
    assert not leftovers, f"test left processes running: {[_describe(p) for p in leftovers]}"


def _alive(proc: psutil.Process) -> bool:
    try:
        return bool(proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def _describe(proc: psutil.Process) -> str:
    try:
        return f"{proc.pid} {' '.join(proc.cmdline())[:120]}"
    except psutil.Error:
        return str(proc.pid)


def _reap_zombies() -> None:
    # Orphans re-parented to us are nobody's Popen: reap them so they do not pile up.
    for child in psutil.Process().children():
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                os.waitpid(child.pid, os.WNOHANG)
        except (psutil.Error, ChildProcessError):
            pass


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A real 8 MiB tmpfs, unmounted afterwards; skipped where mounting is not allowed."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "small"
    mount.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
