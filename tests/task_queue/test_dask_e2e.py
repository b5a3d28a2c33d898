"""`task-queue run --backend dask`: a real cluster of named Dask workers (nanny processes)."""

from __future__ import annotations

import os
import signal
import time

import psutil
import pytest

from tests.polling import wait_until
from tests.task_queue.test_run_e2e import FLAKY, Queue, q  # noqa: F401 - the fixture

pytest.importorskip("distributed", reason="the dask extra is part of the dev install")

# Notes its own pid in started-<task id>, waits for a `go` file, then succeeds.
WAIT_FOR_GO = (
    "import os, pathlib, time\n"
    "POLL = 0.02\n"
    "started = pathlib.Path(f\"started-{os.environ['TRAINGUARD_TASK_ID']}\")\n"
    "started.write_text(f\"{os.getpid()} {os.environ['TRAINGUARD_WORKER']}\")\n"
    "deadline = time.monotonic() + 120\n"
    "while not pathlib.Path('go').exists():\n"
    "    if time.monotonic() > deadline:\n"
    "        raise SystemExit('no go file within 120 s')\n"
    "    time.sleep(POLL)\n"
)


def test_a_failure_on_one_dask_worker_succeeds_on_another(q: Queue) -> None:  # noqa: F811
    task_id = q.submit(FLAKY, "--name", "download")
    code, out = q.run("--backend", "dask")
    assert code == 0, out
    assert "Dask at a local cluster" in out
    attempts = q.task(task_id)["attempts"]
    assert [(a["worker"].split("/")[1], a["outcome"]) for a in attempts] == [
        ("slot0", "failed"), ("slot1", "ok"),
    ]  # fmt: skip
    assert "dataset download failed" in attempts[0]["error"]


def test_a_dask_worker_killed_mid_task_has_its_task_run_elsewhere_and_its_process_killed(
    q: Queue,  # noqa: F811
) -> None:
    task_id = q.submit(WAIT_FOR_GO)
    runner = q.start("--backend", "dask", "--until-done")
    started = q.folder / f"started-{task_id}"
    text = wait_until(lambda: started.exists() and started.read_text(), timeout=60,
                      message="the first attempt")  # fmt: skip
    pid_text, first_worker = str(text).split()
    task_proc = psutil.Process(int(pid_text))
    worker_proc = task_proc.parent()
    assert worker_proc is not None
    started.unlink()
    killed_at = time.monotonic()
    os.kill(worker_proc.pid, signal.SIGKILL)
    second = wait_until(lambda: started.exists() and started.read_text(), timeout=60,
                        message="the attempt on another worker")  # fmt: skip
    print(f"reassigned {time.monotonic() - killed_at:.2f} s after the worker's SIGKILL")
    assert str(second).split()[1] != first_worker
    # The orphaned attempt on the dead worker's machine was killed by its token before the
    # task ran again: never two copies of one task at once.
    assert not _alive(task_proc)
    (q.folder / "go").touch()
    out, _ = runner.communicate(timeout=60)
    assert runner.returncode == 0, out
    attempts = q.task(task_id)["attempts"]
    assert [a["outcome"] for a in attempts] == ["worker_lost", "ok"]
    assert attempts[0]["error"] == f"lost: worker {first_worker} died while it ran"
    assert attempts[0]["counted"] is True


def test_an_unreachable_scheduler_is_exit_69_in_one_line(q: Queue) -> None:  # noqa: F811
    q.submit("pass")
    code, out = q.run("--backend", "dask", "--scheduler", "tcp://127.0.0.1:9")
    assert code == 69, out
    assert out.count("\n") == 1 and "cannot reach the Dask scheduler at tcp://127.0.0.1:9" in out


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
