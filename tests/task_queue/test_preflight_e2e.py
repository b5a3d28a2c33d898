"""Preflight, GPU exclusion and the post_task hook through the real `task-queue run`.

There is no GPU here: GPUs are named through CUDA_VISIBLE_DEVICES (as a scheduler would set
it), which is all the local backend needs to plan its slots; no GPU reader answers, so the gpu
check passes with a warning and the tasks run on the GPU indexes they were given.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ssh_targets import needs_ssh, refusing_node
from tests.task_queue.test_run_e2e import PY, Queue
from trainguard.host import this_host


@pytest.fixture
def queue(tmp_path: Path) -> Iterator[Queue]:
    made = Queue(tmp_path)
    try:
        yield made
    finally:
        made.cleanup()


def configure(q: Queue, text: str) -> None:
    (q.folder / "trainguard.toml").write_text(f"[health]\ndisk_min_free_gb = 0\n{text}")


def attempts(q: Queue, task_id: int) -> list[dict[str, object]]:
    found: list[dict[str, object]] = q.task(task_id)["attempts"]
    return found


TOUCH_RAN = "import pathlib; pathlib.Path('ran').touch()"


@needs_ssh
def test_an_unreachable_node_refuses_the_run_starts_nothing_and_a_rerun_goes_on(
    queue: Queue,
) -> None:
    with refusing_node() as node:
        configure(queue, f'ssh_timeout = 3\n[preflight]\nnodes = ["{node}"]\n')
        task_id = queue.submit(TOUCH_RAN)
        code, out = queue.run()
    assert code == 69, out
    assert not (queue.folder / "ran").exists()
    assert f"preflight refused the run: ssh: {node}: refused after " in out
    task = queue.task(task_id)
    assert task["status"] == "pending"
    (refused,) = task["attempts"]
    assert (refused["outcome"], refused["category"], refused["counted"]) == (
        "failed",
        "preflight",
        False,
    )
    assert str(refused["error"]).startswith(f"ssh: {node}: refused")
    log = (queue.folder / "queue" / "logs" / "preflight.log").read_text()
    assert f"task {task_id} (" in log and "refused: ssh:" in log

    configure(queue, "")  # the node taken out of the list: the same ledger goes on
    code, out = queue.run()
    assert code == 0, out
    assert (queue.folder / "ran").exists()
    assert queue.task(task_id)["status"] == "done"
    assert "passed in" in (queue.folder / "queue" / "logs" / "preflight.log").read_text()


RECORD_GPU = (
    "import os\n"
    "with open('gpus.txt', 'a') as fh:\n"
    "    fh.write(os.environ['CUDA_VISIBLE_DEVICES'] + ' ' + os.environ['HIP_VISIBLE_DEVICES']"
    " + '\\n')\n"
)
POST_TASK = "import sys; open('post.txt', 'a').write(sys.argv[1] + '\\n')"


@pytest.mark.parametrize("where", ["health", "node"])
def test_excluded_gpus_are_never_handed_out_and_post_task_runs_after_each_task(
    queue: Queue, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2")
    post = json.dumps([PY, "-c", POST_TASK, "{gpus}"])
    queue_section = f'[queue]\nslots = "auto"\npost_task = {post}\n'
    if where == "health":
        configure(queue, f"excluded_gpus = [1]\n{queue_section}")
    else:
        configure(queue, f'{queue_section}[queue.nodes."{this_host()}"]\nexcluded_gpus = [1]\n')
    ids = [queue.submit(RECORD_GPU) for _ in range(6)]
    code, out = queue.run()
    assert code == 0, out
    assert "GPU 0" in out and "GPU 2" in out and "GPU 1" not in out
    seen = (queue.folder / "gpus.txt").read_text().split()
    assert len(seen) == 12 and set(seen) == {"0", "2"}
    ran_post = (queue.folder / "post.txt").read_text().split()
    assert len(ran_post) == 6 and set(ran_post) <= {"0", "2"}
    for task_id in ids:
        (attempt,) = attempts(queue, task_id)
        gpu = _gpu_of(str(attempt["worker"]))
        assert attempt["gpu_state"] == {
            "post_task": {"argv": [PY, "-c", POST_TASK, gpu], "exit_code": 0}
        }


def _gpu_of(worker: str) -> str:
    return {"slot0": "0", "slot1": "2"}[worker.rsplit("/", 1)[1]]


HANGS = "import signal\nwhile True:\n    signal.pause()\n"


def test_a_post_task_that_hangs_is_killed_and_recorded_and_the_run_goes_on(
    queue: Queue,
) -> None:
    post = json.dumps([PY, "-c", HANGS])
    configure(queue, f"[queue]\nslots = 1\npost_task = {post}\npost_task_timeout = 0.5\n")
    first, second = queue.submit("pass"), queue.submit("pass")
    code, out = queue.run()
    assert code == 0, out
    assert f"task {first} on " in out and "post_task" in out and "timed out after 0.5 s" in out
    for task_id in (first, second):
        (attempt,) = attempts(queue, task_id)
        state = attempt["gpu_state"]
        assert isinstance(state, dict)
        assert state["post_task"]["error"] == "timed out after 0.5 s and was killed"


XID_ON_GPU0 = (
    "import os, sys\n"
    "if os.environ['CUDA_VISIBLE_DEVICES'] == '0':\n"
    "    print('NVRM: Xid (PCI:0000:3b:00): 79, pid=42, GPU has fallen off the bus.',"
    " file=sys.stderr)\n"
    "    sys.exit(1)\n"
    "open('ran-on.txt', 'a').write(os.environ['CUDA_VISIBLE_DEVICES'] + '\\n')\n"
)


def test_a_gpu_hardware_crash_takes_that_gpu_out_of_the_run(
    queue: Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    configure(queue, '[queue]\nslots = "auto"\n')
    ids = [queue.submit(XID_ON_GPU0) for _ in range(4)]
    code, out = queue.run()
    assert code == 0, out
    host = this_host()
    assert f"{host}/slot0 takes no more tasks in this run (its attempt crashed with " in out
    crashed = attempts(queue, ids[0])
    assert [(a["worker"], a["outcome"], a["category"]) for a in crashed] == [
        (f"{host}/slot0", "failed", "gpu_hardware"),
        (f"{host}/slot1", "ok", None),
    ]
    assert (queue.folder / "ran-on.txt").read_text().split() == ["1"] * 4
    with sqlite3.connect(queue.folder / "queue" / "ledger.db") as db:
        later = db.execute(
            "SELECT COUNT(*) FROM attempts WHERE worker = ? AND id > ?",
            (f"{host}/slot0", 1),
        ).fetchone()[0]
    assert later == 0  # slot0 took nothing after its crash


def test_when_every_gpu_is_taken_out_the_run_ends_69(
    queue: Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    configure(queue, "[queue]\nmax_retries = 3\n")
    task_id = queue.submit(XID_ON_GPU0)
    code, out = queue.run()
    assert code == 69, out
    assert "no worker left: the GPU of each was taken out of this run" in out
    task = queue.task(task_id)
    assert task["status"] == "pending"  # failed once of 3: it runs again once a GPU is back
    assert len(task["attempts"]) == 1
