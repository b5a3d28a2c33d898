"""What every trainguard command does with a bad command line: a usage line and one error
line on stderr, exit 2 (health-check: 3, UNKNOWN to Nagios), and, under --json, the error as
JSON on stdout, so that a script reading stdout always gets JSON."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


@pytest.mark.parametrize(
    ("tool", "args", "code"),
    [
        ("daemon-watchdog", ["status", "--json", "--bogus"], 2),
        ("crash-detector", ["--json", "--bogus"], 2),
        ("health-check", ["--json", "--bogus"], 3),
        ("edge-cases", ["--json", "--bogus"], 2),
        ("task-queue", ["status", "--json", "--bogus"], 2),
        ("study-runner", ["status", "--json"], 2),  # its DIR is missing
        ("phase-pipeline", ["status", "--json"], 2),  # its STATE_FILE is missing
    ],
)
def test_bad_usage_under_json_is_json_on_stdout(tool: str, args: list[str], code: int) -> None:
    script = shutil.which(tool, path=str(BIN))
    assert script, f"{tool} is not installed in this venv"
    done = subprocess.run([script, *args], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == code, done.stderr
    printed = json.loads(done.stdout)
    assert printed["exit_code"] == code
    err = done.stderr.strip().splitlines()
    assert err[0].startswith("usage: ") and "Traceback" not in done.stderr
    assert err[-1] == f"{tool}: {printed['error']}"
    assert "--bogus" in printed["error"] or "required" in printed["error"]


def test_edge_cases_takes_several_names_after_one_test_flag() -> None:
    script = shutil.which("edge-cases", path=str(BIN))
    assert script
    done = subprocess.run(
        [script, "--dry-run", "--test", "daemon_sigkill", "disk_full"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "daemon_sigkill" in done.stdout and "disk_full" in done.stdout
    assert "config_corruption" not in done.stdout
