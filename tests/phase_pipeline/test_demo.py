"""`phase-pipeline demo` for real: a phase fails once, the printed command resumes the run."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from phase_pipeline import demo


@pytest.mark.e2e
def test_the_demo_resumes_with_the_printed_command_and_skips_the_completed_phases() -> None:
    done = subprocess.run([sys.executable, "-m", "phase_pipeline", "demo"], capture_output=True,
                          text=True, timeout=100, check=False)  # fmt: skip
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert "1. phase-pipeline run PIPELINE.toml: exit 1" in out
    assert "FAILURE RECOVERY INSTRUCTIONS" in out
    assert "Phase linear_probe failed [cuda_oom]: exited with code 1: torch.cuda." in out
    resume = re.search(r"^Fix the cause, then resume with:\n  (.+)$", out, re.M)
    assert resume, out
    command = resume.group(1)
    assert re.fullmatch(r"phase-pipeline run PIPELINE.toml --resume runs/probe-demo_\S+/"
                        r"\.experiment_state", command), command  # fmt: skip
    assert f"   {command}: exit 0" in out  # the very command it printed was run
    for phase, runs in [("training", "1 time"), ("statistical_eval", "1 time"),
                        ("linear_probe", "2 times"), ("aggregate", "1 time")]:  # fmt: skip
        assert re.search(rf"^   completed  {phase} +ran {runs}$", out, re.M), out
    assert not re.search(r"^  NO ", out, re.M) and out.rstrip().endswith("demo: OK")
    folder = re.search(r"^phase-pipeline demo: 4 phases in (\S+)$", out, re.M)
    assert folder and not Path(folder.group(1)).exists()  # removed without --keep


@pytest.mark.e2e
def test_the_demo_fails_when_the_probe_never_runs_out_of_memory(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(demo, "PHASE_SCRIPT", demo.PHASE_SCRIPT.replace("> 32", "> 1024"))
    assert demo.run_demo() == 1
    out = capsys.readouterr().out
    assert "  NO   the recovery block names the CUDA OOM and a resume command" in out, out
    assert out.rstrip().endswith("demo: FAILED")
