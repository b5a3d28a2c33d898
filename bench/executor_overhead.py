"""ResilientExecutor against a plain loop over the same batches (goal: <= 2 % slower when a
batch takes >= 10 ms, with the per-batch fsync on).

    .venv/bin/python bench/executor_overhead.py [--work sleep|numpy] [--batches 200]
        [--batch-size 32] [--batch-ms 10] [--repeat 5] [--dir DIR] [--fsync-interval S|none]

`fn` stands for a forward pass: `sleep` sleeps --batch-ms per batch (the GPU computing while
the host waits); `numpy` does about that much matrix work on the CPU (holding a core, as a
tokenizer or a CPU model would; BLAS is held to one thread unless its variables are set, so
runs do not fight over the cores). The plain loop only collects the predictions in a list; the
executor writes every batch's records to a JSON-lines file (in a temporary folder under
--dir, default the system's) and fsyncs it after each batch (fsync_interval=0, the default;
`--fsync-interval none` shows the cost without the fsync thread).
Runs alternate plain / executor, --repeat times; the medians and ranges are printed, and the
number of fsyncs the executor made (counted by wrapping os.fsync in this process).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # before numpy loads BLAS

import numpy as np  # noqa: E402

from study_runner import ResilientExecutor  # noqa: E402


def make_fn(work: str, batch_ms: float) -> Callable[[list[int]], list[str]]:
    """A batch's predictions after ~batch_ms of `work`."""
    if work == "sleep":

        def waits(batch: list[int]) -> list[str]:
            time.sleep(batch_ms / 1000)
            return [f"answer to question {i}: " + "lorem ipsum " * 12 for i in batch]

        return waits
    rng = np.random.default_rng(0)
    a = rng.standard_normal((256, 256))
    rounds = calibrate(lambda: a @ a, batch_ms)

    def computes(batch: list[int]) -> list[str]:
        for _ in range(rounds):
            a @ a
        return [f"answer to question {i}: " + "lorem ipsum " * 12 for i in batch]

    return computes


def calibrate(step: Callable[[], object], batch_ms: float) -> int:
    """How many `step`s take batch_ms on this machine (median of a few timings)."""
    times = []
    for _ in range(20):
        start = time.perf_counter()
        for _ in range(10):
            step()
        times.append((time.perf_counter() - start) / 10)
    return max(1, round(batch_ms / 1000 / statistics.median(times)))


def plain(items: list[int], fn: Callable[[list[int]], list[str]], batch_size: int) -> None:
    predictions: list[str] = []
    for start in range(0, len(items), batch_size):
        predictions.extend(fn(items[start : start + batch_size]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", choices=("sleep", "numpy"), default="sleep")
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batch-ms", type=float, default=10.0)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--dir", default=None, help="where the temporary results files go")
    parser.add_argument(
        "--fsync-interval",
        type=lambda v: None if v == "none" else float(v),
        default=0.0,
        help="the executor's fsync_interval (seconds, or none: only at the end)",
    )
    args = parser.parse_args(argv)

    fsyncs = 0
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        nonlocal fsyncs
        fsyncs += 1
        real_fsync(fd)

    os.fsync = counting_fsync  # type: ignore[assignment]

    fn = make_fn(args.work, args.batch_ms)
    items = list(range(args.batches * args.batch_size))
    plain_s: list[float] = []
    executor_s: list[float] = []
    with tempfile.TemporaryDirectory(prefix="executor-bench-", dir=args.dir) as tmp:
        for run in range(args.repeat):
            start = time.perf_counter()
            plain(items, fn, args.batch_size)
            plain_s.append(time.perf_counter() - start)

            results = Path(tmp) / f"predictions-{run}.jsonl"
            ex = ResilientExecutor(
                batch_size=args.batch_size, results=results, fsync_interval=args.fsync_interval
            )
            before = fsyncs
            start = time.perf_counter()
            records = ex.run(items, fn)
            executor_s.append(time.perf_counter() - start)
            assert len(records) == len(items) and "error" not in records[-1]
            made = fsyncs - before
        size = results.stat().st_size

    overheads = [100 * (e - p) / p for p, e in zip(plain_s, executor_s, strict=True)]
    per_batch_us = [1e6 * (e - p) / args.batches for p, e in zip(plain_s, executor_s, strict=True)]
    print(
        f"{args.batches} batches of {args.batch_size}, fn: {args.work} ~{args.batch_ms:g} ms, "
        f"{args.repeat} runs each, fsync_interval={args.fsync_interval}, "
        f"Python {sys.version.split()[0]}"
    )
    print(f"results file: {size / 1e6:.1f} MB, {made} fsyncs in the last run")
    print(f"plain loop:  median {statistics.median(plain_s):.3f} s  {rng(plain_s, 's', 3)}")
    print(f"executor:    median {statistics.median(executor_s):.3f} s  {rng(executor_s, 's', 3)}")
    print(
        f"overhead:    median {statistics.median(overheads):+.2f} %  {rng(overheads, '%', 2)}"
        f"  ({statistics.median(per_batch_us):+.0f} us a batch)  goal: <= 2 %"
    )
    return 0


def rng(values: list[float], unit: str, digits: int) -> str:
    return f"(range {min(values):.{digits}f}-{max(values):.{digits}f} {unit})"


if __name__ == "__main__":
    raise SystemExit(main())
