"""deploy/: install.sh stages an installation, changes nothing on a second run or a dry run,
and the unit passes `systemd-analyze verify`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
INSTALL = REPO / "deploy" / "install.sh"
UNIT = REPO / "deploy" / "trainguard-watchdog.service"


def snapshot(root: Path) -> dict[str, bytes | str]:
    found: dict[str, bytes | str] = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(dirpath, name)
            rel = str(path.relative_to(root))
            if path.is_symlink():
                found[rel] = f"-> {os.readlink(path)}"
            elif path.is_file():
                found[rel] = path.read_bytes()
            else:
                found[rel] = "dir"
    return found


@pytest.fixture
def staging(tmp_path: Path) -> Path:
    """A root with the venv already in place (the project's own), as `--skip-venv` expects."""
    root = tmp_path / "root"
    (root / "opt" / "trainguard").mkdir(parents=True)
    (root / "opt" / "trainguard" / "venv").symlink_to(Path(sys.executable).parents[1])
    return root


def install(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(INSTALL), "--root", str(root), "--skip-venv", "--user", "alice", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_dry_run_changes_nothing_and_shows_every_step(staging: Path) -> None:
    before = snapshot(staging)
    done = install(staging, "--dry-run")
    assert done.returncode == 0, done.stderr
    assert snapshot(staging) == before
    assert "daemon-watchdog init" in done.stdout
    assert "etc/systemd/system/trainguard-watchdog.service" in done.stdout
    assert "etc/cron.d/trainguard" in done.stdout


def test_install_is_idempotent_and_never_overwrites_the_config(staging: Path) -> None:
    first = install(staging)
    assert first.returncode == 0, first.stderr
    config = staging / "etc" / "trainguard" / "trainguard.toml"
    assert 'base_dir = "/srv/trainguard/run1"' in config.read_text()
    assert (staging / "srv" / "trainguard" / "run1" / "config.json").is_file()
    unit = (staging / "etc" / "systemd" / "system" / "trainguard-watchdog.service").read_text()
    assert "User=alice\n" in unit and "KillMode=process\n" in unit
    cron = (staging / "etc" / "cron.d" / "trainguard").read_text()
    assert cron.count(" alice  /opt/trainguard/venv/bin/") == 3
    assert (
        "\nCACHE_DIRECTORY=/var/cache/trainguard\n" in cron
        and "CacheDirectory=trainguard\n" in unit
    )
    assert (staging / "var" / "cache" / "trainguard").is_dir()
    # The hourly health-check's --prometheus folder exists, so the cron job can write there.
    assert (staging / "var" / "lib" / "node_exporter" / "textfile_collector").is_dir()

    config.write_text(config.read_text() + "# edited by the operator\n")
    before = snapshot(staging)
    second = install(staging)
    assert second.returncode == 0, second.stderr
    assert snapshot(staging) == before
    assert "(exists, kept)" in second.stdout and "(unchanged)" in second.stdout


def test_unknown_option_is_refused(staging: Path) -> None:
    done = install(staging, "--bogus")
    assert done.returncode == 2
    assert "unknown option: --bogus" in done.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    # verify checks that ExecStart's program exists: point it at this checkout's venv.
    venv = str(Path(sys.executable).parent.parent)
    unit = tmp_path / "trainguard-watchdog.service"
    unit.write_text(UNIT.read_text().replace("/opt/trainguard/venv", venv))
    done = subprocess.run(
        ["systemd-analyze", "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "Unknown key" not in done.stderr and "Unknown" not in done.stderr, done.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["--workspace", "/srv/R&D/run1"],
        ["--workspace", '/x";touch /tmp/trainguard-pwned;#|e;#'],
        ["--workspace", "relative/run1"],
        ["--workspace", "/srv/../etc"],
        ["--user", "a;b"],
    ],
)
def test_unsafe_workspace_or_user_is_refused_before_anything_runs(
    staging: Path, args: list[str]
) -> None:
    before = snapshot(staging)
    done = install(staging, *args)
    assert done.returncode == 2
    assert done.stderr.startswith("install.sh: --")
    assert snapshot(staging) == before
    assert not Path("/tmp/trainguard-pwned").exists()
