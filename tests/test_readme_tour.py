"""The README's 5-minute tour, typed as written (in a temp folder instead of /tmp/run1): every
command works, in order, on a fresh workspace. `make demo` and the venv activation are the
Makefile's own (tested by CI's `make demo`); `edge-cases` runs with --dry-run here (the whole
suite has its own tests)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.polling import wait_until

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def tour_commands() -> list[str]:
    readme = (REPO / "README.md").read_text()
    block = re.search(r"## A 5-minute tour\n\n```sh\n(.*?)```", readme, re.S)
    assert block, "the README has no tour"
    commands = []
    for line in block.group(1).splitlines():
        command = re.sub(r"\s+# .*$", "", line).strip()
        if command:
            commands.append(command)
    return commands


@pytest.mark.e2e
def test_the_readme_tour_works_as_typed(tmp_path: Path) -> None:
    commands = tour_commands()
    assert commands[:2] == ["make demo", ". .venv/bin/activate"]
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    run1 = tmp_path / "run1"
    config = f"-c {run1}/trainguard.toml"

    def sh(command: str) -> subprocess.CompletedProcess[str]:
        command = command.replace("/tmp/run1", str(run1))
        if command == "edge-cases":
            command = "edge-cases --dry-run"
        return subprocess.run(["bash", "-c", command], capture_output=True, text=True,
                              timeout=120, env=env, cwd=tmp_path, check=False)  # fmt: skip

    try:
        expected = {"init": 0, "config": 0, "start": 0, "kill": 0, "cat": 0, "stop": 0}
        seen_crash = False
        for command in commands[2:]:
            word = (
                command.split()[0]
                if not command.startswith("daemon-watchdog")
                else (command.split()[1])
            )
            if command.startswith("kill -9"):
                word = "kill"
            done = sh(command)
            said = done.stdout + done.stderr
            if word == "status" and seen_crash:
                # Typed right after the kill: the watchdog records the crash at once, yet a
                # script is faster than a person: ask again until it is there.
                def crash_shown(typed: str = command) -> str | None:
                    out = sh(typed).stdout
                    return out if "last crash:" in out else None

                shown = wait_until(crash_shown, timeout=60, message="status to show the crash")
                assert "SIGKILL" in shown
                continue
            if word == "status":
                assert done.returncode in (0, 1), said  # RUNNING, or still STARTING
            elif word == "crash-detector":
                # The log says nothing (a SIGKILL leaves no words); the watchdog's record does.
                assert done.returncode == 0, said
                assert "recorded by the watchdog" in said and "SIGKILL" in said, said
            elif word == "health-check":
                assert done.returncode in (0, 1), said  # OK, or a WARNING on a fresh box
                assert done.stdout.startswith("HEALTH ")
            elif word == "edge-cases":
                assert done.returncode == 0, said
            else:
                assert done.returncode == expected[word], f"{command}: {said}"
            if word == "kill":
                seen_crash = True
            if word == "cat":
                assert '"category"' in done.stdout
        assert seen_crash
    finally:
        sh(f"daemon-watchdog stop {config}")
