from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

SCRIPT = shutil.which("study-runner", path=str(Path(sys.executable).parent))


def test_the_demo_shows_a_study_finishing_despite_failures_and_a_forced_rerun() -> None:
    assert SCRIPT
    done = subprocess.run([SCRIPT, "demo"], capture_output=True, text=True, timeout=300,
                          check=False)  # fmt: skip
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert "1. study-runner run STUDY.toml: exit 1" in out
    assert "   6 completed, 2 failed" in out and "   8 completed, 0 failed" in out
    failed = "failed     qwen2.5-7b_squad_8bit  exited with code 1: RuntimeError: Error invalid"
    assert failed in out
    assert ("run again: llama3-8b_gsm8k_8bit, llama3-8b_squad_8bit, qwen2.5-7b_gsm8k_8bit, "
            "qwen2.5-7b_squad_8bit") in out  # fmt: skip
    assert "NO " not in out and out.rstrip().endswith("demo: OK")
