"""phase-pipeline under fire: its runner SIGKILLed mid-phase, and a phase that lies about its
outputs.

Each drives the real `phase-pipeline` command on a throwaway PIPELINE.toml whose phases are one
small script, and reads the state file with the package's own typed reader. A phase notes its
name in `calls.txt` when it starts, so that a phase run twice (or not at all) shows; it writes
its declared output unless told not to. A phase told to hang starts a helper (a data loader's
worker, say), notes both pids, and waits until killed.
"""

from __future__ import annotations

import json
import re
import shlex
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import psutil

from edge_cases.reaper import alive, cmdline
from edge_cases.sandbox import RUNNER_DISK, Sandbox
from edge_cases.scenario import Scenario, expect
from phase_pipeline.state_file import STATE_FILE, read_state

RUNNER_SAYS_STOPPED = "processes left by a dead runner"
RECOVERY_HEADER = "FAILURE RECOVERY INSTRUCTIONS"
RESUME_INTRO = "Fix the cause, then resume with:"

# `NAME.hang` beside it: start a helper, note both pids (atomically: the scenario polls for
# the note), wait until killed. `NAME.no-outputs`: exit 0 without writing NAME.out.
PHASE = """\
import json, os, pathlib, subprocess, sys, threading

here = pathlib.Path(__file__).resolve().parent
name, run_dir = sys.argv[1], pathlib.Path(sys.argv[2])
if sys.argv[3:] == ["helper"]:
    threading.Event().wait()  # until killed
with open(here / "calls.txt", "a") as fh:
    fh.write(name + "\\n")
if (here / f"{name}.hang").exists():
    helper = subprocess.Popen([sys.executable, __file__, name, str(run_dir), "helper"])
    aside = here / f".{name}-started.tmp"
    aside.write_text(json.dumps({"pid": os.getpid(), "helper": helper.pid}))
    os.replace(aside, here / f"{name}-started.json")
    threading.Event().wait()  # until killed
if not (here / f"{name}.no-outputs").exists():
    (run_dir / f"{name}.out").write_text(name + "\\n")
"""


# --- the pipeline and its phases ------------------------------------------------------------


def _create_pipeline(sb: Sandbox, name: str, phases: dict[str, list[str]]) -> Path:
    """A PIPELINE.toml of `phases` (name -> what it depends on), each declaring NAME.out."""
    sb.base.mkdir(parents=True)
    sb.config.write_text(f"[queue]\nslots = 1\n{RUNNER_DISK}")
    sb.path("phase.py").write_text(PHASE)
    lines = [f'name = "{name}"', 'version = "1.0"']
    for phase, needs in phases.items():
        lines += [
            "",
            "[[phases]]",
            f'name = "{phase}"',
            f'command = ["{{python}}", "phase.py", "{phase}", "{{run_dir}}"]',
            f"depends_on = {json.dumps(needs)}",
            f'outputs = ["{phase}.out"]',
        ]
    pipeline = sb.path("PIPELINE.toml")
    pipeline.write_text("\n".join(lines) + "\n")
    return pipeline


def _run_argv(sb: Sandbox, *args: str) -> list[str]:
    return [sys.executable, "-m", "phase_pipeline", "run", *args, "-c", str(sb.config)]


def _state_file(sb: Sandbox) -> Path | None:
    """The one run's `.experiment_state`, once the runner has written it."""
    found = list(sb.path("runs").glob(f"*/{STATE_FILE}"))
    return found[0] if len(found) == 1 else None


def _calls(sb: Sandbox) -> Counter[str]:
    try:
        return Counter(sb.path("calls.txt").read_text().split())
    except OSError:
        return Counter()


def _said(sb: Sandbox, label: str) -> str:
    return "".join(p.read_text(errors="replace") for p in sorted(sb.root.glob(f"{label}-*.out")))


def _last_words(text: str) -> str:
    lines = text.strip().splitlines()
    return " | ".join(lines[-4:]) if lines else "it printed nothing"


def _note(sb: Sandbox, phase: str) -> dict[str, Any] | None:
    try:
        note: dict[str, Any] = json.loads(sb.path(f"{phase}-started.json").read_text())
    except (OSError, ValueError):
        return None
    return note


def _processes(note: dict[str, Any]) -> list[psutil.Process]:
    """The hung phase's process and its helper, as psutil knows them (safe against pid reuse)."""
    found = []
    for key in ("pid", "helper"):
        try:
            found.append(psutil.Process(note[key]))
        except psutil.Error:
            continue
    return found


def _described(procs: list[psutil.Process]) -> list[str]:
    return [f"{p.pid} ({' '.join(cmdline(p)[-2:])})" for p in procs if alive(p)]


# --- the scenarios --------------------------------------------------------------------------


def pipeline_runner_killed(sb: Sandbox) -> str:
    pipeline = _create_pipeline(
        sb, "killed", {"phase1": [], "phase2": ["phase1"], "phase3": ["phase2"]}
    )
    sb.path("phase2.hang").touch()
    runner = sb.spawn(_run_argv(sb, str(pipeline), "--out", str(sb.path("runs"))), label="runner")

    def started() -> dict[str, Any] | None:
        expect(runner.poll() is None, f"the runner exited {runner.returncode} before phase2 "
               f"hung: {_last_words(_said(sb, 'runner'))}")  # fmt: skip
        return _note(sb, "phase2")

    note = sb.deadline.wait_for(
        started,
        "phase2 running with its helper",
        context=lambda: f"the runner's last lines: {_last_words(_said(sb, 'runner'))}",
    )
    runner.kill()  # SIGKILL: no chance to stop its phase or to save the state file
    runner.wait()
    hung = _processes(note)
    expect(
        len(_described(hung)) == 2,
        f"phase2 and its helper ({note}) did not outlive their runner: only "
        f"{_described(hung)} still run",
    )
    path = _state_file(sb)
    expect(path is not None, f"no single runs/*/{STATE_FILE} after the kill")
    assert path is not None
    phases = read_state(path).phases
    expected = {"phase1": "completed", "phase2": "in_progress", "phase3": "pending"}
    expect(phases == expected, f"{STATE_FILE} after the kill says {phases}, expected {expected}")

    sb.path("phase2.hang").unlink()
    resume = sb.run(_run_argv(sb, str(pipeline), "--resume", str(path)))
    said = resume.stdout + resume.stderr
    expect(resume.returncode == 0, f"the resume exit {resume.returncode}: {_last_words(said)}")
    left = _described(hung)
    expect(not left, f"the killed run's phase2 and helper still run after the resume: {left}")
    stopped = next((line for line in said.splitlines() if RUNNER_SAYS_STOPPED in line), "")
    missed = [p.pid for p in hung if not re.search(rf"\b{p.pid}\b", stopped)]
    expect(
        not missed,
        f"the resume does not say it stopped pid(s) {missed} of the killed run: "
        f"{stopped or _last_words(said)}",
    )
    phases = read_state(path).phases
    expect(set(phases.values()) == {"completed"}, f"{STATE_FILE} after the resume says {phases}")
    calls = _calls(sb)
    runs = Counter({"phase1": 1, "phase2": 2, "phase3": 1})
    expect(calls == runs, f"runs per phase {dict(calls)}, expected {dict(runs)}")
    pids = ", ".join(str(p.pid) for p in hung)
    return (
        f"runner SIGKILLed in phase2: state phase1=completed, phase2=in_progress; phase2 and "
        f"its helper ({pids}) outlived it; the resume stopped them, said so, re-ran phase2, "
        "ran phase3; phase1 ran once"
    )


def pipeline_phase_without_outputs(sb: Sandbox) -> str:
    pipeline = _create_pipeline(
        sb,
        "outputs",
        {"prepare": [], "train": ["prepare"], "evaluate": ["train"], "baseline": ["prepare"]},
    )
    sb.path("train.no-outputs").touch()
    first = sb.run(_run_argv(sb, str(pipeline), "--out", str(sb.path("runs"))))
    said = first.stdout + first.stderr
    expect(first.returncode == 1, f"the run exit {first.returncode}, expected 1 (train did not "
           f"leave train.out): {_last_words(said)}")  # fmt: skip
    path = _state_file(sb)
    expect(path is not None, f"no single runs/*/{STATE_FILE} after the run")
    assert path is not None
    state = read_state(path)
    expected = {
        "prepare": "completed",
        "train": "failed",
        "evaluate": "pending",
        "baseline": "completed",
    }
    expect(state.phases == expected, f"{STATE_FILE} says {state.phases}, expected {expected}")
    expect(
        (state.failure_count, state.last_failure) == (1, "train"),
        f"[failures] says {state.failure_count} failure(s), last {state.last_failure!r}; "
        "expected 1, train",
    )
    expect(RECOVERY_HEADER in said, f"no {RECOVERY_HEADER} block: {_last_words(said)}")
    block = said[said.index(RECOVERY_HEADER) :]
    expect(
        "missing_outputs" in block and "train.out" in block,
        f"the recovery block does not name missing_outputs and train.out: {block[:400]!r}",
    )
    lines = block.splitlines()
    expect(RESUME_INTRO in lines, f"the recovery block has no {RESUME_INTRO!r}: {block[:400]!r}")
    printed = lines[lines.index(RESUME_INTRO) + 1].strip()
    words = shlex.split(printed)
    expect(
        words[:2] == ["phase-pipeline", "run"] and "--resume" in words,
        f"the printed resume command is {printed!r}",
    )
    expect(_calls(sb)["evaluate"] == 0, "evaluate ran although train, its dependency, failed")

    sb.path("train.no-outputs").unlink()
    # The printed command as a person pastes it, in the folder the run was started from.
    resume = sb.run([sys.executable, "-m", "phase_pipeline", *words[1:]])
    said = resume.stdout + resume.stderr
    expect(resume.returncode == 0, f"`{printed}` exit {resume.returncode}: {_last_words(said)}")
    phases = read_state(path).phases
    expect(set(phases.values()) == {"completed"}, f"{STATE_FILE} after the resume: {phases}")
    calls = _calls(sb)
    runs = Counter({"prepare": 1, "train": 2, "evaluate": 1, "baseline": 1})
    expect(calls == runs, f"runs per phase {dict(calls)}, expected {dict(runs)}")
    return (
        "train exited 0 without train.out: run exit 1, train failed [missing_outputs], "
        "evaluate left pending, baseline completed; the printed resume ran train and evaluate "
        "only"
    )


SCENARIOS = (
    Scenario(
        name="pipeline_runner_killed",
        summary="phase-pipeline: `run` SIGKILLed mid-phase resumes without leftovers or reruns",
        fault="SIGKILL to `phase-pipeline run` while phase2 of 3 hangs with a helper child; "
        "then the hang is removed and the run resumed with --resume",
        expected="the state file says phase1=completed, phase2=in_progress; the resume exits 0, "
        "stops the killed run's phase2 and its helper (and says so), runs phase2 again and "
        "phase3; phase1 ran once",
        deadline=30,
        run=pipeline_runner_killed,
    ),
    Scenario(
        name="pipeline_phase_without_outputs",
        summary="phase-pipeline: a phase that exits 0 without its outputs fails, not completes",
        fault="a phase exits 0 without writing its declared `outputs`; a later phase depends "
        "on it, another does not; then the phase is fixed",
        expected="run exits 1; the phase is failed in the state file, its dependant pending, "
        "the other completed; FAILURE RECOVERY INSTRUCTIONS name missing_outputs; the printed "
        "resume command runs only the fixed phase and its dependant",
        deadline=30,
        run=pipeline_phase_without_outputs,
    ),
)

__all__ = ["SCENARIOS"]
