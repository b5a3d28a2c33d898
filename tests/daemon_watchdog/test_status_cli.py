"""`daemon-watchdog status` and `config` as an operator reads them: words, not `None`; exit 4
for a finished run, 2 for a failed one; TOML that TOML parsers read back; `-c` anywhere."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from trainguard.config import config_as_dict, load_config
from trainguard.procs import identify
from trainguard.watchdog_status import WatchdogStatus
from trainguard.workspace import Workspace

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

SCRIPT = shutil.which("daemon-watchdog", path=str(Path(sys.executable).parent))


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    assert SCRIPT
    return subprocess.run([SCRIPT, *args], capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "trainguard.toml"
    path.write_text(
        '[watchdog.phase_timeouts]\neval = 60.0\n[queue.nodes."rig"]\nexcluded_gpus = [1]\n'
    )
    return path


def write_state(config: Path, **fields: object) -> None:
    ws = Workspace(load_config(config, env={}))
    me = identify(os.getpid())  # a live "watchdog": the state is not stale
    WatchdogStatus(watchdog_pid=os.getpid(), watchdog=me, **fields).write(ws.state_file)  # type: ignore[arg-type]


def test_backoff_says_when_the_restart_comes_not_none(config: Path) -> None:
    due = datetime.now(timezone.utc) + timedelta(seconds=300)
    write_state(
        config,
        state="BACKOFF",
        state_reason="daemon crashed (exit 1: cuda_oom); restarting in 300 s",
        restart_at=due.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
    )
    shown = cli("status", "-c", str(config))
    assert shown.returncode == 1, shown.stderr
    assert "None" not in shown.stdout
    assert (
        "state:    BACKOFF: daemon crashed (exit 1: cuda_oom); restarting in 300 s" in shown.stdout
    )
    daemon = next(line for line in shown.stdout.splitlines() if line.startswith("daemon:"))
    assert daemon.startswith("daemon:   none running: backing off, restart in ")
    seconds = int(daemon.split("restart in ")[1].split(" s")[0])
    assert 0 < seconds <= 300


@pytest.mark.parametrize(
    ("state", "code", "words"),
    [
        ("STOPPED", 4, "none running: finished or stopped (no restart)"),
        ("FATAL", 2, "none running: FATAL, no more restarts"),
    ],
)
def test_a_finished_run_exits_4_and_a_failed_one_2(
    config: Path, state: str, code: int, words: str
) -> None:
    write_state(config, state=state, state_reason="daemon finished (exit 0)")
    shown = cli("status", "-c", str(config))
    assert shown.returncode == code
    assert f"daemon:   {words}" in shown.stdout and "None" not in shown.stdout


def test_a_running_daemon_is_named_by_pid_and_start(config: Path) -> None:
    write_state(
        config, state="RUNNING", daemon_pid=4242, daemon_started_at="2026-12-05T10:00:00.000Z"
    )
    shown = cli("status", "-c", str(config))
    assert shown.returncode == 0
    assert "daemon:   pid 4242 since 2026-12-05T10:00:00.000Z" in shown.stdout


def test_c_goes_before_or_after_the_subcommand(config: Path) -> None:
    write_state(config, state="STOPPED")
    assert cli("-c", str(config), "status").returncode == 4
    assert cli("status", "-c", str(config)).returncode == 4
    before = cli("-c", str(config), "config", "--json")
    assert before.returncode == 0, before.stderr
    assert json.loads(before.stdout)["queue"]["nodes"] == {"rig": {"excluded_gpus": [1]}}


def test_config_prints_toml_that_reads_back_as_the_same_config(config: Path) -> None:
    shown = cli("config", "-c", str(config))
    assert shown.returncode == 0, shown.stderr
    parsed = tomllib.loads(shown.stdout)
    assert parsed == config_as_dict(load_config(config, env={}))
    assert parsed["watchdog"]["phase_timeouts"] == {"eval": 60.0}
    again = config.with_name("again.toml")
    again.write_text(shown.stdout)
    assert load_config(again, env={}) == load_config(config, env={})


def test_config_masks_alert_urls_and_init_keeps_the_config_private(tmp_path: Path) -> None:
    from daemon_watchdog.workspace_init import init_workspace

    config = init_workspace(tmp_path / "run1")
    assert config.stat().st_mode & 0o777 == 0o600
    config.write_text(config.read_text() + '\n[alerts]\nurls = ["slack://T000/B000/tok3n"]\n')
    for args in ([], ["--json"]):
        shown = cli("config", "-c", str(config), *args)
        assert shown.returncode == 0, shown.stderr
        assert "tok3n" not in shown.stdout and "slack://***" in shown.stdout
