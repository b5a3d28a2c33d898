"""task-queue against plain tools, side by side in one run.

    .venv/bin/python bench/task_queue_speed.py [--tasks 1000] [--slots 2] [--ledger-tasks 100000]
        [--repeat 3]

1. local backend: `--tasks` tasks running `true` (`task-queue submit --from`, then the wall
   time of `task-queue run --slots N --until-done`, its start included) against
   `xargs -P N -n 1` running the same `true` commands (goal: <= 1.5x);
2. `task-queue status --json` on a ledger of `--ledger-tasks` tasks, each with one finished
   attempt (built through the ledger's own API; goal: <= 0.5 s).

Every measurement runs `--repeat` times; the median and the range are printed. Everything
lives in a temporary folder, removed at the end.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from task_queue.ledger import AttemptEnd, Ledger, TaskSpec

BIN = Path(sys.executable).parent


def timed(run: Callable[[], object], repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return times


def summary(times: Sequence[float]) -> str:
    return f"median {statistics.median(times):.3f} s (range {min(times):.3f}-{max(times):.3f})"


def local_vs_xargs(root: Path, tasks: int, slots: int, repeat: int) -> tuple[float, float]:
    folder = root / "local"
    folder.mkdir()
    (folder / "tasks.jsonl").write_text('{"argv": ["true"]}\n' * tasks)
    queue = str(BIN / "task-queue")

    def run_queue() -> None:
        shutil.rmtree(folder / "queue", ignore_errors=True)
        subprocess.run([queue, "submit", "--from", "tasks.jsonl"], cwd=folder, check=True,
                       stdout=subprocess.DEVNULL)  # fmt: skip
        started = time.perf_counter()
        done = subprocess.run(
            [queue, "run", "--slots", str(slots), "--until-done"], cwd=folder,
            stdout=subprocess.DEVNULL, check=False,
        )  # fmt: skip
        run_times.append(time.perf_counter() - started)
        if done.returncode != 0:
            raise SystemExit(f"task-queue run exited {done.returncode}")

    run_times: list[float] = []
    for _ in range(repeat):
        run_queue()
    xargs = timed(
        lambda: subprocess.run(
            ["xargs", "-P", str(slots), "-n", "1", "true"], input=b"x\n" * tasks, check=True
        ),
        repeat,
    )
    print(f"{tasks} x `true` on {slots} slots")
    print(f"  task-queue run --until-done: {summary(run_times)}")
    print(f"  xargs -P {slots} -n 1 true:       {summary(xargs)}")
    ratio = statistics.median(run_times) / statistics.median(xargs)
    print(f"  ratio {ratio:.2f}x (goal <= 1.5x)")
    return statistics.median(run_times), statistics.median(xargs)


def status_on_big_ledger(root: Path, count: int, repeat: int) -> float:
    folder = root / "big"
    folder.mkdir()
    path = folder / "queue" / "ledger.db"
    started = time.perf_counter()
    with Ledger.open(path, create=True) as ledger:
        ids = ledger.submit([TaskSpec(argv=("true",), cwd="/")] * count)
        for task_id in ids:  # one finished attempt each, as after a real run
            claimed = ledger.claim(f"w{task_id % 4}", "h", workers=["w0"], token="t")
            assert claimed is not None
            ledger.finish(claimed[1].id, AttemptEnd("ok", exit_code=0), task_status="done")
    print(f"\nbuilt a {count}-task ledger in {time.perf_counter() - started:.1f} s "
          f"({path.stat().st_size / 2**20:.1f} MiB)")  # fmt: skip
    queue = str(BIN / "task-queue")
    out: list[bytes] = []

    def status() -> None:
        done = subprocess.run(
            [queue, "status", "--json"], cwd=folder, capture_output=True, check=True
        )
        out.append(done.stdout)

    times = timed(status, repeat)
    assert json.loads(out[-1])["counts"]["done"] == count
    print(f"task-queue status --json ({len(out[-1]) / 2**20:.1f} MiB of JSON): {summary(times)}"
          " (goal <= 0.5 s)")  # fmt: skip
    return statistics.median(times)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--ledger-tasks", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="tq-bench-"))
    try:
        local_vs_xargs(root, args.tasks, args.slots, args.repeat)
        if args.ledger_tasks:
            status_on_big_ledger(root, args.ledger_tasks, args.repeat)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
