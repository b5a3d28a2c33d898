"""health-check: is this node fit to train? `main(argv) -> int` is the console script.

Exit codes follow the Nagios plugin convention: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (a bad
config or bad flags included: Nagios reads anything else as a plugin failure).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from health_check import report
from health_check.context import Context
from health_check.result import CheckResult, Status, worst
from health_check.runner import apply_fixes, run_checks
from trainguard.alerts import Alert, Alerter
from trainguard.argparsing import Parser, base_parser, run_cli
from trainguard.config import HEALTH_CHECKS, PREFLIGHT_CHECKS, find_config_path, load_config
from trainguard.errors import ConfigError
from trainguard.errors import UsageError as _UsageError
from trainguard.timestamps import utc_now_iso
from trainguard.workspace import Workspace

PROG = "health-check"
EXIT_CODES = """\
  Nagios plugin convention, the worst check decides:
  0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (also a bad command line or an unreadable config)"""
UNKNOWN = int(Status.UNKNOWN)


class UsageError(_UsageError):
    exit_code = UNKNOWN


class _Parser(Parser):
    """Bad usage is UNKNOWN (3) to Nagios, not CRITICAL (2)."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        raise UsageError(message)


def _names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    known = (*HEALTH_CHECKS, *PREFLIGHT_CHECKS)
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown check {', '.join(unknown) or repr(text)} (known: {', '.join(known)})"
        )
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = base_parser(
        PROG, "Check that this node and workspace are fit to train.", exit_codes=EXIT_CODES
    )
    parser.__class__ = _Parser  # argparse's usage errors exit 3 (UNKNOWN), not 2 (CRITICAL)
    parser.add_argument("--fix", action="store_true", help="repair what is safe to repair")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="with --fix: say what would be repaired, change nothing",
    )
    parser.add_argument("--only", type=_names, metavar="NAME,...", help="run only these checks")
    parser.add_argument("--skip", type=_names, metavar="NAME,...", help="skip these checks")
    parser.add_argument(
        "--preflight", action="store_true", help="also check ssh to nodes, inputs and ramdisk files"
    )
    parser.add_argument("--json", action="store_true", help="print the contract's JSON")
    parser.add_argument("--quiet", action="store_true", help="print only the Nagios status line")
    parser.add_argument("-v", "--verbose", action="store_true", help="show each check's details")
    parser.add_argument(
        "--prometheus",
        metavar="FILE",
        help="also write node_exporter textfile metrics to FILE (atomically)",
    )
    return parser


def _selected(args: argparse.Namespace) -> list[str]:
    names = list(HEALTH_CHECKS) + (list(PREFLIGHT_CHECKS) if args.preflight else [])
    if args.only:
        names = [n for n in (*HEALTH_CHECKS, *PREFLIGHT_CHECKS) if n in args.only]
    if args.skip:
        names = [n for n in names if n not in args.skip]
    if not names:
        raise UsageError("no checks left to run (--only/--skip)")
    return names


def _handle(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    if args.dry_run and not args.fix:
        raise UsageError("--dry-run only makes sense with --fix")
    try:
        ws = Workspace(load_config(args.config))
    except ConfigError as exc:
        _unusable_config(args, exc)
        raise
    ctx = Context(ws, read_only=args.dry_run, config_path=find_config_path(args.config, os.environ))
    results = run_checks(ctx, _selected(args))
    if args.fix:
        results = apply_fixes(ctx, results, dry_run=args.dry_run, log=_fix_logger(ws))
    if not args.dry_run:
        _alert(ws, results)
    if args.json:
        print(json.dumps(report.to_json(results), indent=2))
    elif args.quiet:
        print(report.nagios_line(results))
    else:
        print(report.nagios_line(results))
        sys.stdout.flush()
        report.print_human(results, verbose=args.verbose)
    status = report.overall(results)
    if args.prometheus and not _write_metrics(results, args.prometheus):
        # The checks' verdict is out already; the broken metrics pipe makes it at least
        # UNKNOWN, never hides a CRITICAL.
        status = worst([status, Status.UNKNOWN])
    return int(status)


def _unusable_config(args: argparse.Namespace, exc: ConfigError) -> None:
    """A config that cannot be read is UNKNOWN: a Nagios line on stdout (the error itself goes
    to stderr, and under --json as JSON), and the --prometheus file rewritten with UNKNOWN, so
    that a stale OK never outlives a broken config."""
    results = [CheckResult("config", Status.UNKNOWN, exc.lines()[0])]
    if not args.json:
        print(report.nagios_line(results), flush=True)
    if args.prometheus:
        _write_metrics(results, args.prometheus)


def _write_metrics(results: Sequence[CheckResult], target: str) -> bool:
    """The --prometheus file; False when it could not be written. A folder that does not exist
    (a node without node_exporter's textfile folder) is a hint, not a failure."""
    if not Path(target).parent.is_dir():
        print(f"{PROG}: not writing {target}: its folder does not exist (create it, "
              "or drop --prometheus)", file=sys.stderr)  # fmt: skip
        return True
    try:
        report.write_prometheus(results, Path(target), now=time.time())
    except OSError as exc:
        print(f"{PROG}: cannot write {target}: {exc.strerror or exc}", file=sys.stderr)
        return False
    return True


def _fix_logger(ws: Workspace) -> Callable[[str], None]:
    def log(line: str) -> None:
        text = f"{utc_now_iso('seconds')} health-check[{os.getpid()}] {line}\n"
        try:
            ws.health_log.parent.mkdir(parents=True, exist_ok=True)
            with open(ws.health_log, "a", encoding="utf-8") as fh:
                fh.write(text)
        except OSError as exc:
            print(f"{PROG}: cannot log to {ws.health_log}: {exc.strerror or exc}", file=sys.stderr)

    return log


def _alert(ws: Workspace, results: Sequence[CheckResult]) -> None:
    """One alert per CRITICAL check (disk as `disk_low`), each de-duplicated by its cooldown."""
    alerter = Alerter(ws.config.alerts, ws.path(ws.config.alerts.state_file))
    if not alerter.enabled:
        return
    host = socket.gethostname()
    threads = [
        alerter.send(
            Alert(
                "disk_low" if r.name == "disk_space" else "health_critical",
                f"health:{r.name}",
                f"health-check CRITICAL on {host}: {r.name}",
                f"{r.summary}\nworkspace: {ws.base_dir}",
            )
        )
        for r in results
        if r.status == Status.CRITICAL
    ]
    deadline = time.monotonic() + ws.config.alerts.timeout + 5
    for thread in threads:
        if thread is not None:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(PROG, _handle, argv, config_exit_code=UNKNOWN)
