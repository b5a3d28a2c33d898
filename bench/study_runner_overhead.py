"""study-runner's cost per experiment on the local backend, against running the same commands.

    .venv/bin/python bench/study_runner_overhead.py [--experiments 100] [--slots 1] [--repeat 3]

A study whose every experiment runs `python -c pass` (a real interpreter start, as an
experiment script has): the wall time of `study-runner run STUDY.toml` (its start, the ledger,
state.json for each experiment, progress lines) against the same commands run one after the
other by a plain loop (`--slots 1`), and the difference per experiment (goal: <= 100 ms).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

BIN = Path(sys.executable).parent


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--experiments", type=int, default=100)
    parser.add_argument("--slots", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="study-bench-"))
    try:
        values = ", ".join(f'"e{i}"' for i in range(args.experiments))
        (root / "STUDY.toml").write_text(
            'name = "bench"\ncommand = ["{python}", "-c", "pass", "{item}"]\n'
            f"[grid]\nitem = [{values}]\n"
        )
        (root / "trainguard.toml").write_text(f"[queue]\nslots = {args.slots}\n")
        ours, plain = [], []
        for _ in range(args.repeat):
            shutil.rmtree(root / "bench", ignore_errors=True)
            t0 = time.perf_counter()
            subprocess.run([str(BIN / "study-runner"), "run", "STUDY.toml"], cwd=root,
                           check=True, stdout=subprocess.DEVNULL)  # fmt: skip
            ours.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            for i in range(args.experiments):
                subprocess.run([sys.executable, "-c", "pass", f"e{i}"], check=True)
            plain.append(time.perf_counter() - t0)
        med_ours, med_plain = statistics.median(ours), statistics.median(plain)
        per = (med_ours - med_plain) / args.experiments * args.slots * 1e3
        print(f"{args.experiments} experiments (`python -c pass`), {args.slots} slot(s):")
        print(f"  study-runner run: median {med_ours:.2f} s ({min(ours):.2f}-{max(ours):.2f})")
        print(f"  plain loop:       median {med_plain:.2f} s ({min(plain):.2f}-{max(plain):.2f})")
        print(f"  overhead per experiment: {per:.1f} ms (goal <= 100 ms)")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
