"""study-runner under fire: experiments that crash in every way, and a resume after a fix.

A study of four experiments on two slots, each a real process: one that completes, one that
fails with the bitsandbytes CUDA error (until a `fixed` file appears), one that dies of
SIGSEGV, one that hangs past the queue's task timeout. Each notes in `calls.txt` when it
completes, so that a recomputation shows.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from edge_cases.sandbox import RUNNER_DISK, Sandbox
from edge_cases.scenario import Scenario, expect

EXPERIMENT = """\
import os, pathlib, sys, threading, time
kind = sys.argv[1]
here = pathlib.Path(__file__).resolve().parent
if kind == "cuda" and not (here / "fixed").exists():
    raise RuntimeError("Error invalid configuration argument at line 380 in file /src/csrc/ops.cu")
if kind == "segfault":
    os.kill(os.getpid(), 11)
if kind == "hang":
    threading.Event().wait()  # until killed
with open(here / "calls.txt", "a") as fh:
    fh.write(kind + "\\n")
"""

STUDY = """\
name = "faults"
command = ["{python}", "experiment.py", "{kind}"]
name_template = "{kind}"
[grid]
kind = ["ok", "cuda", "segfault", "hang"]
"""

EXPECTED_ERRORS = {
    "cuda": "Error invalid configuration argument at line 380",
    "segfault": "SIGSEGV",
    "hang": "timed out after 2 s",
}


def _status(sb: Sandbox) -> dict[str, dict[str, Any]]:
    result = sb.tool("study_runner", "status", str(sb.path("faults")), "--json", config=False)
    expect(result.returncode == 0, f"study-runner status exit {result.returncode}: {result.stderr}")
    data = json.loads(result.stdout)
    return {e["name"]: e for e in data["experiments"]}


def _calls(sb: Sandbox) -> Counter[str]:
    try:
        return Counter(sb.path("calls.txt").read_text().split())
    except OSError:
        return Counter()


def study_survives_failures(sb: Sandbox) -> str:
    sb.base.mkdir(parents=True)
    sb.config.write_text(f"[queue]\nslots = 2\ntask_timeout = 2\n{RUNNER_DISK}")
    sb.path("experiment.py").write_text(EXPERIMENT)
    sb.path("STUDY.toml").write_text(STUDY)
    study = str(sb.path("STUDY.toml"))
    first = sb.tool("study_runner", "run", study)
    expect(first.returncode == 1, f"study-runner run exit {first.returncode}, expected 1 "
           f"(some failed): {(first.stdout + first.stderr)[-300:]}")  # fmt: skip
    shown = _status(sb)
    phases = {name: e["phase"] for name, e in shown.items()}
    expect(phases == {"ok": "completed", "cuda": "failed", "segfault": "failed", "hang": "failed"},
           f"phases after the run: {phases}")  # fmt: skip
    for name, words in EXPECTED_ERRORS.items():
        error = str(shown[name]["error"])
        expect(words in error, f"{name}'s error is {error!r}, not about {words!r}")
        log = sb.path(f"faults/{name}/error.log")
        expect(log.exists(), f"{name} failed without an error.log")
        expect(f'"kind": "{name}"' in log.read_text(), f"{name}'s error.log lacks its spec")
    sb.path("fixed").touch()
    second = sb.tool("study_runner", "resume", str(sb.path("faults")))
    expect(second.returncode == 1, f"study-runner resume exit {second.returncode}, expected 1 "
           "(segfault and hang fail again)")  # fmt: skip
    phases = {name: e["phase"] for name, e in _status(sb).items()}
    expect(phases["cuda"] == "completed", f"the fixed experiment is {phases['cuda']} after resume")
    calls = _calls(sb)
    again = f"completions per experiment {dict(calls)}: something completed was run again"
    expect(calls == Counter({"ok": 1, "cuda": 1}), again)
    return (
        "1 completed, 3 failed (CUDA error, SIGSEGV, timeout), each with error.log; the study "
        "finished; resume after the fix completed the CUDA one, nothing recomputed"
    )


# An evaluation of 100 items whose item 64 hits the bitsandbytes error (in any batch that holds
# it) until the kernel is fixed: the executor must finish the other 99 and record 64 failed.
EVALUATION = """\
import os, pathlib
from study_runner import ResilientExecutor

here = pathlib.Path(__file__).resolve().parent

def fn(batch):
    with open(here / "evaluated.txt", "a") as fh:
        fh.write(" ".join(str(i) for i in batch) + "\\n")
    if 64 in batch and not (here / "fixed").exists():
        raise RuntimeError(
            "Error invalid configuration argument at line 380 in file /src/csrc/ops.cu"
        )
    return [f"answer {i}" for i in batch]

ex = ResilientExecutor(batch_size=16, max_consecutive_failures=8)
ex.run(list(range(100)), fn)
"""

EVAL_STUDY = """\
name = "eval"
command = ["{python}", "evaluation.py", "{model}"]
name_template = "{model}"
[grid]
model = ["qwen2.5-7b"]
"""


def _predictions(sb: Sandbox) -> dict[int, str]:
    latest: dict[int, str] = {}
    for line in sb.path("eval/qwen2.5-7b/predictions.jsonl").read_text().splitlines():
        record = json.loads(line)
        latest[record["idx"]] = record["prediction"]
    return latest


def executor_cuda_error_at_item_64(sb: Sandbox) -> str:
    sb.base.mkdir(parents=True)
    sb.config.write_text(f"[queue]\nslots = 1\n{RUNNER_DISK}")
    sb.path("evaluation.py").write_text(EVALUATION)
    sb.path("STUDY.toml").write_text(EVAL_STUDY)
    first = sb.tool("study_runner", "run", str(sb.path("STUDY.toml")))
    expect(first.returncode == 0, f"study-runner run exit {first.returncode}: the experiment "
           f"should finish despite item 64: {(first.stdout + first.stderr)[-300:]}")  # fmt: skip
    latest = _predictions(sb)
    expect(sorted(latest) == list(range(100)), f"records for {len(latest)} of 100 items")
    expect(latest[64].startswith("[ERROR: RuntimeError: Error invalid configuration"),
           f"item 64 recorded as {latest[64]!r}")  # fmt: skip
    good = [i for i in range(100) if i != 64 and latest[i] == f"answer {i}"]
    expect(len(good) == 99, f"only {len(good)} of the other 99 items have their answer")
    batches = sb.path("evaluated.txt").read_text().splitlines()
    single = [b for b in batches if b == "64"]
    expect(single, f"item 64 was never tried alone (batches: {batches[:12]}...)")
    state = json.loads(sb.path("eval/qwen2.5-7b/state.json").read_text())
    counted = (state.get("predictions_complete"), state.get("total_questions"))
    expect(counted == (99, 100), f"state.json says {counted[0]}/{counted[1]} predictions")
    sb.path("fixed").touch()
    sb.path("evaluated.txt").write_text("")
    again = sb.tool("study_runner", "run", str(sb.path("STUDY.toml")), "--force",
                    "--filter", "qwen*")  # fmt: skip
    expect(again.returncode == 0, f"the forced rerun exit {again.returncode}")
    rerun = sb.path("evaluated.txt").read_text().split()
    expect(rerun == ["64"], f"the rerun evaluated {rerun[:20]}, not item 64 alone")
    expect(_predictions(sb)[64] == "answer 64", "item 64 still has no answer after the fix")
    return (
        f"99 of 100 answered, item 64 recorded [ERROR] after {len(batches)} calls (halved to "
        "it alone); after the fix a rerun computed item 64 only"
    )


SCENARIOS = (
    Scenario(
        name="study_survives_failures",
        summary="study-runner: a CUDA error, a segfault and a hang never stop the study",
        fault="4 experiments: one completes, one raises the bitsandbytes CUDA error, one dies "
        "of SIGSEGV, one hangs past task_timeout (2 s); then the CUDA one is fixed and resumed",
        expected="run exits 1 with 1 completed, 3 failed, each with its error and error.log; "
        "resume completes the fixed one and recomputes nothing",
        deadline=60,
        run=study_survives_failures,
    ),
    Scenario(
        name="executor_cuda_error_at_item_64",
        summary="ResilientExecutor: a CUDA error at item 64 of 100 loses nothing else",
        fault="every batch holding item 64 raises the bitsandbytes CUDA error (batch 16, under "
        "study-runner); then the kernel is fixed and the experiment forced to run again",
        expected="the experiment completes with 99 answers and item 64 recorded [ERROR] (the "
        "batch halved down to it alone), state.json 99/100; the rerun computes item 64 only",
        deadline=60,
        run=executor_cuda_error_at_item_64,
    ),
)

__all__ = ["SCENARIOS"]
