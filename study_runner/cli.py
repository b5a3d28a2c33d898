"""study-runner: a study of many experiments that survive each other's failures.

`main(argv) -> int` is the console script.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from study_runner.display import Display
from study_runner.experiment_dir import PHASES, phase_of, read_state
from study_runner.run import LEDGER, out_dir, run_study, study_of
from study_runner.study_file import load_study
from task_queue.backend_options import backend_options
from task_queue.ledger import Ledger, LedgerError
from trainguard.argparsing import base_parser, config_option, run_cli
from trainguard.config import load_config
from trainguard.errors import UsageError

PROG = "study-runner"
EXIT_CODES = """\
  0   every experiment completed      1   some failed (the study went on)
  2   bad command line                66  optuna: no such study or storage file
  69  no worker could take them, or preflight refused the run
  75  another runner holds the study  78  bad STUDY.toml or trainguard.toml
  130 interrupted: running experiments marked interrupted; resume runs them"""


def build_parser() -> argparse.ArgumentParser:
    parser = base_parser(
        PROG, "Run a study of many experiments; one failing never stops it.",
        exit_codes=EXIT_CODES,
    )  # fmt: skip
    config = config_option(also_top_level=True)
    backend = backend_options()
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    run = commands.add_parser("run", parents=[config, backend], help="run a STUDY.toml")
    run.add_argument("study", type=Path, metavar="STUDY.toml")
    run.add_argument("--out", type=Path, metavar="DIR", help="default: NAME beside the study")
    run.add_argument("--force", action="store_true", help="re-run completed ones (--filter)")
    run.add_argument("--filter", metavar="GLOB", help="with --force: which experiments")
    run.add_argument("--dry-run", action="store_true", help="list what would run and why")
    resume = commands.add_parser(
        "resume", parents=[config, backend], help="run the failed, interrupted and pending ones"
    )
    resume.add_argument("out", type=Path, metavar="DIR")
    status = commands.add_parser("status", parents=[config], help="where a study stands")
    status.add_argument("out", type=Path, metavar="DIR")
    status.add_argument("--show-failed", action="store_true", help="each failed one's error")
    status.add_argument("--json", action="store_true", help="print the contract's JSON")
    optuna = commands.add_parser("optuna", help="where a persistent Optuna study stands")
    optuna.add_argument("name", metavar="NAME")
    optuna.add_argument(
        "--storage",
        metavar="PATH_OR_URL",
        help="a journal file, SQLite file or URL (default: optuna/NAME.journal)",
    )
    optuna.add_argument("--json", action="store_true", help="print JSON")
    demo = commands.add_parser("demo", help="a small study with failing experiments, finished")
    demo.add_argument("--keep", action="store_true", help="keep its folder")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    return run_cli(PROG, _dispatch, words, json_errors="--json" in words)


def _dispatch(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        from study_runner.demo import run_demo

        return run_demo(keep=args.keep)
    if args.command == "optuna":
        from study_runner.optuna_view import show

        return show(args.name, args.storage, as_json=args.json)
    try:
        if args.command == "status":
            return _status(args.out.resolve(), show_failed=args.show_failed, as_json=args.json)
        cfg = load_config(getattr(args, "config", None))
        if args.command == "run":
            if args.filter and not args.force:
                raise UsageError("run: --filter selects what --force re-runs: give both")
            if args.force and not args.filter:
                raise UsageError("run: --force needs --filter GLOB (e.g. --filter '*_8bit')")
            study = load_study(args.study)
            out = out_dir(study, args.out)
        else:
            out = args.out.resolve()
            study = study_of(out)
        slots = args.slots if args.slots is not None else cfg.queue.slots
        scheduler = args.scheduler if args.scheduler is not None else cfg.queue.scheduler
        with Display() as display:
            return run_study(
                study,
                out,
                cfg,
                force=args.filter if getattr(args, "force", False) else None,
                dry_run=getattr(args, "dry_run", False),
                backend=args.backend or cfg.queue.backend,
                scheduler=scheduler,
                slots=slots,
                display=display,
            )
    except sqlite3.Error as exc:
        raise LedgerError(f"{exc}") from None


def _status(out: Path, *, show_failed: bool, as_json: bool) -> int:
    study = study_of(out)
    with Ledger.open(out / LEDGER) as ledger:
        tasks = ledger.tasks()
    counts: Counter[str] = Counter()
    rows: list[dict[str, Any]] = []
    for task in tasks:
        phase = phase_of(task)
        counts[phase] += 1
        state = read_state(out / task.name)
        last_error = next((a.error for a in reversed(task.attempts) if a.error), None)
        rows.append({
            "name": task.name,
            "phase": phase,
            "error": last_error if phase in ("failed", "interrupted") else None,
            "predictions_complete": state.get("predictions_complete"),
            "total_questions": state.get("total_questions"),
            "attempts": len(task.attempts),
        })  # fmt: skip
    if as_json:
        print(json.dumps({
            "study": study.name,
            "out": str(out),
            "counts": {phase: counts[phase] for phase in PHASES},
            "experiments": rows,
        }))  # fmt: skip
        return 0
    print(f"study {study.name} in {out}: " + ", ".join(f"{counts[p]} {p}" for p in PHASES))
    for row in rows:
        done = ""
        if row["total_questions"]:
            done = f"  {row['predictions_complete'] or 0}/{row['total_questions']}"
        line = f"  {row['phase']:<11} {row['name']}{done}"
        if show_failed and row["phase"] == "failed":
            line += f"\n      {row['error']}\n      see {out / row['name'] / 'error.log'}"
        print(line)
    return 0
