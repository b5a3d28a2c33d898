"""Preflight under fire: a node that is down before the run starts, an input that is missing.

Each drives a real runner on a throwaway folder. The unreachable node is a real one: a port on
127.0.0.1 bound by the scenario and never listening, so that the real `ssh` client is refused
(skipped where no ssh client is installed). The steps prove from outside whether they ran: each
writes a file named for it.
"""

from __future__ import annotations

import json
import shutil
import socket
import sys

from edge_cases.sandbox import RUNNER_DISK, Sandbox
from edge_cases.scenario import Scenario, ScenarioSkipped, expect

TOUCH = "import pathlib, sys; pathlib.Path(sys.argv[1]).touch()"


def _last_words(text: str) -> str:
    lines = text.strip().splitlines()
    return " | ".join(lines[-3:]) if lines else "it printed nothing"


def preflight_unreachable_node(sb: Sandbox) -> str:
    if shutil.which("ssh") is None:
        raise ScenarioSkipped("no ssh client here")
    sb.base.mkdir(parents=True)
    with socket.socket() as closed:  # bound, never listening: every connection is refused
        closed.bind(("127.0.0.1", 0))
        node = f"ssh://127.0.0.1:{closed.getsockname()[1]}"
        sb.config.write_text(
            f'[queue]\nslots = 1\n{RUNNER_DISK}ssh_timeout = 3\n[preflight]\nnodes = ["{node}"]\n'
        )
        marker = sb.path("ran")
        submitted = sb.tool(
            "task_queue", "submit", "-c", str(sb.config), "--", sys.executable, "-c", TOUCH,
            str(marker), config=False,
        )  # fmt: skip
        expect(submitted.returncode == 0, f"submit exit {submitted.returncode}")
        task_id = int(submitted.stdout)
        refused = sb.tool("task_queue", "run", "--until-done")
    said = refused.stdout + refused.stderr
    expect(refused.returncode == 69, f"run exit {refused.returncode}, expected 69 (the node is "
           f"down): {_last_words(said)}")  # fmt: skip
    expect(not marker.exists(), "the task ran although preflight refused the run")
    expect(node in said and "refused" in said, f"the refusal does not name {node}: {said[-300:]}")
    _, status = sb.tool_json("task_queue", "status")
    task = next(t for t in status["tasks"] if t["id"] == task_id)
    attempts = [(a["outcome"], a["category"], a["counted"]) for a in task["attempts"]]
    expect(
        task["status"] == "pending" and attempts == [("failed", "preflight", False)],
        f"the ledger says {task['status']} with attempts {attempts}; expected pending with one "
        "uncounted preflight refusal",
    )
    sb.config.write_text(f"[queue]\nslots = 1\n{RUNNER_DISK}")  # the node taken out of the list
    again = sb.tool("task_queue", "run", "--until-done")
    expect(again.returncode == 0, f"the rerun exit {again.returncode}: "
           f"{_last_words(again.stdout + again.stderr)}")  # fmt: skip
    expect(marker.exists(), "the rerun did not run the task")
    return f"run refused with 69 naming {node}, nothing started, task pending; the rerun ran it"


STUDY = """\
name = "inputs"
command = ["{python}", "-c", "import pathlib, sys; pathlib.Path(sys.argv[1]).touch()",
           "ran-{dataset}"]
name_template = "{dataset}"
[grid]
dataset = ["present", "missing"]
[preflight]
inputs = ["data/{dataset}.jsonl"]
"""


def preflight_study_missing_input(sb: Sandbox) -> str:
    sb.base.mkdir(parents=True)
    sb.config.write_text(f"[queue]\nslots = 1\n{RUNNER_DISK}")
    (sb.base / "STUDY.toml").write_text(STUDY)
    (sb.base / "data").mkdir()
    (sb.base / "data" / "present.jsonl").write_text("{}\n")
    first = sb.tool("study_runner", "run", str(sb.base / "STUDY.toml"))
    said = first.stdout + first.stderr
    expect(first.returncode == 1, f"the study exit {first.returncode}, expected 1 (one "
           f"experiment refused): {_last_words(said)}")  # fmt: skip
    expect(sb.path("ran-present").exists(), "the experiment with its input did not run")
    expect(not sb.path("ran-missing").exists(), "the experiment without its input ran")
    state = json.loads((sb.base / "inputs" / "missing" / "state.json").read_text())
    missing = sb.base / "data" / "missing.jsonl"
    expect(
        state["phase"] == "failed" and str(missing) in (state["error"] or ""),
        f"missing/state.json says {state['phase']}: {state['error']!r}",
    )
    missing.write_text("{}\n")
    resumed = sb.tool("study_runner", "resume", str(sb.base / "inputs"))
    expect(resumed.returncode == 0, f"resume exit {resumed.returncode}: "
           f"{_last_words(resumed.stdout + resumed.stderr)}")  # fmt: skip
    expect(sb.path("ran-missing").exists(), "the resume did not run the refused experiment")
    return (
        "the experiment without its input failed naming the file, nothing of it ran; resume ran it"
    )


SCENARIOS = (
    Scenario(
        name="preflight_unreachable_node",
        summary="task-queue: a node in [preflight] nodes is down before the run starts",
        fault="[preflight] nodes names a port on 127.0.0.1 that refuses connections",
        expected="run exits 69 naming the node, the task starts nothing and stays pending with "
        "an uncounted preflight attempt; once the node is out of the list, the run completes it",
        deadline=30,
        run=preflight_unreachable_node,
    ),
    Scenario(
        name="preflight_study_missing_input",
        summary="study-runner: an experiment's [preflight] input file is missing",
        fault='inputs = ["data/{dataset}.jsonl"], one dataset\'s file absent',
        expected="that experiment is failed with the missing file named and never started; "
        "the other completes (exit 1); once the file exists, resume runs it (exit 0)",
        deadline=30,
        run=preflight_study_missing_input,
    ),
)
