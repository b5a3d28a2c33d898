"""`task-queue run --backend dask`: a real cluster of named Dask workers (nanny processes)."""

from __future__ import annotations

import json
import os
import signal
import sys
import time

import psutil
import pytest

from tests.polling import wait_until
from tests.task_queue.test_preflight_e2e import POST_TASK, XID_ON_GPU0
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


def test_on_dask_a_gpu_hardware_crash_retires_its_worker_and_post_task_runs_there(
    q: Queue,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")  # the local cluster pins one per worker
    post = json.dumps([sys.executable, "-c", POST_TASK, "{gpus}"])
    (q.folder / "trainguard.toml").write_text(
        f'[health]\ndisk_min_free_gb = 0\n[queue]\nslots = "auto"\npost_task = {post}\n'
    )
    ids = [q.submit(XID_ON_GPU0)]
    code, out = q.run("--backend", "dask")
    assert code == 0, out
    assert "/slot0 takes no more tasks in this run (its attempt crashed with gpu_hardware)" in out
    first = q.task(ids[0])["attempts"]
    assert [(a["worker"].split("/")[1], a["outcome"]) for a in first] == [
        ("slot0", "failed"), ("slot1", "ok"),
    ]  # fmt: skip
    assert (q.folder / "ran-on.txt").read_text().split() == ["1"]
    # The hook ran on the worker after every attempt, with that worker's GPU.
    assert sorted((q.folder / "post.txt").read_text().split()) == ["0", "1"]
    assert first[0]["gpu_state"]["post_task"]["exit_code"] == 0
