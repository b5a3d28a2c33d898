"""Write a big, realistic training log fast, for crash-detector benchmarks.

    .venv/bin/python bench/gen_training_log.py OUT --size-mb 1024 [--seed 0]

Mostly step/loss lines, tqdm redraws (lone b"\\r" inside a line), INFO and WARNING lines, and
harmless look-alikes that a sloppy rule would take for crashes (`error_rate=0.1`,
`oom_score_adj`, `nan_count=0`). A few real crashes (CUDA OOM, NCCL timeout, a SIGKILL from the
kernel's OOM killer), each followed by the watchdog restarting the run, are spread through it,
and the log always ends with a CUDA OOM traceback. Lines are made 20,000 at a time with NumPy
choosing the kinds and numbers, and written in blocks of about 2 MB.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

MB = 1024 * 1024
BLOCK_LINES = 20_000
TOTAL_STEPS = 500_000

INFO = [
    "INFO dataloader.py:211] worker {a} prefetched {b} batches (queue depth {b})",
    "INFO checkpoint.py:88] saved checkpoints/checkpoint-{s} in {f:.1f}s",
    "INFO memory.py:41] allocated {f:.1f} GiB, reserved {g:.1f} GiB, oom_score_adj=0",
    "INFO eval.py:130] accuracy={p:.4f} error_rate={q:.4f} nan_count=0 skipped_nan_batches=0",
    "INFO trainer.py:640] throughput {a}{b}00 tokens/s on 8 ranks, no error reported",
    "INFO scheduler.py:57] lr warmup done at step {s}; timeout_s=1800 for collectives",
]
WARNINGS = [
    "WARNING distributed.py:302] slow allreduce: {f:.2f}s on rank {a} (threshold 1.00s)",
    "[W reducer.cpp:1300] Warning: find_unused_parameters=True was specified in DDP "
    "constructor, but did not find any unused parameters in the forward pass.",
    "/opt/venv/lib/python3.11/site-packages/torch/utils/data/dataloader.py:558: UserWarning: "
    "This DataLoader will create {a} worker processes in total.",
    "WARNING grad_scaler.py:77] found inf/nan in gradients at step {s}, skipping update "
    "(scale {g:.0f} -> {f:.0f})",
]
CRASHES = [
    """Traceback (most recent call last):
  File "/workspace/train.py", line 412, in <module>
    main()
  File "/workspace/train.py", line 388, in main
    loss = model(batch).loss
  File "/opt/venv/lib/python3.11/site-packages/torch/nn/modules/module.py", line 1518, in _wrapped_call_impl
    return self._call_impl(*args, **kwargs)
torch.cuda.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.15 GiB of which 1.02 GiB is free. Of the allocated memory 75.31 GiB is allocated by PyTorch, and 1.42 GiB is reserved by PyTorch but unallocated.
""",  # noqa: E501
    """[E ProcessGroupNCCL.cpp:475] [Rank 3] Watchdog caught collective operation timeout: WorkNCCL(SeqNum=18231, OpType=ALLREDUCE, NumelIn=1048576, NumelOut=1048576, Timeout(ms)=1800000) ran for 1800512 milliseconds before timing out.
[E ProcessGroupNCCL.cpp:489] Some NCCL operations have failed or timed out. Due to the asynchronous nature of CUDA kernels, subsequent GPU operations might run on corrupted/incomplete data.
terminate called after throwing an instance of 'std::runtime_error'
  what():  [Rank 3] NCCL watchdog thread terminated with exception: Watchdog caught collective operation timeout
""",  # noqa: E501
    """/workspace/run.sh: line 12: 48213 Killed                  python train.py --config cfg.json
""",
]
RESTART = (
    "INFO watchdog] daemon exited; restarting from checkpoints/checkpoint-{s} (restart {a}/3)\n"
)


@dataclass(frozen=True)
class Written:
    size: int
    lines: int
    crashes: int
    seconds: float


def write_log(path: Path, size: int, *, seed: int = 0) -> Written:
    """Write about `size` bytes (whole lines) to `path`; the last lines are a CUDA OOM crash."""
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    ending = CRASHES[0].encode()
    # Crashes in the middle at a few random places, each then restarted by the watchdog.
    crash_at = sorted(int(x) for x in rng.uniform(0.1, 0.9, size=max(1, size // (300 * MB))) * size)
    tables = _Tables(rng)
    written = lines = crashes = 0
    step = 0
    with path.open("wb") as out:
        while written < size - len(ending):
            block, count, step = _block(rng, tables, step, seconds=written // 4096)
            if crash_at and written + len(block) >= crash_at[0]:
                crash_at.pop(0)
                kind = int(rng.integers(len(CRASHES)))
                tail = CRASHES[kind] + RESTART.format(s=step // 1000 * 1000, a=crashes % 3 + 1)
                block += tail.encode()
                count += tail.count("\n")
                crashes += 1
            room = size - len(ending) - written
            if len(block) > room:  # keep whole lines
                block = block[: block.rfind(b"\n", 0, room) + 1]
                count = block.count(b"\n")
            out.write(block)
            written += len(block)
            lines += count
            if not block:
                break
        out.write(ending)
    return Written(
        written + len(ending),
        lines + ending.count(b"\n"),
        crashes + 1,
        time.perf_counter() - started,
    )


class _Tables:
    """Every number a line shows, formatted once: lines are then joined by NumPy, not f-strings."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.steps = _strings(f"{i}/{TOTAL_STEPS}" for i in range(TOTAL_STEPS))
        self.frac4 = _strings(f"{i / 10_000:.4f}" for i in range(40_000))  # 0.0000 .. 3.9999
        self.frac3 = _strings(f"{i / 1000:.3f}" for i in range(10_000))  # 0.000 .. 9.999
        self.ints = _strings(str(i) for i in range(200_000))
        self.millis = _strings(f",{i:03d} " for i in range(1000))
        self.tqdm = _strings(
            _tqdm(i % 1000, float(v)) for i, v in enumerate(rng.uniform(1, 9, 4000))
        )
        self.info = _strings(_filled(t, rng) for t in INFO for _ in range(500))
        self.warnings = _strings(_filled(t, rng) for t in WARNINGS for _ in range(500))


def _strings(items: Iterable[str]) -> npt.NDArray[Any]:
    return np.array(list(items), dtype=object)


def _filled(template: str, rng: np.random.Generator) -> str:
    a, s = int(rng.integers(0, 8)), int(rng.integers(0, TOTAL_STEPS // 1000)) * 1000
    f = float(rng.uniform(0, 80))
    return template.format(a=a, b=a + 4, s=s, f=f, g=f + 8, p=f / 80, q=f / 400) + "\n"


def _block(
    rng: np.random.Generator, tables: _Tables, step: int, *, seconds: int
) -> tuple[bytes, int, int]:
    """BLOCK_LINES lines (as bytes), their count, and the step after them."""
    kinds = rng.choice(4, size=BLOCK_LINES, p=[0.62, 0.13, 0.2, 0.05])
    lines = np.empty(BLOCK_LINES, dtype=object)
    stamps = _stamps(rng, tables, seconds, BLOCK_LINES)

    mask = kinds == 0
    n = int(mask.sum())
    steps = (step + np.arange(n)) % TOTAL_STEPS
    loss = 2.5 * np.exp(-steps / 200_000) + rng.normal(0, 0.05, n)
    lines[mask] = (
        stamps[mask]
        + "INFO trainer.py:412] step "
        + tables.steps[steps]
        + " | loss "
        + tables.frac4[np.clip(loss * 10_000, 0, 39_999).astype(np.int64)]
        + " | lr 3.00e-04 | grad_norm "
        + tables.frac3[np.minimum(rng.gamma(2.0, 600, n).astype(np.int64), 9_999)]
        + " | tokens/s "
        + tables.ints[rng.integers(90_000, 130_000, n)]
        + " | error_rate="
        + tables.frac4[rng.integers(0, 2000, n)]
        + "\n"
    )
    step += n
    mask = kinds == 1
    lines[mask] = tables.tqdm[rng.integers(len(tables.tqdm), size=int(mask.sum()))]
    for kind, pool in ((2, tables.info), (3, tables.warnings)):
        mask = kinds == kind
        lines[mask] = stamps[mask] + pool[rng.integers(len(pool), size=int(mask.sum()))]
    return "".join(lines.tolist()).encode(), BLOCK_LINES, step


def _stamps(
    rng: np.random.Generator, tables: _Tables, seconds: int, count: int
) -> npt.NDArray[Any]:
    """Timestamps, one per line, about a millisecond apart."""
    ms = seconds * 1000 + np.cumsum(rng.integers(0, 3, count))
    sec, milli = np.divmod(ms, 1000)
    first = int(sec[0])
    whole = _strings(
        time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(1_714_521_600 + s))
        for s in range(first, int(sec[-1]) + 1)
    )
    stamps: npt.NDArray[Any] = whole[sec - first] + tables.millis[milli]
    return stamps


def _tqdm(done: int, speed: float) -> str:
    """A tqdm bar redrawn a few times with b"\\r", as it looks when stderr goes to a file."""
    redraws = []
    for i in range(done, min(done + 4, 1000)):
        fill = i * 10 // 1000
        redraws.append(
            f"Epoch 3: {i // 10:3d}%|{'█' * fill}{' ' * (10 - fill)}| {i}/1000 "
            f"[01:{i % 60:02d}<02:{(1000 - i) % 60:02d}, {speed:.2f}it/s, loss=1.{i % 97:02d}]"
        )
    return "\r".join(redraws) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--size-mb", type=float, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    done = write_log(args.out, int(args.size_mb * MB), seed=args.seed)
    print(
        f"wrote {args.out}: {done.size / MB:.1f} MB, {done.lines} lines, {done.crashes} crashes "
        f"in {done.seconds:.1f}s ({done.size / MB / done.seconds:.0f} MB/s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
