"""task-queue's Dask backend against bare `client.submit`, on one cluster started by hand.

    .venv/bin/python bench/task_queue_dask.py [--tasks 200] [--workers 2] [--repeat 3]

Starts `dask scheduler --scheduler-file F` and `--workers` x `dask worker --scheduler-file F
--name bench/gpuN --nthreads 1` (as docs/task-queue.md says to start them by hand), then:

1. `--tasks` tasks running `true`: `task-queue run --backend dask --scheduler ADDR
   --until-done` (a process: imports, connect, version checks, the ledger) against a script
   (a process too: imports, connect) that `client.submit`s the same subprocess call for each
   task and gathers them (goal: <= 1.3x);
2. a worker SIGKILLed while it runs a task: the time until that task runs again on the other
   worker (its `started` file reappears; goal: <= 2 s).

Everything it starts is killed at the end; the temporary folder is removed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

BIN = Path(sys.executable).parent
WAIT = (
    "import os, pathlib, time\n"
    "p = pathlib.Path('started'); p.write_text(str(os.getpid()))\n"
    "while not pathlib.Path('go').exists(): time.sleep(0.01)\n"
)


def wait_for(check: object, what: str, timeout: float = 60.0) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()  # type: ignore[operator]
        if value:
            return value
        time.sleep(0.01)
    raise SystemExit(f"timed out waiting for {what}")


BARE = """
import subprocess, sys
from distributed import Client
with Client(sys.argv[1]) as client:
    futures = [client.submit(subprocess.run, ["true"], check=True, pure=False)
               for _ in range(int(sys.argv[2]))]
    client.gather(futures)
"""


def bare_submit(address: str, tasks: int) -> None:
    """The same work with nothing but Dask, as a user's script would: a fresh process that
    imports distributed, connects, submits and gathers."""
    subprocess.run([sys.executable, "-c", BARE, address, str(tasks)], check=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="tq-dask-bench-"))
    started: list[subprocess.Popen[bytes]] = []
    sched_file = root / "scheduler.json"
    try:
        log = open(root / "cluster.log", "wb")  # noqa: SIM115 - closed at the end
        started.append(subprocess.Popen(
            [str(BIN / "dask"), "scheduler", "--scheduler-file", str(sched_file),
             "--no-dashboard", "--host", "127.0.0.1"], stdout=log, stderr=log,
        ))  # fmt: skip
        wait_for(sched_file.exists, "the scheduler")
        address = json.loads(sched_file.read_text())["address"]
        for n in range(args.workers):
            started.append(subprocess.Popen(
                [str(BIN / "dask"), "worker", "--scheduler-file", str(sched_file),
                 "--name", f"bench/gpu{n}", "--nthreads", "1", "--no-dashboard"],
                stdout=log, stderr=log,
            ))  # fmt: skip
        from distributed import Client

        with Client(address) as probe:  # type: ignore[no-untyped-call]
            probe.wait_for_workers(args.workers, timeout=60)
        print(f"cluster: scheduler {address}, {args.workers} workers (dask worker --name ...)")

        folder = root / "queue"
        folder.mkdir()
        (folder / "tasks.jsonl").write_text('{"argv": ["true"]}\n' * args.tasks)
        queue = str(BIN / "task-queue")
        ours, bare = [], []
        for _ in range(args.repeat):
            shutil.rmtree(folder / "queue", ignore_errors=True)
            subprocess.run([queue, "submit", "--from", "tasks.jsonl"], cwd=folder, check=True,
                           stdout=subprocess.DEVNULL)  # fmt: skip
            t0 = time.perf_counter()
            done = subprocess.run(
                [queue, "run", "--backend", "dask", "--scheduler", address, "--until-done"],
                cwd=folder, stdout=subprocess.DEVNULL, check=False,
            )  # fmt: skip
            ours.append(time.perf_counter() - t0)
            if done.returncode != 0:
                raise SystemExit(f"task-queue run exited {done.returncode}")
            t0 = time.perf_counter()
            bare_submit(address, args.tasks)
            bare.append(time.perf_counter() - t0)
        med_ours, med_bare = statistics.median(ours), statistics.median(bare)
        print(f"{args.tasks} x `true` on {args.workers} Dask workers:")
        print(f"  task-queue run --backend dask: median {med_ours:.2f} s "
              f"({min(ours):.2f}-{max(ours):.2f})")  # fmt: skip
        print(f"  bare client.submit + gather:   median {med_bare:.2f} s "
              f"({min(bare):.2f}-{max(bare):.2f})")  # fmt: skip
        print(f"  ratio {med_ours / med_bare:.2f}x (goal <= 1.3x)")

        # a worker killed mid-task
        shutil.rmtree(folder / "queue", ignore_errors=True)
        subprocess.run([queue, "submit", "--", sys.executable, "-c", WAIT], cwd=folder,
                       check=True, stdout=subprocess.DEVNULL)  # fmt: skip
        runner = subprocess.Popen(
            [queue, "run", "--backend", "dask", "--scheduler", address, "--until-done"],
            cwd=folder, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        started.append(runner)
        marker = folder / "started"
        pid = int(str(wait_for(lambda: marker.exists() and marker.read_text(), "the task")))
        worker_pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        marker.unlink()
        t0 = time.perf_counter()
        os.kill(worker_pid, signal.SIGKILL)
        wait_for(marker.exists, "the task on another worker")
        print(f"worker SIGKILLed mid-task -> running again elsewhere after "
              f"{time.perf_counter() - t0:.2f} s (goal <= 2 s)")  # fmt: skip
        (folder / "go").touch()
        runner.wait(timeout=60)
    finally:
        for proc in reversed(started):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in started:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
