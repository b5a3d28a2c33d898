"""What `study_runner.optuna_study` adds per trial to plain Optuna, on the same journal file.

    .venv/bin/python bench/optuna_overhead.py [--trials 200] [--repeat 3]

A trivial objective (one float, a parabola) with the RandomSampler, so that Optuna's own
bookkeeping and the storage are all there is to time: `Study.optimize` on a fresh journal
against `load_or_create` + `optimize` on another (the owner record is one more journal write
per trial, the budget check one more read), and `load_or_create` of the finished study (the
restart's scan of its trials). Medians of --repeat runs, in ms.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import optuna
from optuna.storages.journal import JournalFileBackend

from study_runner.optuna_study import load_or_create, optimize


def parabola(trial: optuna.Trial) -> float:
    return (trial.suggest_float("x", -10.0, 10.0) - 2.0) ** 2


def one_run(root: Path, seed: int, trials: int) -> tuple[float, float, float]:
    """Milliseconds of plain optimize, ours, and a restart's load_or_create."""
    storage = optuna.storages.JournalStorage(JournalFileBackend(str(root / "plain")))
    study = optuna.create_study(storage=storage, sampler=optuna.samplers.RandomSampler(seed))
    start = time.perf_counter()
    study.optimize(parabola, n_trials=trials)
    plain = time.perf_counter() - start
    path = str(root / "ours.journal")
    ours_study = load_or_create("bench", path, sampler=optuna.samplers.RandomSampler(seed))
    start = time.perf_counter()
    optimize(ours_study, parabola, trials)
    ours = time.perf_counter() - start
    start = time.perf_counter()
    load_or_create("bench", path, warm_start=False)
    reload = time.perf_counter() - start
    return plain * 1000, ours * 1000, reload * 1000


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    plain, ours, reload = [], [], []
    for seed in range(args.repeat):
        root = Path(tempfile.mkdtemp(prefix="optuna-bench-"))
        try:
            times = one_run(root, seed, args.trials)
        finally:
            shutil.rmtree(root)
        plain.append(times[0])
        ours.append(times[1])
        reload.append(times[2])
    p, o = statistics.median(plain), statistics.median(ours)
    print(f"{args.trials} trials, journal file, median of {args.repeat}:")
    print(f"  plain Study.optimize     {p:8.1f} ms  ({p / args.trials:.2f} ms/trial)")
    print(f"  optuna_study.optimize    {o:8.1f} ms  ({o / args.trials:.2f} ms/trial)")
    print(f"  added per trial          {(o - p) / args.trials:8.2f} ms")
    print(f"  load_or_create (restart) {statistics.median(reload):8.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
