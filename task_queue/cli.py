"""task-queue: a ledger of tasks run by workers, a failed task retried on another worker.

`main(argv) -> int` is the console script.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from task_queue.backend_options import backend_options
from task_queue.ledger import Ledger, LedgerError, Task, TaskSpec, TaskStatus, runner_lock
from trainguard.argparsing import base_parser, config_option, run_cli
from trainguard.config import Config, load_config
from trainguard.errors import UsageError

PROG = "task-queue"
EXIT_CODES = """\
  run: 0 every task done (or cancelled), 1 some task failed for good, 69 no worker can take
       the tasks left, or preflight refused the run, 75 another runner holds the ledger,
       78 bad config, 130 interrupted (attempts closed, tasks back to pending)
  the others: 0 done, 1 an unusable ledger, 2 bad command line, 78 bad config"""
NO_WORKER = 69  # EX_UNAVAILABLE: no worker or scheduler reachable, or none can take the tasks


def build_parser() -> argparse.ArgumentParser:
    parser = base_parser(
        PROG, "Run tasks on workers; a failed task is retried on another one.",
        exit_codes=EXIT_CODES,
    )  # fmt: skip
    config = config_option(also_top_level=True)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    submit = commands.add_parser("submit", parents=[config], help="add tasks; prints their ids")
    submit.add_argument("--name", default="", help="a name for status (default: task-ID)")
    submit.add_argument("--gpus", type=int, default=1, metavar="N",
                        help="GPUs it needs (0: none; default 1)")  # fmt: skip
    submit.add_argument("--max-retries", type=int, metavar="N",
                        help="failed attempts before it fails ([queue] max_retries)")  # fmt: skip
    submit.add_argument("--timeout", type=float, metavar="S",
                        help="seconds an attempt may run ([queue] task_timeout)")  # fmt: skip
    submit.add_argument("--cwd", type=Path, metavar="DIR",
                        help="where it runs (default: here)")  # fmt: skip
    submit.add_argument("--env", action="append", default=[], metavar="K=V",
                        help="an environment variable for it (repeatable)")  # fmt: skip
    submit.add_argument("--from", dest="from_file", type=Path, metavar="TASKS.jsonl",
                        help="many tasks, a JSON object a line, added at once")  # fmt: skip
    submit.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- ARGV...")

    run = commands.add_parser(
        "run", parents=[config, backend_options()], help="run the pending tasks (foreground)"
    )
    run.add_argument("--until-done", action="store_true", help="exit once no task is left")

    status = commands.add_parser("status", parents=[config], help="counts and every task")
    status.add_argument("--json", action="store_true", help="print the contract's JSON")
    status.add_argument("--failed", action="store_true", help="only the failed tasks")

    retry = commands.add_parser("retry", parents=[config], help="failed tasks back to pending")
    retry.add_argument("ids", nargs="*", type=int, metavar="ID")
    retry.add_argument("--failed", action="store_true", help="every failed task")

    cancel = commands.add_parser("cancel", parents=[config], help="cancel pending/running tasks")
    cancel.add_argument("ids", nargs="+", type=int, metavar="ID")

    demo = commands.add_parser(
        "demo", help="a throwaway queue on 2 slots: retries elsewhere, a killed worker; a report"
    )
    demo.add_argument("--keep", action="store_true", help="keep the demo's folder for inspection")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    return run_cli(PROG, _dispatch, words, json_errors="--json" in words)


def _dispatch(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "demo":  # its own throwaway config: the user's is not read
        from task_queue.demo import run_demo

        return run_demo(keep=args.keep)
    cfg = load_config(getattr(args, "config", None))
    ledger_path = Path(cfg.base_dir) / cfg.queue.ledger
    try:
        if args.command == "submit":
            return _submit(args, cfg, ledger_path)
        if args.command == "run":
            return _run(args, cfg, ledger_path)
        if args.command == "status":
            return _status(args, ledger_path)
        if args.command == "retry":
            return _retry(args, ledger_path)
        return _cancel(args, ledger_path)
    except sqlite3.Error as exc:  # a ledger damaged after it was opened
        raise LedgerError(f"{ledger_path}: {exc}") from None


# --- submit ---------------------------------------------------------------------------------


def _submit(args: argparse.Namespace, cfg: Config, ledger_path: Path) -> int:
    argv = list(args.argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if args.from_file is not None:
        if argv:
            raise UsageError("submit: give either --from TASKS.jsonl or -- ARGV, not both")
        specs = _read_tasks_file(args.from_file, cfg)
    else:
        if not argv:
            raise UsageError("submit: nothing to run: give -- ARGV... or --from TASKS.jsonl")
        specs = [
            _spec(
                {
                    "argv": argv,
                    "name": args.name,
                    "gpus": args.gpus,
                    "max_retries": args.max_retries,
                    "timeout": args.timeout,
                    "cwd": str(args.cwd) if args.cwd is not None else None,
                    "env": _env_pairs(args.env),
                },
                cfg,
                where="submit",
            )
        ]
    with Ledger.open(ledger_path, create=True) as ledger:
        for task_id in ledger.submit(specs):
            print(task_id)
    return 0


def _env_pairs(pairs: Sequence[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"submit: --env {pair!r}: expected KEY=VALUE")
        env[key] = value
    return env


_TASK_KEYS = {"argv", "name", "gpus", "max_retries", "timeout", "cwd", "env"}


def _spec(data: Any, cfg: Config, *, where: str) -> TaskSpec:
    """A task from a `--from` line or the flags, every field checked: one line per mistake."""
    if not isinstance(data, dict):
        raise UsageError(f"{where}: expected a JSON object")
    unknown = sorted(set(data) - _TASK_KEYS)
    if unknown:
        raise UsageError(
            f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(_TASK_KEYS))})"
        )
    argv = data.get("argv")
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
        raise UsageError(f"{where}: argv: must be a non-empty list of strings")
    gpus = data.get("gpus")
    gpus = 1 if gpus is None else gpus
    max_retries = data.get("max_retries")
    max_retries = cfg.queue.max_retries if max_retries is None else max_retries
    timeout = data.get("timeout")
    timeout = cfg.queue.task_timeout if timeout is None else timeout
    for key, value, least in (("gpus", gpus, 0), ("max_retries", max_retries, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise UsageError(f"{where}: {key}: must be an integer >= {least} (got {value!r})")
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout <= 0:
        raise UsageError(f"{where}: timeout: must be a number of seconds > 0 (got {timeout!r})")
    name = data.get("name") or ""
    if not isinstance(name, str):
        raise UsageError(f"{where}: name: must be a string")
    env = data.get("env") or {}
    if not isinstance(env, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in env.items()
    ):
        raise UsageError(f"{where}: env: must be an object of strings")
    cwd = Path(data.get("cwd") or os.getcwd()).expanduser()
    if not isinstance(data.get("cwd") or "", str):
        raise UsageError(f"{where}: cwd: must be a string")
    cwd = cwd.resolve()
    if not cwd.is_dir():
        raise UsageError(f"{where}: cwd: {cwd} is not a folder")
    return TaskSpec(
        argv=tuple(argv),
        cwd=str(cwd),
        name=name,
        gpus=gpus,
        max_retries=max_retries,
        timeout=float(timeout),
        env=env,
    )


def _read_tasks_file(path: Path, cfg: Config) -> list[TaskSpec]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise UsageError(f"{path}: cannot read: {reason or exc}") from None
    specs = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            data = json.loads(line)
        except ValueError as exc:
            raise UsageError(f"{where}: not JSON: {exc}") from None
        specs.append(_spec(data, cfg, where=where))
    if not specs:
        raise UsageError(f"{path}: no tasks in it")
    return specs


# --- run ------------------------------------------------------------------------------------


def _run(args: argparse.Namespace, cfg: Config, ledger_path: Path) -> int:
    from task_queue.run_local import run_local

    backend = args.backend or cfg.queue.backend
    slots = args.slots if args.slots is not None else cfg.queue.slots
    if isinstance(slots, int) and slots < 1:
        raise UsageError("run: --slots must be >= 1")
    with Ledger.open(ledger_path, create=True) as ledger, runner_lock(ledger_path):
        if backend == "dask":
            from task_queue.run_dask import run_dask

            scheduler = args.scheduler if args.scheduler is not None else cfg.queue.scheduler
            return run_dask(
                ledger, cfg, scheduler=scheduler, slots=slots, until_done=args.until_done
            )
        return run_local(ledger, cfg, slots=slots, until_done=args.until_done)


# --- status, retry, cancel ------------------------------------------------------------------


def _status(args: argparse.Namespace, ledger_path: Path) -> int:
    try:
        ledger = Ledger.open(ledger_path)
    except LedgerError:
        if os.path.lexists(ledger_path):
            raise
        counts = dict.fromkeys(("pending", "running", "done", "failed", "cancelled"), 0)
        if args.json:
            print(json.dumps({"counts": counts, "tasks": []}))
        else:
            print(f"no tasks yet (no ledger at {ledger_path})")
        return 0
    status: TaskStatus | None = "failed" if args.failed else None
    with ledger:
        counts = ledger.counts()
        if args.json:
            tasks_json = ledger.tasks_json(status=status)
            sys.stdout.write(f'{{"counts": {json.dumps(counts)}, "tasks": [')
            sys.stdout.write(",".join(tasks_json))
            sys.stdout.write("]}\n")
            return 0
        tasks = ledger.tasks(status=status)
    print(", ".join(f"{counts[s]} {s}" for s in counts))
    for task in tasks:
        print(_task_line(task))
    return 0


def _task_line(task: Task) -> str:
    line = f"{task.id:>5} {task.status:<9} {task.name}"
    if task.attempts:
        last = task.attempts[-1]
        line += f"  attempts {len(task.attempts)}, last on {last.worker}"
        errors = [a for a in task.attempts if a.error and a.counted and a.outcome != "ok"]
        if errors:
            first = errors[0]
            line += f"; first error (attempt {first.number}, {first.worker}): {first.error}"
    return line


def _retry(args: argparse.Namespace, ledger_path: Path) -> int:
    if bool(args.ids) == bool(args.failed):
        raise UsageError("retry: give task ids or --failed")
    with Ledger.open(ledger_path) as ledger:
        if args.ids:
            _check_known(ledger, args.ids)
        ids = ledger.retry(None if args.failed else args.ids)
    print(f"back to pending: {ids}" if ids else "nothing to retry (no failed or cancelled task)")
    return 0


def _cancel(args: argparse.Namespace, ledger_path: Path) -> int:
    with Ledger.open(ledger_path) as ledger:
        _check_known(ledger, args.ids)
        ids = ledger.cancel(args.ids)
    print(f"cancelled: {ids}" if ids else "nothing to cancel (none pending or running)")
    return 0


def _check_known(ledger: Ledger, ids: Sequence[int]) -> None:
    unknown = sorted(set(ids) - ledger.known_ids(ids))
    if unknown:
        raise UsageError(f"no such task: {', '.join(map(str, unknown))}")
