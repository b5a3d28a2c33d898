"""What `crash-detector` on a named log loads at start-up (#19: its start-up is the whole run).

Behaviour, not timing: the modules a run imports, read from the installed console script under
`PYTHONPROFILEIMPORTTIME` (Python's `-X importtime`). The timings are in bench/ and
docs/benchmarks.md.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = shutil.which("crash-detector", path=str(Path(sys.executable).parent))
OOM_LOG = "".join(f"step {i} loss 0.5\n" for i in range(40)) + (
    "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB.\n"
)
# Built or imported for nothing on this path: the config models (and pydantic, which validates
# them, and the bounds they name), the crash history (kept only with a config), and rich.
NOT_ON_THE_QUICK_PATH = (
    "pydantic",
    "pydantic_core",
    "annotated_types",
    "rich",
    "trainguard.config",
    "trainguard.workspace",
    "crash_detector.history",
)
_IMPORTED = re.compile(r"^import time:\s*\d+ \|\s*\d+ \|\s*(\S+)\s*$", re.MULTILINE)


def _imports(*args: str, cwd: Path, env: dict[str, str] | None = None) -> tuple[int, set[str]]:
    assert SCRIPT, "crash-detector console script is not installed in this venv"
    environ = {**os.environ, **(env or {}), "PYTHONPROFILEIMPORTTIME": "1"}
    done = subprocess.run(
        [SCRIPT, *args], capture_output=True, text=True, timeout=60, cwd=cwd, env=environ
    )
    assert "Traceback" not in done.stderr, done.stderr
    return done.returncode, set(_IMPORTED.findall(done.stderr))


def _unwanted(modules: set[str]) -> list[str]:
    return sorted(
        m for m in modules if any(m == n or m.startswith(n + ".") for n in NOT_ON_THE_QUICK_PATH)
    )


@pytest.mark.parametrize("output", [["--json"], ["--quiet"], []], ids=["json", "quiet", "text"])
def test_a_named_log_without_a_config_imports_no_config_models_history_or_rich(
    tmp_path: Path, output: list[str]
) -> None:
    (tmp_path / "t.log").write_text(OOM_LOG)
    # The text report goes to a pipe here: plain text, which needs no rich.
    code, modules = _imports("--last-n-lines", "10", "t.log", *output, cwd=tmp_path)
    assert code == 1
    assert "crash_detector.cli" in modules  # the probe works
    assert _unwanted(modules) == []


def test_a_styled_report_takes_rich_styles_without_its_console(tmp_path: Path) -> None:
    (tmp_path / "t.log").write_text(OOM_LOG)
    # FORCE_COLOR: styled as on a terminal (rich's own switch).
    code, modules = _imports("--last-n-lines", "10", "t.log", cwd=tmp_path,
                             env={"FORCE_COLOR": "1"})  # fmt: skip
    assert code == 1
    assert "rich.style" in modules  # the probe works: it was styled
    assert not any(m == "rich.console" or m.startswith("rich.console.") for m in modules)


def test_with_a_config_the_workspace_and_its_history_are_loaded(tmp_path: Path) -> None:
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "t.log").write_text(OOM_LOG)
    (tmp_path / "trainguard.toml").write_text("[crash_detector]\nlogs = ['logs/*.log']\n")
    code, modules = _imports("--json", cwd=tmp_path)
    assert code == 1
    assert {"pydantic", "trainguard.config", "crash_detector.history"} <= modules
    assert (tmp_path / ".crash_history.jsonl").is_file()


def test_an_override_in_the_environment_is_still_checked_when_a_log_is_named(
    tmp_path: Path,
) -> None:
    (tmp_path / "t.log").write_text(OOM_LOG)
    assert SCRIPT
    done = subprocess.run(
        [SCRIPT, "t.log", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={**os.environ, "TRAINGUARD_WATCHDOG__MAX_RESTARTS": "-1"},
    )
    assert done.returncode == 78, done.stdout + done.stderr
    assert "watchdog.max_restarts: must be >= 0" in done.stderr
