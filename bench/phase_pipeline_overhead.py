"""phase-pipeline's cost per phase, against running the same commands one after the other.

    .venv/bin/python bench/phase_pipeline_overhead.py [--phases 20] [--repeat 5]

A pipeline of N phases, each depending on the one before and running `python -c pass` (a
real interpreter start, as a phase script has): the wall time of `phase-pipeline run` (its
start, the ledger, the state file written before and after each phase, the output check, the
per-phase engine loop) against a plain loop of the same commands, and the difference per phase.
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
    parser.add_argument("--phases", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="pipeline-bench-"))
    try:
        lines = ['name = "bench"']
        for i in range(args.phases):
            needs = f'depends_on = ["p{i - 1}"]\n' if i else ""
            lines.append(
                f'[[phases]]\nname = "p{i}"\ncommand = ["{{python}}", "-c", "pass"]\n{needs}'
            )
        (root / "PIPELINE.toml").write_text("\n".join(lines))
        ours, plain = [], []
        for _ in range(args.repeat):
            shutil.rmtree(root / "runs", ignore_errors=True)
            t0 = time.perf_counter()
            subprocess.run([str(BIN / "phase-pipeline"), "run", "PIPELINE.toml"], cwd=root,
                           check=True, stdout=subprocess.DEVNULL)  # fmt: skip
            ours.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            for _phase in range(args.phases):
                subprocess.run([sys.executable, "-c", "pass"], check=True)
            plain.append(time.perf_counter() - t0)
        med_ours, med_plain = statistics.median(ours), statistics.median(plain)
        per = (med_ours - med_plain) / args.phases * 1e3
        print(f"{args.phases} phases (`python -c pass`), one after the other:")
        print(f"  phase-pipeline run: median {med_ours:.2f} s ({min(ours):.2f}-{max(ours):.2f})")
        print(f"  plain loop:         median {med_plain:.2f} s ({min(plain):.2f}-{max(plain):.2f})")
        print(f"  overhead per phase: {per:.1f} ms (the runner's own start included)")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
