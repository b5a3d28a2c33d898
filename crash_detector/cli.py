"""crash-detector: why did this training run die? `main(argv) -> int` is the console script.

Cron and operators run it on one log, often: its start-up is kept to what that needs
(docs/benchmarks.md, #19). The config models, the crash history and rich are imported only
where they are used: with a config or overrides, and for styled output on a terminal.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crash_detector import report
from crash_detector.detect import Detection, detect, log_files
from crash_detector.rules import load_rules
from crash_detector.scanner import ENGINES, Scanner
from trainguard.argparsing import base_parser, run_cli
from trainguard.config_source import find_config_path, has_overrides
from trainguard.errors import UsageError

if TYPE_CHECKING:
    from crash_detector.history import RecordedCrash, Recurring
    from trainguard.workspace import Workspace

PROG = "crash-detector"
EXIT_CODES = """\
  0  no crash found      1  a crash found
  2  bad command line or unreadable input      78  bad config or rules file"""
MAX_WINDOW_HOURS = 24 * 366 * 10  # ten years: `now - window` must stay a valid date
RECORDED_SHOWN = 10  # the watchdog's newest crashes shown next to what the logs say


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _hours(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of hours: {text!r}") from None
    if not (math.isfinite(value) and 0 < value <= MAX_WINDOW_HOURS):
        raise argparse.ArgumentTypeError(f"must be > 0 and <= {MAX_WINDOW_HOURS}, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = base_parser(
        PROG, "Classify why a training run crashed, from its logs.", exit_codes=EXIT_CODES
    )
    parser.add_argument(
        "paths", nargs="*", metavar="PATH", help="log files or folders (their *.log)"
    )
    parser.add_argument(
        "--last-n-lines", type=_positive, metavar="N", help="read only the last N lines"
    )
    parser.add_argument(
        "--exit-code", type=int, metavar="N", help="the process's exit status (negative: signal)"
    )
    parser.add_argument(
        "--rules", metavar="FILE", help="extra rules TOML: adds rules, or replaces by id"
    )
    parser.add_argument("--json", action="store_true", help="print the contract's JSON")
    parser.add_argument("--quiet", action="store_true", help="print a one-line summary (for cron)")
    parser.add_argument(
        "--no-history", action="store_true", help="do not append to the crash history"
    )
    parser.add_argument(
        "--recurring-window", type=_hours, default=24.0, metavar="HOURS",
        help="a crash category seen --recurring-min times within this many hours is recurring",
    )  # fmt: skip
    parser.add_argument(
        "--recurring-min", type=_positive, default=3, metavar="N",
        help="occurrences within --recurring-window that make a category recurring (default 3)",
    )  # fmt: skip
    parser.add_argument("--engine", choices=ENGINES, default="auto", help=argparse.SUPPRESS)
    return parser


def _dispatch(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    # History is kept only for a configured workspace, never for an ad-hoc look at a file.
    has_config = find_config_path(args.config, os.environ) is not None
    workspace = _workspace(args, has_config)
    catalog = load_rules(Path(args.rules) if args.rules else None)
    try:
        scanner = Scanner(catalog, engine=args.engine)
    except RuntimeError as exc:
        raise UsageError(str(exc)) from None
    if workspace is None:
        files = log_files(args.paths, base_dir=Path.cwd(), default_globs=())
    else:
        files = log_files(
            args.paths,
            base_dir=workspace.base_dir,
            default_globs=workspace.config.crash_detector.logs,
        )
    detection = detect(files, scanner, last_n_lines=args.last_n_lines, exit_code=args.exit_code)
    history: dict[str, Any] | None = None
    found_recurring: list[Recurring] = []
    recorded: list[RecordedCrash] | None = None  # what the watchdog recorded: with a config only
    if has_config and workspace is not None:
        history, found_recurring, recorded = _update_history(
            workspace.crash_history, detection, args
        )
    if args.json:
        print(report.to_json(detection, found_recurring, history, recorded))
    elif args.quiet:
        print(f"{PROG}: {report.one_line(detection, found_recurring)}")
    else:
        lines = report.text_lines(detection, found_recurring, recorded or ())
        if report.styled(sys.stdout, os.environ):
            report.print_styled(lines, sys.stdout, os.environ)
        else:
            report.print_plain(lines, sys.stdout)
    return 1 if detection.result.primary is not None else 0


def _workspace(args: argparse.Namespace, has_config: bool) -> Workspace | None:
    """The configured workspace; None when logs are named and there is no config and no
    override to check: the defaults would serve nothing (the PATHs replace their log globs,
    and no history is kept), so their models are not even imported."""
    if args.paths and not has_config and not has_overrides(os.environ):
        return None
    from trainguard.config import load_config
    from trainguard.workspace import Workspace

    return Workspace(load_config(args.config))


def _update_history(
    path: Path, detection: Detection, args: argparse.Namespace
) -> tuple[dict[str, Any], list[Recurring], list[RecordedCrash]]:
    """Append the crashes, and read back recurring ones and those the watchdog recorded.

    Survived errors are recorded too (marked so): an OOM that training outlived, or that a
    restart recovered from, is still worth counting when it keeps coming back.

    A history that cannot be written or read costs a warning, never the report: the crash
    found is what cron and the watchdog act on.
    """
    from datetime import timedelta

    from crash_detector.history import (
        append_new,
        read_history,
        recurring,
        to_record,
        watchdog_crashes,
    )

    logs = [(scan.path, scan.size, scan.mtime_ns) for scan in detection.files]
    records = [
        to_record(crash, source=PROG, exit_code=args.exit_code, logs=logs)
        for crash in detection.result.crashes
    ]
    history: dict[str, Any] = {"file": str(path), "added": 0}
    try:
        history["added"] = 0 if args.no_history else len(append_new(path, records))
        window = timedelta(hours=args.recurring_window)
        records = read_history(path)
    except OSError as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        print(f"{PROG}: warning: crash history {path}: {reason}", file=sys.stderr)
        history["error"] = reason
        return history, [], []
    found = recurring(records, window=window, min_count=args.recurring_min)
    return history, found, watchdog_crashes(records, limit=RECORDED_SHOWN)


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(PROG, _dispatch, argv)
