"""A fresh example workspace per test, and health-check run in-process against it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from daemon_watchdog.workspace_init import init_workspace
from edge_cases.toml_keys import set_toml_key
from health_check.cli import main
from tests.polling import wait_until
from trainguard.atomicio import write_json_atomic
from trainguard.procs import ProcessIdentity, identify

CHILDREN = Path(__file__).resolve().parents[1] / "children"


@dataclass
class Run:
    code: int
    out: str
    err: str

    @property
    def report(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.out)
        return data

    def check(self, name: str) -> dict[str, Any]:
        return next(c for c in self.report["checks"] if c["name"] == name)


@dataclass
class Example:
    base: Path
    config: Path

    def record(self, **state: object) -> None:
        """Write the watchdog's state file as if a watchdog had recorded `state`."""
        write_json_atomic(self.base / "status" / "watchdog.json", {"state": "RUNNING", **state})

    def health(self, capsys: pytest.CaptureFixture[str], *args: str, gpu: bool = False) -> Run:
        """`health-check -c CONFIG ARGS`; the gpu check is skipped unless asked for (it has
        its own tests, and a GPU machine's real state must not colour the others)."""
        argv = ["-c", str(self.config), *args]
        if not gpu and "--only" not in args:
            argv += ["--skip", "gpu"]
        capsys.readouterr()
        code = main(argv)
        captured = capsys.readouterr()
        return Run(code, captured.out, captured.err)


@pytest.fixture
def idle(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], ProcessIdentity]]:
    """A real idle process (tests/children/sleeper.py) and its identity; killed afterwards."""
    ready = tmp_path / "idle-ready"
    proc = subprocess.Popen([sys.executable, str(CHILDREN / "sleeper.py"), str(ready)])
    try:
        wait_until(ready.exists, message="the idle process")
        identity = identify(proc.pid)
        assert identity is not None
        yield proc, identity
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture
def example(tmp_path: Path) -> Example:
    base = tmp_path / "ws"
    config = init_workspace(base, job={"total_steps": 40, "save_steps": 10, "step_seconds": 0.01})
    scope_orphan_patterns(Path(config), tmp_path)
    return Example(base, Path(config))


def scope_orphan_patterns(config: Path, folder: Path) -> None:
    """Make the config's orphan_patterns match only a `train.py` under `folder`: a test must not
    see the machine's own training, nor another test run's."""
    mine = re.escape(f"{folder}/") + r".*train\.py"
    config.write_text(set_toml_key(config.read_text(), "watchdog", "orphan_patterns", [mine]))
