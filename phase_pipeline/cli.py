"""phase-pipeline: an experiment's ordered phases, resumed where it failed.

`main(argv) -> int` is the console script.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from phase_pipeline.pipeline_file import load_pipeline
from phase_pipeline.run import LEDGER, Options, run_pipeline
from phase_pipeline.state_file import (
    PHASE_STATUSES,
    PipelineState,
    read_state,
    state_file_of,
    write_state,
)
from task_queue.ledger import Ledger, LedgerError, runner_lock
from trainguard.argparsing import base_parser, config_option, run_cli
from trainguard.config import load_config
from trainguard.errors import ConfigError, UsageError

PROG = "phase-pipeline"
EXIT_CODES = """exit codes:
  0   every phase completed (status, mark: done)
  1   a phase failed (the FAILURE RECOVERY INSTRUCTIONS say how to resume)
  2   bad command line (an unknown --phase, a --phase whose dependency is not completed)
  69  preflight refused a phase (a missing input or checkpoint); nothing was started
  75  another runner holds this run
  78  bad PIPELINE.toml or trainguard.toml, or an unreadable state file (left as it is)
  130 interrupted (Ctrl+C, SIGTERM): the phase was stopped, the state kept"""


def build_parser() -> argparse.ArgumentParser:
    parser = base_parser(PROG, "Run an experiment's phases in order; resume where it failed.")
    parser.epilog = EXIT_CODES
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    config = config_option(also_top_level=True)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    run = commands.add_parser("run", parents=[config], help="run (or resume) a PIPELINE.toml",
                              epilog=EXIT_CODES,
                              formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    run.add_argument("pipeline", type=Path, metavar="PIPELINE.toml")
    run.add_argument("--out", type=Path, metavar="DIR",
                     help="where a new run's folder goes (default: runs/ beside it)")  # fmt: skip
    run.add_argument("--phase", action="append", default=[], metavar="NAME",
                     help="run only this phase (repeatable); its dependencies must be "
                          "completed")  # fmt: skip
    run.add_argument("--resume", type=Path, metavar="STATE_FILE",
                     help="go on with the run of this .experiment_state: skip completed "
                          "phases, run failed, in-progress and pending ones")  # fmt: skip
    run.add_argument("--checkpoint", type=Path, metavar="PATH",
                     help="start from this checkpoint: the phases that provide one count as "
                          "completed")  # fmt: skip
    run.add_argument("--dry-run", action="store_true", help="print the plan; run nothing")
    status = commands.add_parser("status", parents=[config], help="where a run stands")
    status.add_argument("state", type=Path, metavar="STATE_FILE")
    status.add_argument("--json", action="store_true", help="print the contract's JSON")
    mark = commands.add_parser("mark", parents=[config], help="set a phase's status by hand")
    mark.add_argument("state", type=Path, metavar="STATE_FILE")
    mark.add_argument("phase", metavar="PHASE")
    mark.add_argument("status", choices=("pending", "completed", "failed"))
    demo = commands.add_parser("demo", help="a pipeline whose third phase fails once, resumed")
    demo.add_argument("--keep", action="store_true", help="keep its folder")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    return run_cli(PROG, _dispatch, words, json_errors="--json" in words)


def _dispatch(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        from phase_pipeline.demo import run_demo

        return run_demo(keep=args.keep)
    try:
        if args.command == "status":
            return _status(state_file_of(args.state), as_json=args.json)
        if args.command == "mark":
            return _mark(state_file_of(args.state), args.phase, args.status)
        cfg = load_config(args.config)
        pipeline = load_pipeline(args.pipeline)
        opts = Options(
            out=args.out,
            resume=args.resume,
            only=tuple(dict.fromkeys(args.phase)),
            checkpoint=args.checkpoint.resolve() if args.checkpoint else None,
            dry_run=args.dry_run,
            config_path=Path(args.config).resolve() if args.config else None,
        )
        return run_pipeline(pipeline, cfg, opts, _say)
    except sqlite3.Error as exc:
        raise LedgerError(f"{exc}") from None


def _say(line: str) -> None:
    print(line, flush=True)


def _status(path: Path, *, as_json: bool) -> int:
    state = read_state(path)
    errors = _last_errors(path.parent / LEDGER, state)
    if as_json:
        print(json.dumps({
            "name": state.name,
            "state_file": str(path.resolve()),
            "phases": [
                {"name": name, "status": status, "error": errors.get(name)}
                for name, status in state.phases.items()
            ],
            "checkpoint_path": state.checkpoint_path,
            "failure_count": state.failure_count,
            "last_failure": state.last_failure,
            "last_failure_time": state.last_failure_time,
        }))  # fmt: skip
        return 0
    counts = {s: sum(1 for v in state.phases.values() if v == s) for s in PHASE_STATUSES}
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    print(f"pipeline {state.name or '?'} in {path.resolve().parent}: {summary}")
    width = max((len(name) for name in state.phases), default=0)
    for name, status in state.phases.items():
        error = f"  {errors[name]}" if status == "failed" and name in errors else ""
        print(f"  {status:<11} {name:<{width}}{error}")
    print(f"checkpoint: {state.checkpoint_path or 'none recorded'}")
    if state.failure_count:
        print(f"failures: {state.failure_count}, last {state.last_failure} at "
              f"{state.last_failure_time}")  # fmt: skip
    return 0


def _last_errors(ledger_path: Path, state: PipelineState) -> dict[str, str]:
    """Each failed phase's error, from its last run in the ledger (none without a ledger)."""
    if not ledger_path.exists():
        return {}
    found: dict[str, str] = {}
    with Ledger.open(ledger_path) as ledger:
        for task in ledger.tasks():  # in order: a later run of a phase wins
            if task.status == "failed" and task.attempts:
                found[task.name] = task.attempts[-1].error or ""
            elif task.status == "done":
                found.pop(task.name, None)
    return {name: error for name, error in found.items() if state.phases.get(name) == "failed"}


def _mark(path: Path, phase: str, status: Any) -> int:
    state = read_state(path)
    if phase not in state.phases:
        raise UsageError(f"{path}: no phase {phase!r} (phases: {', '.join(state.phases)})")
    ledger = path.parent / LEDGER
    if ledger.exists():
        with runner_lock(ledger):  # not while a runner works on it: it would overwrite this
            return _write_mark(path, state, phase, status)
    return _write_mark(path, state, phase, status)


def _write_mark(path: Path, state: PipelineState, phase: str, status: Any) -> int:
    before = state.phases[phase]
    write_state(path, state.with_phase(phase, status))
    effect = {
        "pending": "the next resume runs it again",
        "completed": "the next resume skips it",
        "failed": "the next resume runs it again",
    }[status]
    print(f"{phase}: {before} -> {status}; {effect}")
    if status == "pending":
        later = _completed_dependants(state, phase)
        if later:
            print(f"note: what depends on it stays completed: {', '.join(later)} (mark those "
                  "pending too to run them again)")  # fmt: skip
    return 0


def _completed_dependants(state: PipelineState, phase: str) -> list[str]:
    if not state.pipeline_file:
        return []
    try:
        pipeline = load_pipeline(Path(state.pipeline_file))
    except ConfigError:
        return []  # the hint needs the pipeline; the mark itself does not
    return [n for n in pipeline.dependants(phase) if state.phases.get(n) == "completed"]
