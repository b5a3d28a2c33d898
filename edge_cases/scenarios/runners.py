"""task-queue under fire: a task's process, the runner itself, a Dask worker SIGKILLed mid-task.

Each drives the real `task-queue` command on a throwaway queue (a `trainguard.toml` with two
slots, its ledger beside it) and tasks that prove from outside what ran: each notes its pid,
its helper's and its owner token when it starts, waits for a `go` file the scenario creates,
and only then appends its id to `done.txt`, so that a task that succeeded twice shows.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

import psutil

from edge_cases.reaper import alive, cmdline
from edge_cases.sandbox import RUNNER_DISK, Sandbox
from edge_cases.scenario import Scenario, ScenarioSkipped, expect
from trainguard.procs import find_any_marked
from trainguard.timestamps import parse_iso_utc

SLOTS = 2
REASSIGN_LIMIT = 2.0  # the contract: a worker that dies mid-task has its task reassigned within
ORPHAN_LIMIT = 15.0  # a dead Dask worker's attempt: swept by token within a few sweeps (5 s each)
RUNNER_SAYS_STOPPED = "processes left by a dead runner"
RUNNER_DIED = "its runner died"

# The helper stands for what a real task starts in its session (a data loader's workers): it
# outlives the task's own process unless something kills it. Written atomically: the scenario
# reads it while the task runs.
TASK = """\
import json, os, pathlib, subprocess, sys, threading, time

POLL = 0.02
here = pathlib.Path(__file__).resolve().parent
if sys.argv[1:] == ["helper"]:
    threading.Event().wait()  # until killed
task, attempt = os.environ["TRAINGUARD_TASK_ID"], os.environ["TRAINGUARD_ATTEMPT"]
helper = subprocess.Popen([sys.executable, __file__, "helper"])
note = {
    "pid": os.getpid(),
    "helper": helper.pid,
    "worker": os.environ["TRAINGUARD_WORKER"],
    "token": os.environ["TRAINGUARD_OWNER"],
}
aside = here / f".started-{task}-{attempt}.tmp"
aside.write_text(json.dumps(note))
os.replace(aside, here / f"started-{task}-{attempt}.json")
deadline = time.monotonic() + 120
while not (here / "go").exists():
    if time.monotonic() > deadline:
        raise SystemExit("no go file within 120 s")
    time.sleep(POLL)
helper.kill()
helper.wait()
with open(here / "done.txt", "a") as fh:
    fh.write(task + "\\n")
"""


# --- the queue and its tasks ----------------------------------------------------------------


def _create_queue(sb: Sandbox, tasks: int) -> list[int]:
    """A queue of `tasks` waiting tasks on two slots; their ids."""
    sb.base.mkdir(parents=True)
    sb.config.write_text(f"[queue]\nslots = {SLOTS}\n{RUNNER_DISK}")
    script = sb.base / "task.py"
    script.write_text(TASK)
    argv = [sys.executable, str(script)]
    lines = [
        json.dumps({"argv": argv, "name": f"t{n}", "gpus": 0, "cwd": str(sb.base)})
        for n in range(1, tasks + 1)
    ]
    listed = sb.root / "tasks.jsonl"
    listed.write_text("\n".join(lines) + "\n")
    result = sb.tool("task_queue", "submit", "--from", str(listed))
    expect(result.returncode == 0, f"task-queue submit exit {result.returncode}: {result.stderr}")
    ids = [int(word) for word in result.stdout.split()]
    expect(len(ids) == tasks, f"task-queue submit printed {result.stdout!r} for {tasks} tasks")
    return ids


def _start_runner(sb: Sandbox, label: str, *args: str) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "task_queue", "run", "-c", str(sb.config), *args]
    # Dask's scratch folders go into the sandbox, removed with it, not into the user's /tmp.
    env = {**sb.env(), "DASK_TEMPORARY_DIRECTORY": str(sb.root / "dask-scratch")}
    return sb.spawn(argv, label=label, env=env)


def _said(sb: Sandbox, label: str) -> str:
    return "".join(p.read_text(errors="replace") for p in sorted(sb.root.glob(f"{label}-*.out")))


def _last_words(sb: Sandbox, label: str) -> str:
    lines = _said(sb, label).strip().splitlines()
    return " | ".join(lines[-4:]) if lines else "it printed nothing"


def _note(sb: Sandbox, task_id: int, attempt: int) -> dict[str, Any] | None:
    try:
        note: dict[str, Any] = json.loads(sb.path(f"started-{task_id}-{attempt}.json").read_text())
    except (OSError, ValueError):
        return None
    return note


def _wait_started(
    sb: Sandbox, task_id: int, attempt: int, runner: str, *, within: float | None = None
) -> dict[str, Any]:
    """What attempt `attempt` of the task noted once running: pid, helper, worker, token."""
    return sb.deadline.wait_for(
        lambda: _note(sb, task_id, attempt),
        f"task {task_id}'s attempt {attempt} running",
        within=within,
        context=lambda: f"the runner's last lines: {_last_words(sb, runner)}",
    )


def _wait_exit(sb: Sandbox, runner: subprocess.Popen[bytes], label: str) -> int:
    sb.deadline.wait_for(
        lambda: runner.poll() is not None,
        "`task-queue run --until-done` exiting",
        within=30,
        context=lambda: f"its last lines: {_last_words(sb, label)}",
    )
    return runner.returncode


def _left_running(*notes: dict[str, Any]) -> list[str]:
    """Live processes carrying the owner token of those attempts (their own, their helpers)."""
    procs = find_any_marked([note["token"] for note in notes])
    return [f"{p.pid} ({' '.join(cmdline(p)[-2:])})" for p in procs if alive(p)]


def _tasks(sb: Sandbox) -> dict[int, dict[str, Any]]:
    code, status = sb.tool_json("task_queue", "status")
    expect(code == 0, f"task-queue status --json exit {code}: {status}")
    return {int(t["id"]): t for t in status.get("tasks", [])}


def _done_once(sb: Sandbox, ids: list[int]) -> None:
    try:
        noted = sorted(int(word) for word in sb.path("done.txt").read_text().split())
    except OSError:
        noted = []
    expect(
        noted == sorted(ids),
        f"tasks that succeeded, one line per success: {noted}; expected each of {ids} once",
    )


def _outcomes(task: dict[str, Any]) -> list[str | None]:
    return [a["outcome"] for a in task["attempts"]]


def _reassigned_after(attempt: dict[str, Any], killed_at: float) -> float:
    started = parse_iso_utc(attempt.get("started_at"))
    expect(started is not None, f"attempt {attempt.get('number')} has no start time")
    assert started is not None
    return started.timestamp() - killed_at


# --- the scenarios --------------------------------------------------------------------------


def task_worker_death(sb: Sandbox) -> str:
    [task_id] = _create_queue(sb, tasks=1)
    runner = _start_runner(sb, "runner", "--until-done")
    first = _wait_started(sb, task_id, 1, "runner")
    killed_at = time.time()
    os.kill(first["pid"], signal.SIGKILL)  # the task's own process, its helper left behind
    second = _wait_started(sb, task_id, 2, "runner", within=10)
    expect(
        second["worker"] != first["worker"],
        f"the retry ran on {second['worker']}, the slot that lost it, not on the other slot",
    )
    left = _left_running(first)
    expect(not left, f"the killed attempt's processes still run beside its retry: {left}")
    sb.path("go").touch()
    code = _wait_exit(sb, runner, "runner")
    expect(code == 0, f"`task-queue run --until-done` exit {code}: {_last_words(sb, 'runner')}")
    task = _tasks(sb)[task_id]
    expect(task["status"] == "done", f"task {task_id} is {task['status']}, not done")
    expect(
        _outcomes(task) == ["failed", "ok"],
        f"attempts ended {_outcomes(task)}, expected ['failed', 'ok']",
    )
    killed, retry = task["attempts"]
    expect(
        killed["exit_code"] == -signal.SIGKILL and "SIGKILL" in str(killed["error"]),
        f"the killed attempt is recorded with exit {killed['exit_code']}, error "
        f"{killed['error']!r}, not as killed by SIGKILL",
    )
    expect(killed["counted"], "the killed attempt does not count against max_retries")
    delay = _reassigned_after(retry, killed_at)
    expect(
        delay <= REASSIGN_LIMIT,
        f"reassigned {delay:.2f} s after the kill, not within {REASSIGN_LIMIT:g} s",
    )
    _done_once(sb, [task_id])
    return (
        f"attempt 1 on {first['worker']} SIGKILLed: recorded {killed['error']!r}, its helper "
        f"stopped; attempt 2 on {second['worker']} {delay:.2f} s later, done once"
    )


def task_runner_death(sb: Sandbox) -> str:
    ids = _create_queue(sb, tasks=3)
    hit = ids[:SLOTS]  # running when the runner dies; the last one still pending
    first = _start_runner(sb, "runner")
    notes = {task_id: _wait_started(sb, task_id, 1, "runner") for task_id in hit}
    first.kill()  # SIGKILL: no chance to stop its attempts
    first.wait()
    for task_id, note in notes.items():
        pid = note["pid"]
        try:
            survived = alive(psutil.Process(pid))
        except psutil.Error:
            survived = False
        expect(survived, f"task {task_id}'s process {pid} died with its runner")
        expect(
            os.getsid(pid) == pid,
            f"task {task_id}'s process {pid} is not in its own session (session {os.getsid(pid)})",
        )

    second = _start_runner(sb, "rerun", "--until-done")
    again = {task_id: _wait_started(sb, task_id, 2, "rerun") for task_id in hit}
    left = _left_running(*notes.values())
    expect(
        not left, f"processes of the dead runner's attempts still run beside their reruns: {left}"
    )
    sb.path("go").touch()
    code = _wait_exit(sb, second, "rerun")
    expect(code == 0, f"the second `run --until-done` exit {code}: {_last_words(sb, 'rerun')}")
    said = _said(sb, "rerun")
    expect(
        RUNNER_SAYS_STOPPED in said,
        f"the second runner does not say it stopped the dead runner's processes: "
        f"{_last_words(sb, 'rerun')}",
    )

    tasks = _tasks(sb)
    for task_id in ids:
        task = tasks[task_id]
        expect(task["status"] == "done", f"task {task_id} is {task['status']}, not done")
        expected = ["worker_lost", "ok"] if task_id in hit else ["ok"]
        expect(
            _outcomes(task) == expected,
            f"task {task_id}'s attempts ended {_outcomes(task)}, expected {expected}",
        )
    for task_id in hit:
        lost = tasks[task_id]["attempts"][0]
        expect(
            lost["token"] == notes[task_id]["token"],
            f"task {task_id}'s process carried token {notes[task_id]['token']}, the ledger "
            f"recorded {lost['token']}",
        )
        expect(not lost["counted"], f"task {task_id}'s attempt lost with the runner counts")
        expect(
            RUNNER_DIED in str(lost["error"]),
            f"task {task_id}'s lost attempt says {lost['error']!r}",
        )
    _done_once(sb, ids)
    pids = ", ".join(str(note["pid"]) for note in notes.values())
    reruns = ", ".join(str(note["pid"]) for note in again.values())
    return (
        f"runner SIGKILLed: its tasks' processes ({pids}) lived on in their sessions; the next "
        f"runner killed them by token, closed their attempts worker_lost (not counted), reran "
        f"them ({reruns}); {len(ids)} tasks done once each"
    )


def dask_worker_death(sb: Sandbox) -> str:
    if importlib.util.find_spec("distributed") is None:
        raise ScenarioSkipped(
            "Dask distributed is not installed (the dask extra: pip install 'trainguard[dask]')"
        )
    [task_id] = _create_queue(sb, tasks=1)
    runner = _start_runner(sb, "runner", "--backend", "dask", "--until-done")
    first = _wait_started(sb, task_id, 1, "runner")
    worker = psutil.Process(first["pid"]).parent()
    ours = {p.pid for p in psutil.Process(runner.pid).children(recursive=True)}
    expect(
        worker is not None and worker.pid in ours,
        f"the parent of task {task_id}'s process {first['pid']} is not a Dask worker of the "
        f"runner: {worker}",
    )
    assert worker is not None
    killed_at = time.time()
    worker.kill()  # SIGKILL: the attempt's process is left orphaned in its own session
    second = _wait_started(sb, task_id, 2, "runner", within=15)
    expect(
        second["worker"] != first["worker"],
        f"the retry ran on {second['worker']}, the worker that died under it (restarted by "
        "its nanny under the same name), not on the other one",
    )
    sb.deadline.wait_for(
        lambda: not _left_running(first),
        f"the orphaned attempt on the dead worker (pid {first['pid']}, helper "
        f"{first['helper']}) killed by its token",
        within=ORPHAN_LIMIT,
        context=lambda: f"still running: {_left_running(first)}",
    )
    sb.path("go").touch()
    code = _wait_exit(sb, runner, "runner")
    expect(
        code == 0,
        f"`task-queue run --backend dask --until-done` exit {code}: {_last_words(sb, 'runner')}",
    )
    task = _tasks(sb)[task_id]
    expect(
        _outcomes(task) == ["worker_lost", "ok"],
        f"attempts ended {_outcomes(task)}, expected ['worker_lost', 'ok']",
    )
    lost, retry = task["attempts"]
    expect(
        first["worker"] in str(lost["error"]) and "died" in str(lost["error"]),
        f"the lost attempt says {lost['error']!r}, not that {first['worker']} died",
    )
    delay = _reassigned_after(retry, killed_at)
    expect(
        delay <= REASSIGN_LIMIT,
        f"reassigned {delay:.2f} s after the worker's death, not within {REASSIGN_LIMIT:g} s",
    )
    _done_once(sb, [task_id])
    return (
        f"Dask worker {first['worker']} SIGKILLed mid-task: worker_lost, rerun on "
        f"{second['worker']} {delay:.2f} s later, done once; the orphaned attempt killed by token"
    )


SCENARIOS = (
    Scenario(
        name="task_worker_death",
        summary="task-queue: a task's process SIGKILLed mid-task runs again on the other slot",
        fault="SIGKILL to a running task's process (2 slots, local backend); its helper child "
        "left orphaned",
        expected="attempt recorded failed (killed by SIGKILL, exit -9), counted; the helper "
        "killed; attempt 2 on the other slot within 2 s; the task done once",
        deadline=30,
        run=task_worker_death,
    ),
    Scenario(
        name="task_runner_death",
        summary="task-queue: `run` SIGKILLed mid-run loses no task and runs none twice",
        fault="SIGKILL to `task-queue run` while 2 of 3 tasks run, then `run --until-done`",
        expected="the tasks' processes outlive it, each in its own session; the new runner "
        "kills them by owner token, closes their attempts worker_lost (not counted), reruns "
        "them; every task succeeds exactly once",
        deadline=30,
        run=task_runner_death,
    ),
    Scenario(
        name="dask_worker_death",
        summary="task-queue --backend dask: a worker SIGKILLed mid-task; its task runs elsewhere",
        fault="SIGKILL to the Dask worker process running a task (a local cluster of 2 nanny "
        "workers)",
        expected="attempt worker_lost; rerun on the other worker within 2 s and done once; the "
        "orphaned task process killed by its owner token",
        deadline=45,
        run=dask_worker_death,
        requires="Dask distributed (the dask extra); skipped otherwise",
    ),
)
