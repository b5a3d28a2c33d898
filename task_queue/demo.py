"""`task-queue demo`: a throwaway queue on two local slots, three faults, then a report.

Three tasks through the real CLI (`python -m task_queue`, so an installed package is all it
needs): a dataset download that fails on one worker and succeeds on another, an evaluation
that fails every time (failed for good after 3 attempts, never run a 4th time), and a training
job whose process the demo SIGKILLs mid-task (retried on the other slot). The demo checks its
own expectations: exit 0 when the queue did all of that, 1 otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any, TypeVar

import psutil

from trainguard.process_tree import stop_started
from trainguard.procs import OWNER_ENV

T = TypeVar("T")

SLOTS = 2
MAX_RETRIES = 3
DEADLINE_S = 60.0  # for each wait; the whole demo takes a few seconds
# The demo writes kilobytes: its preflight needs 1 GB free, not the 50 GB a training run does.
CONFIG = (
    f"[queue]\nslots = {SLOTS}\nmax_retries = {MAX_RETRIES}\ntask_timeout = 120\n"
    "[health]\ndisk_min_free_gb = 1\n"
)

DOWNLOAD = """\
import os, sys
worker = os.environ["TRAINGUARD_WORKER"]
if worker.endswith("/slot0"):
    print("OSError: dataset download failed (connection reset by peer)", file=sys.stderr)
    sys.exit(1)
print(f"dataset downloaded on {worker}")
"""
EVALUATE = """\
import os
with open("evaluate.runs", "a") as runs:
    runs.write(os.environ["TRAINGUARD_WORKER"] + "\\n")
raise RuntimeError("evaluation crashed: metrics server returned 500")
"""
# Runs until the demo creates `train.finish`, so that the SIGKILL lands mid-task on any machine.
TRAIN = """\
import os, pathlib, sys, time
attempt = os.environ["TRAINGUARD_ATTEMPT"]
print(f"training on {os.environ['TRAINGUARD_WORKER']} (attempt {attempt})", flush=True)
pathlib.Path(f"train.started-{attempt}").touch()
deadline = time.monotonic() + 60
while not pathlib.Path("train.finish").exists():
    if time.monotonic() > deadline:
        sys.exit("train: never told to finish")
    time.sleep(0.02)
print("training finished")
"""
EXPECTED_COUNTS = {"pending": 0, "running": 0, "done": 2, "failed": 1, "cancelled": 0}
TASKS = {"download": DOWNLOAD, "evaluate": EVALUATE, "train": TRAIN}
ROLES = {
    "download": "fails on slot0 (dataset download failed), succeeds elsewhere",
    "evaluate": "fails every time",
    "train": "runs until the demo lets it finish",
}


class DemoFailed(Exception):
    pass


def run_demo(*, keep: bool = False) -> int:
    root = Path(tempfile.mkdtemp(prefix="trainguard-queue-demo-"))
    started: list[subprocess.Popen[bytes]] = []
    try:
        return _demo(root, started)
    except DemoFailed as exc:
        print(f"demo: FAILED: {exc}")
        _print_tail(root / "runner.log")
        return 1
    finally:
        _stop(started)
        if keep:
            print(f"queue kept in {root} (ledger in queue/, the runner's output in runner.log)")
        else:
            shutil.rmtree(root, ignore_errors=True)


def _demo(root: Path, started: list[subprocess.Popen[bytes]]) -> int:
    cli = _Cli(root)
    ids = _submit(cli)
    print(f"task-queue demo: a throwaway queue in {root}: local backend, {SLOTS} slots")
    print("1. submitted 3 tasks (task-queue submit --from tasks.jsonl):")
    for name, what in ROLES.items():
        print(f"   task {ids[name]} {name:<8}  {what}")
    with open(root / "runner.log", "wb") as log:
        runner = cli.start(["run", "--until-done", "--slots", str(SLOTS)], log)
    started.append(runner)
    print(f"2. started: task-queue run --until-done --slots {SLOTS} (pid {runner.pid})")
    killed = _kill_mid_task(cli, ids["train"])
    code = _wait_exit(runner)
    print(f"5. the runner exited {code} (expected 1: a task failed for good)")
    again = subprocess.run(
        cli.argv("run", "--until-done"), cwd=root, env=cli.env, capture_output=True, check=False
    )
    runs = _lines(root / "evaluate.runs")
    print(
        f"6. a second task-queue run --until-done exited {again.returncode}; "
        f"evaluate ran {len(runs)} times in all"
    )

    status = cli.status()
    print("\nwhat happened to each task:")
    for task in status["tasks"]:
        print(_task_report(task))
    counts = status["counts"]
    print("counts: " + ", ".join(f"{counts[s]} {s}" for s in counts))
    tasks = {task["name"]: task for task in status["tasks"]}
    checks = _checks(tasks, killed, code=code, again=again.returncode, runs=len(runs))
    checks.append((counts == EXPECTED_COUNTS, "in the end: 2 tasks done, 1 failed, none left"))
    print("\nchecks:")
    for ok, what in checks:
        print(f"  {'yes' if ok else 'NO '}  {what}")
    passed = all(ok for ok, _ in checks)
    print("demo: OK" if passed else "demo: FAILED")
    return 0 if passed else 1


def _submit(cli: _Cli) -> dict[str, int]:
    lines = []
    for name, script in TASKS.items():
        (cli.root / f"{name}.py").write_text(script)
        lines.append(json.dumps({"name": name, "argv": [sys.executable, f"{name}.py"]}))
    (cli.root / "tasks.jsonl").write_text("\n".join(lines) + "\n")
    ids = cli.call("submit", "--from", "tasks.jsonl").split()
    return dict(zip(TASKS, map(int, ids), strict=True))


def _kill_mid_task(cli: _Cli, train: int) -> dict[str, Any]:
    """SIGKILL train's first attempt once it runs; wait for its retry. Returns the killed one."""
    _wait(lambda: (cli.root / "train.started-1").exists(), "the first attempt of train")
    first = _wait(lambda: _running_attempt(cli.status(), train), "train's pid in the ledger")
    if not _carries_token(first["pid"], first["token"]):
        raise DemoFailed(f"pid {first['pid']} is not train's attempt any more")
    os.kill(first["pid"], signal.SIGKILL)
    killed_at = time.monotonic()
    print(f"3. SIGKILL to train's attempt 1 on {first['worker']} (pid {first['pid']}), mid-task")
    _wait(lambda: (cli.root / "train.started-2").exists(), "train's second attempt")
    after = time.monotonic() - killed_at
    second = _wait(lambda: _running_attempt(cli.status(), train), "train's attempt 2")
    print(
        f"4. train's attempt {second['number']} started on {second['worker']}, "
        f"{after:.2f} s after the kill"
    )
    (cli.root / "train.finish").touch()
    return first


def _checks(
    tasks: dict[str, dict[str, Any]], killed: dict[str, Any], *, code: int, again: int, runs: int
) -> list[tuple[bool, str]]:
    download, evaluate, train = (tasks[name]["attempts"] for name in TASKS)
    download_ok = (
        tasks["download"]["status"] == "done"
        and [(_slot(a), a["outcome"]) for a in download] == [("slot0", "failed"), ("slot1", "ok")]
        and "dataset download failed" in (download[0]["error"] or "")
    )
    evaluate_ok = (
        tasks["evaluate"]["status"] == "failed"
        and [a["outcome"] for a in evaluate] == ["failed"] * MAX_RETRIES
        and runs == MAX_RETRIES
    )
    train_ok = (
        tasks["train"]["status"] == "done"
        and [a["outcome"] for a in train] == ["failed", "ok"]
        and train[0]["pid"] == killed["pid"]
        and "SIGKILL" in (train[0]["error"] or "")
        and train[1]["worker"] != train[0]["worker"]
    )
    return [
        (download_ok, "download failed on slot0 and succeeded on slot1"),
        (
            evaluate_ok,
            f"evaluate failed for good after {MAX_RETRIES} attempts, never run a 4th time",
        ),
        (train_ok, "train's killed attempt was retried on the other slot and succeeded"),
        (code == 1 and again == 1, "both runners exited 1 (a task failed for good)"),
    ]


def _task_report(task: dict[str, Any]) -> str:
    lines = [f"  task {task['id']} {task['name']}: {task['status']}"]
    for attempt in task["attempts"]:
        outcome = attempt["outcome"] or "running"
        error = f"  {attempt['error']}" if attempt["outcome"] != "ok" and attempt["error"] else ""
        lines.append(f"    attempt {attempt['number']} on {attempt['worker']}: {outcome}{error}")
    return "\n".join(lines)


def _slot(attempt: dict[str, Any]) -> str:
    return str(attempt["worker"]).rpartition("/")[2]


def _running_attempt(status: dict[str, Any], task_id: int) -> dict[str, Any] | None:
    task = next(t for t in status["tasks"] if t["id"] == task_id)
    attempts = [a for a in task["attempts"] if a["outcome"] is None and a["pid"]]
    return attempts[0] if attempts else None


def _carries_token(pid: int, token: str) -> bool:
    """The pid is still the attempt's process: it carries the attempt's owner token."""
    try:
        return bool(psutil.Process(pid).environ().get(OWNER_ENV) == token)
    except psutil.Error:
        return False


class _Cli:
    """`task-queue` as a user runs it, on the demo's config only (no TRAINGUARD_* overrides)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.config = root / "trainguard.toml"
        self.config.write_text(CONFIG)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINGUARD_")}

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "task_queue", *args, "-c", str(self.config)]

    def call(self, *args: str) -> str:
        done = subprocess.run(
            self.argv(*args), cwd=self.root, env=self.env, capture_output=True, text=True,
            timeout=DEADLINE_S, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise DemoFailed(f"task-queue {args[0]} exited {done.returncode}: {done.stderr}")
        return done.stdout

    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.call("status", "--json"))
        return result

    def start(self, args: Sequence[str], log: IO[bytes]) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            self.argv(*args), cwd=self.root, env=self.env, stdout=log, stderr=subprocess.STDOUT
        )


def _wait(probe: Callable[[], T | bool | None], what: str) -> T:
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value  # type: ignore[return-value]
        time.sleep(0.02)
    raise DemoFailed(f"no {what} after {DEADLINE_S:g} s")


def _wait_exit(runner: subprocess.Popen[bytes]) -> int:
    try:
        return runner.wait(DEADLINE_S)
    except subprocess.TimeoutExpired:
        raise DemoFailed(f"the runner still runs after {DEADLINE_S:g} s") from None


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text().splitlines()
    except OSError:
        return []


def _print_tail(log: Path, lines: int = 20) -> None:
    try:
        tail = log.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return
    print("the runner's last lines:")
    for line in tail:
        print(f"  {line}")


def _stop(started: list[subprocess.Popen[bytes]]) -> None:
    stop_started(started, timeout=10)
