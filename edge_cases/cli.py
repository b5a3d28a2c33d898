"""edge-cases: real faults on throwaway workspaces; `main(argv) -> int` is the console script."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from collections.abc import Sequence

from trainguard import exitcodes
from trainguard.argparsing import base_parser, run_cli

PROG = "edge-cases"


def build_parser() -> argparse.ArgumentParser:
    parser = base_parser(
        PROG,
        "Prove recovery with real faults: each scenario starts the real tools (the watchdog on "
        "the example daemon, task-queue) in its own throwaway workspace, injects one fault and "
        "checks the outcome.",
        config=False,
        exit_codes="  0 nothing failed, 1 a scenario failed, 2 bad command line, 130 interrupted",
    )
    parser.add_argument("--list", action="store_true", help="name and describe each scenario")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print each scenario's plan (fault, expected outcome, deadline); touch nothing",
    )
    parser.add_argument(
        "--test",
        action="extend",
        nargs="+",
        default=[],
        metavar="NAME",
        help="run only these scenarios (`--test a b`, or repeated; globs such as 'daemon_*')",
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument(
        "--keep", action="store_true", help="keep each scenario's workspace for inspection"
    )
    parser.add_argument(
        "--jobs",
        type=_positive_int,
        default=None,
        metavar="N",
        help="scenarios run at once (default: 4)",
    )
    parser.add_argument(
        "-c",
        "--config",
        metavar="PATH",
        help="accepted like every trainguard command's, and ignored: scenarios never read or "
        "touch your workspace; each writes its own config",
    )
    return parser


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _dispatch(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    from rich.console import Console

    from edge_cases import report
    from edge_cases.runner import select

    scenarios = select(args.test)
    out = Console(highlight=False, soft_wrap=True)
    if args.list:
        print(report.list_json(scenarios)) if args.json else report.list_text(out, scenarios)
        return exitcodes.OK
    if args.dry_run:
        print(report.plan_json(scenarios)) if args.json else report.plan_text(out, scenarios)
        return exitcodes.OK
    return _run(scenarios, as_json=args.json, keep=args.keep, jobs=args.jobs)


def _run(scenarios: Sequence[object], *, as_json: bool, keep: bool, jobs: int | None) -> int:
    from rich.console import Console

    from edge_cases import report
    from edge_cases.runner import DEFAULT_JOBS, run_scenarios
    from edge_cases.scenario import Result, Scenario

    chosen = [s for s in scenarios if isinstance(s, Scenario)]
    # Progress goes to stderr under --json, so that stdout is the JSON document alone.
    console = Console(stderr=as_json, highlight=False)
    width = max(len(s.name) for s in chosen)
    workers = jobs or DEFAULT_JOBS
    console.print(f"running {len(chosen)} scenario(s), {workers} at a time", style="bold")
    started = time.monotonic()

    def show(result: Result) -> None:
        report.progress_line(console, result, width)

    in_main = threading.current_thread() is threading.main_thread()
    # SIGTERM (systemd, a CI timeout) cleans up as Ctrl+C does: both raise KeyboardInterrupt.
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler) if in_main else None
    try:
        results = run_scenarios(chosen, keep=keep, jobs=workers, on_result=show)
    except KeyboardInterrupt:
        console.print("interrupted: every process started was stopped", style="bold red")
        return exitcodes.INTERRUPTED
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)
    if as_json:
        print(report.results_json(results))
    else:
        report.summary_text(console, results, time.monotonic() - started)
    return exitcodes.FAILURE if any(r.status == "fail" for r in results) else exitcodes.OK


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(PROG, _dispatch, argv)


if __name__ == "__main__":
    sys.exit(main())
