"""`task-queue` end to end: real manager processes, real task processes, real signals."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.polling import wait_until
from trainguard.procs import OWNER_ENV

SCRIPT = shutil.which("task-queue", path=str(Path(sys.executable).parent))
PY = sys.executable

# Fails on slot0, succeeds anywhere else: the seed's "dataset download fails on one worker".
FLAKY = (
    "import os, sys\n"
    "if os.environ['TRAINGUARD_WORKER'].endswith('/slot0'):\n"
    "    print('OSError: dataset download failed: connection reset', file=sys.stderr)\n"
    "    sys.exit(1)\n"
    "print('trained on', os.environ['TRAINGUARD_WORKER'])\n"
)
# Waits for a `go` file, then notes its task id in done.txt: how often each task succeeded.
WAIT_FOR_GO = (
    "import os, pathlib, time\n"
    "POLL = 0.02\n"
    "pathlib.Path(f\"started-{os.environ['TRAINGUARD_TASK_ID']}\").touch()\n"
    "deadline = time.monotonic() + 120\n"
    "while not pathlib.Path('go').exists():\n"
    "    if time.monotonic() > deadline:\n"
    "        raise SystemExit('no go file within 120 s')\n"
    "    time.sleep(POLL)\n"
    "with open('done.txt', 'a') as fh:\n"
    "    fh.write(os.environ['TRAINGUARD_TASK_ID'] + '\\n')\n"
)


class Queue:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.runners: list[subprocess.Popen[str]] = []

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        assert SCRIPT
        return subprocess.run(
            [SCRIPT, *args], cwd=self.folder, capture_output=True, text=True, timeout=60,
            check=False,
        )  # fmt: skip

    def submit(self, code: str, *flags: str) -> int:
        done = self.cli("submit", *flags, "--", PY, "-c", code)
        assert done.returncode == 0, done.stderr
        return int(done.stdout)

    def start(self, *args: str) -> subprocess.Popen[str]:
        assert SCRIPT
        runner = subprocess.Popen(
            [SCRIPT, "run", *args], cwd=self.folder, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        self.runners.append(runner)
        return runner

    def run(self, *args: str) -> tuple[int, str]:
        runner = self.start("--until-done", *args)
        out, _ = runner.communicate(timeout=120)
        return runner.returncode, out

    def status(self) -> dict[str, Any]:
        done = self.cli("status", "--json")
        assert done.returncode == 0, done.stderr
        result: dict[str, Any] = json.loads(done.stdout)
        return result

    def task(self, task_id: int) -> dict[str, Any]:
        return next(t for t in self.status()["tasks"] if t["id"] == task_id)

    def cleanup(self) -> None:
        for runner in self.runners:
            if runner.poll() is None:
                runner.kill()
            if runner.stdout is not None and not runner.stdout.closed:
                runner.communicate()


@pytest.fixture
def q(tmp_path: Path) -> Iterator[Queue]:
    (tmp_path / "trainguard.toml").write_text("[queue]\nslots = 2\n")
    queue = Queue(tmp_path)
    try:
        yield queue
    finally:
        queue.cleanup()


def _processes_with_token(tokens: set[str]) -> list[int]:
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get(OWNER_ENV) in tokens:
                found.append(proc.pid)
        except psutil.Error:
            continue
    return found


def test_a_failure_on_one_worker_succeeds_on_another(q: Queue) -> None:
    task_id = q.submit(FLAKY, "--name", "download")
    code, out = q.run()
    assert code == 0, out
    task = q.task(task_id)
    assert task["status"] == "done"
    attempts = task["attempts"]
    assert [(a["worker"].split("/")[1], a["outcome"]) for a in attempts] == [
        ("slot0", "failed"), ("slot1", "ok"),
    ]  # fmt: skip
    assert attempts[0]["error"].endswith("OSError: dataset download failed: connection reset")
    assert attempts[0]["exit_code"] == 1
    log = Path(attempts[0]["log_file"]).read_text()
    assert "attempt 1 of task" in log and "trained on" in log
    listed = q.cli("status").stdout
    assert "first error (attempt 1," in listed and "dataset download failed" in listed


def test_three_failures_fail_a_task_for_good_and_it_never_runs_a_fourth_time(q: Queue) -> None:
    marker = q.folder / "runs.txt"
    code_text = f"open({str(marker)!r}, 'a').write('x'); raise RuntimeError('boom')"
    task_id = q.submit(code_text)
    code, out = q.run()
    assert code == 1, out  # some task failed for good
    task = q.task(task_id)
    assert task["status"] == "failed"
    assert [a["outcome"] for a in task["attempts"]] == ["failed"] * 3
    assert marker.read_text() == "xxx"
    assert "3 failed attempts (max_retries 3)" in out
    code, out = q.run()  # a new runner does not hand it out again
    assert code == 1 and marker.read_text() == "xxx", out
    failed = q.cli("status", "--failed", "--json")
    assert [t["id"] for t in json.loads(failed.stdout)["tasks"]] == [task_id]


def test_a_non_retryable_crash_fails_after_one_attempt(q: Queue) -> None:
    task_id = q.submit("import no_such_module_anywhere")
    code, out = q.run()
    assert code == 1, out
    task = q.task(task_id)
    assert task["status"] == "failed" and len(task["attempts"]) == 1
    assert task["attempts"][0]["category"] == "import_error"
    assert "ModuleNotFoundError" in task["attempts"][0]["traceback_tail"]


def test_an_attempt_past_its_timeout_is_stopped_recorded_as_timeout_and_retried(
    q: Queue,
) -> None:
    hang = "import threading; threading.Event().wait()"
    task_id = q.submit(hang, "--timeout", "0.5", "--max-retries", "2")
    code, out = q.run()
    assert code == 1, out
    task = q.task(task_id)
    assert [a["outcome"] for a in task["attempts"]] == ["timeout", "timeout"]
    assert task["attempts"][0]["error"].startswith("timed out after 0.5 s")
    tokens = {a["token"] for a in task["attempts"]}
    assert len(tokens) == 2 and None not in tokens
    assert _processes_with_token(tokens) == []


def test_a_task_process_killed_mid_task_is_retried_on_the_other_worker(q: Queue) -> None:
    task_id = q.submit(WAIT_FOR_GO)
    runner = q.start("--until-done")
    started = q.folder / f"started-{task_id}"
    wait_until(started.exists, message="the first attempt")
    first = q.task(task_id)["attempts"][0]
    started.unlink()
    os.kill(first["pid"], signal.SIGKILL)
    wait_until(started.exists, timeout=20, message="the second attempt")
    (q.folder / "go").touch()
    out, _ = runner.communicate(timeout=60)
    assert runner.returncode == 0, out
    attempts = q.task(task_id)["attempts"]
    assert [a["outcome"] for a in attempts] == ["failed", "ok"]
    assert attempts[0]["worker"] != attempts[1]["worker"]
    assert "SIGKILL" in attempts[0]["error"]


def test_a_runner_killed_mid_run_loses_nothing_and_each_task_succeeds_once(q: Queue) -> None:
    ids = [q.submit(WAIT_FOR_GO) for _ in range(3)]
    runner = q.start()
    wait_until(lambda: len(list(q.folder.glob("started-*"))) == 2, message="two attempts")
    running = [t for t in q.status()["tasks"] if t["status"] == "running"]
    pids = [t["attempts"][0]["pid"] for t in running]
    runner.kill()  # SIGKILL: no chance to clean up
    runner.communicate()
    assert all(psutil.pid_exists(pid) for pid in pids)  # its attempts outlived it
    for started in q.folder.glob("started-*"):
        started.unlink()
    second = q.start("--until-done")
    wait_until(lambda: len(list(q.folder.glob("started-*"))) == 2, message="attempts again")
    assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"
                   for pid in pids)  # fmt: skip
    (q.folder / "go").touch()
    out, _ = second.communicate(timeout=60)
    assert second.returncode == 0, out
    assert sorted(int(x) for x in (q.folder / "done.txt").read_text().split()) == ids
    lost = [a for t in q.status()["tasks"] for a in t["attempts"] if a["outcome"] == "worker_lost"]
    assert len(lost) == 2 and not any(a["counted"] for a in lost)
    assert q.status()["counts"]["done"] == 3


def test_a_second_runner_on_the_same_ledger_exits_75(q: Queue) -> None:
    q.submit(WAIT_FOR_GO)
    first = q.start()
    wait_until(lambda: list(q.folder.glob("started-*")), message="the first runner's attempt")
    code, out = q.run()
    assert code == 75, out
    assert "another runner" in out and out.count("\n") == 1
    first.send_signal(signal.SIGINT)
    first.communicate(timeout=30)


def test_ctrl_c_stops_the_attempts_and_puts_their_tasks_back_to_pending(q: Queue) -> None:
    task_id = q.submit(WAIT_FOR_GO)
    runner = q.start()
    wait_until(lambda: list(q.folder.glob("started-*")), message="an attempt")
    pid = q.task(task_id)["attempts"][0]["pid"]
    runner.send_signal(signal.SIGINT)
    out, _ = runner.communicate(timeout=30)
    assert runner.returncode == 130, out
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"
    task = q.task(task_id)
    assert task["status"] == "pending"
    assert (task["attempts"][0]["outcome"], task["attempts"][0]["counted"]) == (
        "interrupted", False,
    )  # fmt: skip


def test_cancelling_a_running_task_stops_it(q: Queue) -> None:
    task_id = q.submit(WAIT_FOR_GO)
    runner = q.start("--until-done")
    wait_until(lambda: list(q.folder.glob("started-*")), message="an attempt")
    assert q.cli("cancel", str(task_id)).stdout.strip() == f"cancelled: [{task_id}]"
    out, _ = runner.communicate(timeout=30)
    assert runner.returncode == 0, out
    task = q.task(task_id)
    assert task["status"] == "cancelled"
    assert task["attempts"][0]["outcome"] == "interrupted"


def test_a_corrupt_ledger_is_a_one_line_error_never_recreated(q: Queue) -> None:
    ledger = q.folder / "queue" / "ledger.db"
    ledger.parent.mkdir()
    ledger.write_bytes(b"garbage" * 100)
    for args in (("status",), ("submit", "--", "true"), ("run", "--until-done")):
        done = q.cli(*args)
        assert done.returncode == 1, done
        assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
        assert "not an SQLite file" in done.stderr
    assert ledger.read_bytes() == b"garbage" * 100
    as_json = q.cli("status", "--json")
    error = json.loads(as_json.stdout)
    assert error["exit_code"] == 1 and "not an SQLite file" in error["error"]


def test_bad_task_input_is_a_one_line_error(q: Queue) -> None:
    tasks = q.folder / "tasks.jsonl"
    tasks.write_text('{"argv": ["true"]}\n{"argv": "true"}\n')
    done = q.cli("submit", "--from", str(tasks))
    assert done.returncode == 2
    assert (
        done.stderr.strip() == f"task-queue: {tasks}:2: argv: must be a non-empty list of strings"
    )
    assert q.cli("status", "--json").stdout.count('"id"') == 0  # nothing half-submitted
    tasks.write_text('{"argv": ["true"], "name": "a"}\n{"argv": ["true"], "name": "b"}\n')
    assert q.cli("submit", "--from", str(tasks)).stdout.split() == ["1", "2"]


def test_a_full_disk_stops_the_runner_and_marks_no_task_done_that_it_could_not_record(
    q: Queue, small_tmpfs: Path
) -> None:
    # Preflight's disk check would refuse the run on an 8 MiB disk: here the ledger meets it.
    (q.folder / "trainguard.toml").write_text(
        f'[queue]\nslots = 1\nledger = "{small_tmpfs / "ledger.db"}"\n'
        '[preflight]\nchecks = ["ssh", "gpu"]\n'
    )
    filler = small_tmpfs / "filler"
    # The first attempt fills the ledger's disk, then succeeds: its success cannot be recorded.
    fill = (
        "import pathlib, sys\n"
        f"filler, marker = pathlib.Path({str(filler)!r}), pathlib.Path('filled-once')\n"
        "if not marker.exists():\n"
        "    marker.touch()\n"
        "    with open(filler, 'wb', buffering=0) as fh:\n"
        "        try:\n"
        "            while True: fh.write(b'\\0' * 65536)\n"
        "        except OSError: pass\n"
    )
    task_id = q.submit(fill)
    code, out = q.run()
    assert code == 1, out
    assert "cannot write the ledger" in out and "Traceback" not in out
    filler.unlink()
    task = q.task(task_id)
    assert task["status"] == "running" and task["attempts"][0]["outcome"] is None
    code, out = q.run()  # the next runner closes it as worker_lost and runs it again
    assert code == 0, out
    attempts = q.task(task_id)["attempts"]
    assert [a["outcome"] for a in attempts] == ["worker_lost", "ok"]


def test_a_task_that_finished_just_before_ctrl_c_is_done_not_run_again(q: Queue) -> None:
    task_id = q.submit(WAIT_FOR_GO)
    runner = q.start()
    wait_until(lambda: list(q.folder.glob("started-*")), message="the attempt")
    pid = q.task(task_id)["attempts"][0]["pid"]
    # The runner frozen while the task ends, then Ctrl+C: SIGINT (2) is delivered before the
    # pending SIGCHLD (17), so the runner hears "stop" before "that one ended".
    runner.send_signal(signal.SIGSTOP)
    try:
        (q.folder / "go").touch()
        wait_until(lambda: psutil.Process(pid).status() == psutil.STATUS_ZOMBIE,
                   message="the task ended, not yet reaped")  # fmt: skip
        runner.send_signal(signal.SIGINT)
    finally:
        runner.send_signal(signal.SIGCONT)
    out, _ = runner.communicate(timeout=30)
    assert runner.returncode == 130, out
    task = q.task(task_id)
    assert task["status"] == "done", task
    assert [a["outcome"] for a in task["attempts"]] == ["ok"]
