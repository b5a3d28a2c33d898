"""`--backend`, `--scheduler`, `--slots`: how a runner's tasks reach workers, on the command line
of every runner (`task-queue run`, `study-runner run` / `resume`)."""

from __future__ import annotations

import argparse


def backend_options() -> argparse.ArgumentParser:
    """A parent parser with the three options ([queue] keys give their defaults)."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--backend", choices=("local", "dask"),
                        help="local GPU slots, or Dask workers ([queue] backend)")  # fmt: skip
    parent.add_argument("--scheduler", metavar="ADDR",
                        help="the Dask scheduler (default: a local cluster)")  # fmt: skip
    parent.add_argument("--slots", type=int, metavar="N",
                        help="workers of the local backend ([queue] slots)")  # fmt: skip
    return parent
