"""Runs a persistent Optuna study and hangs in one chosen trial until it is killed.

usage: optuna_worker.py STORAGE NAME BUDGET HANG_AT GO_FILE -- `load_or_create` + `optimize`
of BUDGET trials minimising (x - 2)^2; trial number HANG_AT, once its x is in the storage,
writes its pid to GO_FILE and waits for a signal (the test SIGKILLs it there).
"""

from __future__ import annotations

import os
import signal
import sys

import optuna

from study_runner.optuna_study import load_or_create, optimize


def main() -> None:
    storage, name, budget, hang_at, go = sys.argv[1:6]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = load_or_create(name, storage)

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", -10.0, 10.0)
        if trial.number == int(hang_at):
            with open(f"{go}.tmp", "w") as fh:
                fh.write(str(os.getpid()))
            os.replace(f"{go}.tmp", go)  # a reader never sees an empty go file
            while True:
                signal.pause()  # mid-trial until killed
        return (x - 2.0) ** 2

    optimize(study, objective, int(budget))


if __name__ == "__main__":
    main()
