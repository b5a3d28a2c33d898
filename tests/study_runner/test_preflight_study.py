"""STUDY.toml's [preflight]: each experiment's inputs checked before it starts (grid
placeholders filled), a refused one failed with the line that says why, the others run."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

SCRIPT = shutil.which("study-runner", path=str(Path(sys.executable).parent))

STUDY = """
name = "evals"
command = ["{python}", "eval.py", "{model}"]
name_template = "{model}"

[grid]
model = ["small", "large"]

[preflight]
inputs = ["data/{model}.jsonl"]
"""
EVAL = "import pathlib, sys\npathlib.Path(f'ran-{sys.argv[1]}').touch()\n"


def cli(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert SCRIPT
    return subprocess.run([SCRIPT, *args, "-c", "trainguard.toml"], cwd=folder,
                          capture_output=True, text=True, timeout=120, check=False)  # fmt: skip


def test_an_experiment_whose_input_is_missing_is_refused_and_the_rest_run(
    tmp_path: Path,
) -> None:
    (tmp_path / "trainguard.toml").write_text("[health]\ndisk_min_free_gb = 0\n")
    (tmp_path / "STUDY.toml").write_text(STUDY)
    (tmp_path / "eval.py").write_text(EVAL)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "small.jsonl").write_text("{}\n")
    done = cli(tmp_path, "run", "STUDY.toml")
    assert done.returncode == 1, done.stdout + done.stderr
    assert (tmp_path / "ran-small").exists() and not (tmp_path / "ran-large").exists()
    missing = tmp_path / "data" / "large.jsonl"
    assert f"preflight refused: inputs: {missing}: missing: create it" in done.stdout
    status = cli(tmp_path, "status", "evals", "--json")
    experiments = {e["name"]: e for e in json.loads(status.stdout)["experiments"]}
    assert experiments["small"]["phase"] == "completed"
    assert experiments["large"]["phase"] == "failed"
    assert experiments["large"]["error"].startswith(f"inputs: {missing}: missing")
    state = json.loads((tmp_path / "evals" / "large" / "state.json").read_text())
    assert state["phase"] == "failed" and f"{missing}: missing" in state["error"]

    missing.write_text("{}\n")
    resumed = cli(tmp_path, "resume", "evals")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert (tmp_path / "ran-large").exists()


def test_an_unknown_placeholder_or_key_in_preflight_is_exit_78(tmp_path: Path) -> None:
    (tmp_path / "trainguard.toml").write_text("")
    (tmp_path / "STUDY.toml").write_text(
        STUDY.replace("data/{model}.jsonl", "data/{size}.jsonl") + "ramdsk = []\n"
    )
    done = cli(tmp_path, "run", "STUDY.toml")
    assert done.returncode == 78, done.stdout + done.stderr
    assert "preflight.inputs[0]: unknown placeholder {size}" in done.stderr
    assert "preflight.ramdsk: unknown key" in done.stderr
