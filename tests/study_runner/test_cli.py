"""`study-runner` end to end: a 40-experiment study with injected faults, Ctrl+C, resume."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.polling import wait_until

SCRIPT = shutil.which("study-runner", path=str(Path(sys.executable).parent))

# One call of an experiment: noted in calls.txt when it completes (so a recomputation shows).
EXPERIMENT = """
import json, os, pathlib, sys, threading, time
WORK_SECONDS = 0.3  # with `slow`: each experiment computes this long, so Ctrl+C lands mid-study
model, dataset = sys.argv[1], sys.argv[2]
name = f"{model}_{dataset}"
here = pathlib.Path(os.environ["TRAINGUARD_EXPERIMENT_DIR"])
if pathlib.Path("slow").exists():
    time.sleep(WORK_SECONDS)
if model == "broken" and not pathlib.Path("fixed").exists():
    raise RuntimeError("Error invalid configuration argument at line 380 in file /src/csrc/ops.cu")
if name == "a_d3":
    os.kill(os.getpid(), 11)  # a native crash
if name == "b_d5":
    threading.Event().wait()  # hangs past its timeout, until it is killed
with open(here / "predictions.jsonl", "a") as fh:
    fh.write(json.dumps({"idx": 0, "prediction": name}) + "\\n")
with open("calls.txt", "a") as fh:
    fh.write(name + "\\n")
"""

STUDY = """
name = "faults"
command = ["{python}", "experiment.py", "{model}", "{dataset}"]
name_template = "{model}_{dataset}"
[grid]
model = ["a", "b", "c", "broken"]
dataset = ["d0", "d1", "d2", "d3", "d4", "d5", "d6", "d7", "d8", "d9"]
"""


class Study:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.out = folder / "faults"
        self.runners: list[subprocess.Popen[str]] = []

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        assert SCRIPT
        return subprocess.run([SCRIPT, *args, "-c", "trainguard.toml"], cwd=self.folder,
                              capture_output=True, text=True, timeout=120, check=False)  # fmt: skip

    def start(self, *args: str) -> subprocess.Popen[str]:
        assert SCRIPT
        runner = subprocess.Popen(
            [SCRIPT, *args, "-c", "trainguard.toml"], cwd=self.folder,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        self.runners.append(runner)
        return runner

    def status(self) -> dict[str, Any]:
        done = self.cli("status", str(self.out), "--json")
        assert done.returncode == 0, done.stderr
        result: dict[str, Any] = json.loads(done.stdout)
        return result

    def phases(self) -> dict[str, str]:
        return {e["name"]: e["phase"] for e in self.status()["experiments"]}

    def calls(self) -> Counter[str]:
        path = self.folder / "calls.txt"
        return Counter(path.read_text().split()) if path.exists() else Counter()


@pytest.fixture
def study(tmp_path: Path) -> Iterator[Study]:
    (tmp_path / "experiment.py").write_text(EXPERIMENT)
    (tmp_path / "STUDY.toml").write_text(STUDY)
    (tmp_path / "trainguard.toml").write_text("[queue]\nslots = 2\ntask_timeout = 2\n")
    s = Study(tmp_path)
    try:
        yield s
    finally:
        for runner in s.runners:
            if runner.poll() is None:
                runner.kill()
            if runner.stdout is not None and not runner.stdout.closed:
                runner.communicate()


def test_a_faulty_study_finishes_what_can_and_resume_fixes_the_rest_without_recomputing(
    study: Study,
) -> None:
    (study.folder / "slow").touch()  # so that Ctrl+C lands mid-study
    runner = study.start("run", "STUDY.toml")
    wait_until(lambda: sum(study.calls().values()) >= 6, timeout=60, message="a few done")
    runner.send_signal(signal.SIGINT)
    out, _ = runner.communicate(timeout=60)
    assert runner.returncode == 130, out
    phases = study.phases()
    assert "interrupted" in phases.values() and "pending" in phases.values(), phases
    assert "running" not in phases.values()
    completed_then = {n for n, p in phases.items() if p == "completed"}
    calls_then = study.calls()
    assert all(calls_then[n] == 1 for n in completed_then), calls_then
    (study.folder / "slow").unlink()

    done = study.cli("resume", str(study.out))
    assert done.returncode == 1, done.stdout + done.stderr  # some failed
    phases = study.phases()
    failed = sorted(n for n, p in phases.items() if p == "failed")
    assert failed == ["a_d3", "b_d5", *(f"broken_d{i}" for i in range(10))], phases
    assert sum(p == "completed" for p in phases.values()) == 40 - len(failed)
    calls = study.calls()
    # Nothing completed was computed again. (One stopped by Ctrl+C after its last line of
    # work, before its exit, is interrupted: it runs again, as it must.)
    assert all(calls[n] == 1 for n in completed_then), calls
    assert set(calls) == {n for n, p in phases.items() if p == "completed"}
    error_log = (study.out / "broken_d0" / "error.log").read_text()
    assert "Error invalid configuration argument at line 380" in error_log
    assert '"model": "broken"' in error_log and "Traceback (most recent call last)" in error_log
    assert "SIGSEGV" in (study.out / "a_d3" / "state.json").read_text()
    b_d5 = json.loads((study.out / "b_d5" / "state.json").read_text())
    assert b_d5["phase"] == "failed" and "timed out" in b_d5["error"]

    (study.folder / "fixed").touch()  # the broken model is fixed
    done = study.cli("resume", str(study.out))
    assert done.returncode == 1  # a_d3 and b_d5 still fail
    phases = study.phases()
    assert sorted(n for n, p in phases.items() if p == "failed") == ["a_d3", "b_d5"]
    again = study.calls() - calls
    assert again == Counter({f"broken_d{i}": 1 for i in range(10)}), again  # and nothing else


def test_completed_experiments_are_re_run_only_with_force_and_filter(study: Study) -> None:
    (study.folder / "fixed").touch()
    study.cli("run", "STUDY.toml")
    before = study.calls()
    plan = study.cli("run", "STUDY.toml", "--dry-run").stdout
    assert "skip c_d0  (completed)" in plan and "run  a_d3  (failed before)" in plan
    done = study.cli("run", "STUDY.toml", "--force", "--filter", "broken_*")
    assert done.returncode == 1  # a_d3, b_d5 fail again
    after = study.calls()
    assert {n: after[n] - before[n] for n in after if after[n] != before[n]} == {
        f"broken_d{i}": 1 for i in range(10)
    }


def test_a_bad_study_file_is_exit_78_naming_each_key(study: Study) -> None:
    (study.folder / "STUDY.toml").write_text(
        'name = ""\ncommand = ["{python}", "{nope}"]\n[grid]\nmodel = []\n'
    )
    done = study.cli("run", "STUDY.toml")
    assert done.returncode == 78
    lines = done.stderr.strip().splitlines()
    assert any("name: required" in line for line in lines), lines
    assert any("grid.model: must be a non-empty list" in line for line in lines), lines
    assert any("unknown placeholder {nope}" in line for line in lines), lines
    assert "Traceback" not in done.stderr


def test_a_study_runs_on_dask_workers_the_same_way(study: Study) -> None:
    pytest.importorskip("distributed", reason="the dask extra is part of the dev install")
    (study.folder / "STUDY.toml").write_text(STUDY.replace(
        '"d0", "d1", "d2", "d3", "d4", "d5", "d6", "d7", "d8", "d9"', '"d0", "d3"'
    ))  # fmt: skip
    done = study.cli("run", "STUDY.toml", "--backend", "dask")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Dask at a local cluster" in done.stdout
    phases = study.phases()
    assert sorted(n for n, p in phases.items() if p == "failed") == [
        "a_d3", "broken_d0", "broken_d3",
    ]  # fmt: skip
    assert "Error invalid configuration" in (study.out / "broken_d0" / "error.log").read_text()
    assert study.calls() == Counter({n: 1 for n, p in phases.items() if p == "completed"})


# The same study with the experiments as users write them: a ResilientExecutor over 12 items,
# transient errors in random batches, the broken model's every batch raising the bitsandbytes
# CUDA error (until fixed), a_d3 dying of SIGSEGV mid-run, b_d5 hanging. Each item answered is
# noted in answered.txt, as "<experiment>:<idx>", when fn returns it.
WITH_EXECUTOR = """
import os, pathlib, random, sys, threading, time
BATCH_SECONDS = 0.05
from study_runner import ResilientExecutor
model, dataset = sys.argv[1], sys.argv[2]
name = f"{model}_{dataset}"
root = pathlib.Path.cwd()
rng = random.Random(name)

def fn(batch):
    if pathlib.Path("slow").exists():
        time.sleep(BATCH_SECONDS)  # a forward pass's time
    if name == "a_d3" and 8 in batch:
        os.kill(os.getpid(), 11)
    if name == "b_d5" and 8 in batch:
        threading.Event().wait()  # hangs until killed
    if model == "broken" and not (root / "fixed").exists():
        raise RuntimeError(
            "Error invalid configuration argument at line 380 in file /src/csrc/ops.cu"
        )
    if rng.random() < 0.1:
        raise ConnectionResetError("transient: connection reset by peer")
    with open(root / "answered.txt", "a") as fh:
        fh.write("".join(f"{name}:{i}\\n" for i in batch))
    return [f"{name} answer {i}" for i in batch]

ex = ResilientExecutor(batch_size=4, max_consecutive_failures=5)
ex.run(list(range(12)), fn)
if ex.aborted:
    sys.exit(f"aborted: {ex.aborted}")
"""


def _answered(study: Study) -> Counter[str]:
    path = study.folder / "answered.txt"
    return Counter(line.split(":")[0] for line in path.read_text().split()) if path.exists() \
        else Counter()  # fmt: skip


def test_a_study_of_executor_experiments_finishes_and_resume_recomputes_only_the_fixed(
    study: Study,
) -> None:
    (study.folder / "experiment.py").write_text(WITH_EXECUTOR)
    (study.folder / "slow").touch()
    runner = study.start("run", "STUDY.toml")
    wait_until(lambda: len(_answered(study)) >= 4, timeout=60, message="a few experiments on")
    runner.send_signal(signal.SIGINT)
    out, _ = runner.communicate(timeout=60)
    assert runner.returncode == 130, out
    phases = study.phases()
    assert "interrupted" in phases.values() and "running" not in phases.values(), phases
    (study.folder / "slow").unlink()

    done = study.cli("resume", str(study.out))
    assert done.returncode == 1, done.stdout + done.stderr
    phases = study.phases()
    failed = sorted(n for n, p in phases.items() if p == "failed")
    assert failed == ["a_d3", "b_d5", *(f"broken_d{i}" for i in range(10))], phases
    broken = study.out / "broken_d4"
    error_log = (broken / "error.log").read_text()
    assert "aborted: 5 consecutive failures" in error_log, error_log
    assert "Error invalid configuration argument at line 380" in error_log  # the logged one
    records = [json.loads(line) for line in (broken / "predictions.jsonl").read_text().split("\n")
               if line]  # fmt: skip
    assert records and all(r["prediction"].startswith(("[ERROR", "[ABORTED")) for r in records)
    a_d3 = (study.out / "a_d3" / "predictions.jsonl").read_text()
    partial = [json.loads(line)["idx"] for line in a_d3.split("\n") if line]
    assert partial and 8 not in partial  # what a_d3 answered before it died is kept
    state = json.loads((study.out / "c_d2" / "state.json").read_text())
    assert (state["phase"], state["total_questions"]) == ("completed", 12)

    (study.folder / "fixed").touch()
    before = _answered(study)
    done = study.cli("resume", str(study.out))
    assert done.returncode == 1  # a_d3, b_d5 still fail
    phases = study.phases()
    assert sorted(n for n, p in phases.items() if p == "failed") == ["a_d3", "b_d5"]
    gained = _answered(study) - before
    # Only the fixed model's experiments computed anything, and a_d3 (rerun, it dies again at
    # the same item) only what it had not answered: items answered earlier are never redone.
    assert set(gained) - {"a_d3"} == {f"broken_d{i}" for i in range(10)}, gained
    assert all(gained[f"broken_d{i}"] >= 1 for i in range(10))
