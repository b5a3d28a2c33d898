"""What checking checkpoints costs: finding them, the quick check (health-check, prune's
deletions), the deep check (every CRC: before resuming, prune's kept ones) and a cached
re-check (the watchdog's periodic prune).

    .venv/bin/python bench/checkpoint_validation.py [--checkpoints 50] [--gb 3.5] [--dir DIR]

Builds `--checkpoints` Hugging Face-shaped folders in a temporary folder (or `--dir`, which
should sit on the disk you care about), each with a model.safetensors, trainer_state.json and an
optimizer.pt of `--gb` GB written sparse (a zip member that is one hole: no disk used, but
every byte is read back as zeros by the deep check, so reads cost page-cache speed, not the
disk's). The newest one's optimizer.pt is the only big one unless `--all-big`.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.trainguard.test_checkpoints import (  # noqa: E402
    make_checkpoint,
    write_sparse_torch_zip,
    write_torch_zip,
)
from trainguard import checkpoint_validation  # noqa: E402
from trainguard.checkpoints import find_candidates, inspect, newest_valid  # noqa: E402
from trainguard.config import CheckpointsSection  # noqa: E402


def timed(label: str, func, repeat: int = 1) -> float:  # type: ignore[no-untyped-def]
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        func()
        best = min(best, time.perf_counter() - started)
    print(f"{label:<52} {best * 1e3:10.1f} ms")
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoints", type=int, default=50)
    parser.add_argument("--gb", type=float, default=3.5)
    parser.add_argument("--dir", type=Path)
    parser.add_argument("--all-big", action="store_true")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="ckpt-bench-", dir=args.dir))
    try:
        folder = root / "checkpoints"
        size = int(args.gb * 1e9)
        for n in range(1, args.checkpoints + 1):
            ckpt = make_checkpoint(folder, n * 100)
            if args.all_big or n == args.checkpoints:
                write_sparse_torch_zip(ckpt / "optimizer.pt", size)
            else:
                write_torch_zip(ckpt / "optimizer.pt")
        rules = CheckpointsSection(keep_last=3)
        print(f"{args.checkpoints} checkpoints, newest optimizer.pt {args.gb:g} GB (sparse), "
              f"in {root}")  # fmt: skip
        timed("find_candidates (names; no walk inside)", lambda: find_candidates(folder), repeat=5)
        newest = find_candidates(folder)[-1]
        timed("quick check of the newest", lambda: inspect(newest, rules, deep=False), repeat=5)
        checkpoint_validation._ZIP_VERDICTS.clear()
        took = timed("deep check of the newest (every CRC)", lambda: inspect(newest, rules))
        print(f"{'':<52} {args.gb / took:10.2f} GB/s")
        timed("deep check again (verdict remembered)", lambda: inspect(newest, rules), repeat=5)
        checkpoint_validation._ZIP_VERDICTS.clear()
        timed("newest_valid, cold (what a restart chooses)", lambda: newest_valid(folder, rules))
    finally:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
