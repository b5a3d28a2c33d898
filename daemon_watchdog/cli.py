"""daemon-watchdog: supervise a training daemon. `main(argv) -> int` is the console script."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path

from trainguard.argparsing import base_parser, config_option, run_cli
from trainguard.config import (
    CONFIG_ENV,
    CONFIG_FILENAME,
    config_as_dict,
    find_config_path,
    load_config,
    mask_url,
)
from trainguard.errors import ConfigError, TrainguardError, UsageError
from trainguard.workspace import Workspace

PROG = "daemon-watchdog"
EXIT_CODES = """\
  status: 0 RUNNING, 1 STARTING/BACKOFF/HUNG/STOPPING, 2 FATAL, 3 unknown (no state, or a dead
          watchdog), 4 STOPPED (finished, or stopped by the operator)
  run:    0 done (--exit-when-done: training finished), 1 FATAL (--exit-when-done), 75 another
          watchdog holds the workspace, 78 bad config
  start:  0 the watchdog is up and its daemon started, else run's code (75, 78, ...)
  all:    2 bad command line, 78 bad config, 130 interrupted"""


def build_parser() -> argparse.ArgumentParser:
    parser = base_parser(PROG, "Supervise a long-running training daemon.", exit_codes=EXIT_CODES)
    with_config = [config_option(also_top_level=True)]  # -c before or after the subcommand
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    init = commands.add_parser(
        "init", help="create a workspace wired to the example training daemon"
    )
    init.add_argument("directory", metavar="DIR", type=Path)
    init.add_argument(
        "--force", action="store_true", help="overwrite an existing workspace's files"
    )
    init.add_argument(
        "--hf", action="store_true",
        help="with --command: a Hugging Face Trainer script (--resume_from_checkpoint, "
        "checkpoint-N folders in checkpoints/)",
    )  # fmt: skip
    init.add_argument(
        "--command", dest="command_argv", nargs=argparse.REMAINDER, metavar="ARGV",
        help="your own trainer's argv (the rest of the line); without it, the example trainer",
    )  # fmt: skip
    run = commands.add_parser("run", parents=with_config, help="supervise the daemon (foreground)")
    run.add_argument(
        "--exit-when-done",
        action="store_true",
        help="exit when the daemon finishes (0) or supervision goes FATAL (1), as in a batch job",
    )
    run.add_argument("--log-json", action="store_true", help="log JSON lines instead of text")
    commands.add_parser(
        "start",
        parents=with_config,
        help="run, detached from the terminal; returns once the watchdog is up (or failed)",
    )
    status = commands.add_parser("status", parents=with_config, help="show the watchdog's state")
    status.add_argument("--json", action="store_true", help="print the state file's JSON")
    stop = commands.add_parser("stop", parents=with_config, help="stop the daemon and the watchdog")
    stop.add_argument(
        "--timeout", type=float, default=None, metavar="S",
        help="seconds to wait for the watchdog to stop: the trainer may be asked for a "
        "checkpoint first (default: [daemon] save_on_stop_timeout + stop_timeout + 30)",
    )  # fmt: skip
    restart = commands.add_parser(
        "restart",
        parents=with_config,
        help="start the daemon again: from FATAL/STOPPED, now from BACKOFF, "
        "or after a graceful stop; waits for the new daemon",
    )
    restart.add_argument(
        "--timeout", type=float, default=120.0, metavar="S",
        help="seconds to wait for the new daemon (default 120)",
    )  # fmt: skip
    restart.add_argument(
        "--reset-recovery", action="store_true",
        help="first put back every knob [watchdog.recovery] changed (batch size, GPUs left "
        "out, learning rate); `status` lists them",
    )  # fmt: skip
    show = commands.add_parser(
        "config", parents=with_config, help="validate the config; print it with every default"
    )
    show.add_argument("--json", action="store_true", help="print JSON instead of TOML")
    demo = commands.add_parser(
        "demo", help="a short supervised run with one real crash, then a report"
    )
    demo.add_argument("--keep", action="store_true", help="keep the demo workspace for inspection")
    demo.add_argument(
        "--oom", action="store_true",
        help="show recovery by crash type instead: a CUDA OOM (simulated) whose batch size "
        "[watchdog.recovery] halves",
    )  # fmt: skip
    return parser


def _dispatch(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "init":
        if args.command_argv is not None or args.hf:
            from daemon_watchdog.workspace_init import init_own_workspace

            if args.command_argv is None:
                raise UsageError("init: --hf goes with --command ARGV... (your trainer)")
            config_path = init_own_workspace(
                args.directory, args.command_argv, hf=args.hf, force=args.force
            )
            print(f"created {config_path} for {' '.join(args.command_argv)}; check it with: "
                  f"daemon-watchdog config -c {config_path}")  # fmt: skip
            return 0
        from daemon_watchdog.workspace_init import init_workspace  # NumPy: only init needs it

        config_path = init_workspace(args.directory, force=args.force)
        print(f"created {config_path} wired to the example training daemon")
        return 0
    if args.command in ("run", "start", "status", "stop", "restart"):
        return _operate(args)
    if args.command == "config":
        return _show_config(args.config, as_json=args.json)
    from daemon_watchdog.demo import run_demo

    return run_demo(keep=args.keep, oom=args.oom)


def _show_config(path: str | None, *, as_json: bool) -> int:
    config = load_config(path)
    data = config_as_dict(config)
    data["alerts"]["urls"] = [mask_url(url) for url in config.alerts.urls]  # they hold tokens
    if as_json:
        print(json.dumps(data, indent=2))
        return 0
    import tomli_w

    print(tomli_w.dumps(data), end="")
    return 0


def _operate(args: argparse.Namespace) -> int:
    from daemon_watchdog import control

    if args.command in ("run", "start"):
        from trainguard.config_child import load_config_in_child

        found = find_config_path(args.config, os.environ)
        if found is None:
            # Defaults alone would train the bundled example in whatever folder this is.
            raise ConfigError(
                f"no {CONFIG_FILENAME} here and {CONFIG_ENV} is not set: give -c PATH "
                "(daemon-watchdog init DIR creates a workspace with one)"
            )
        # pydantic validates in a child: it would otherwise stay in the watchdog for weeks.
        if args.command == "start":
            from daemon_watchdog.detached_start import start_detached

            ws = Workspace(load_config(found))  # a bad config: 78 here, nothing started
            if not ws.base_dir.is_dir():
                raise TrainguardError(
                    f"base_dir {ws.base_dir} is not a folder: create it or fix base_dir"
                )
            return start_detached(ws, found.resolve())
        ws = Workspace(load_config_in_child(args.config))
    else:
        ws = Workspace(load_config(args.config))
    if args.command == "status":
        return control.show_status(ws, as_json=args.json)
    if args.command == "stop":
        d = ws.config.daemon
        timeout = args.timeout
        if timeout is None:  # the save asked for, the stop signal's grace, the watchdog's exit
            timeout = d.save_on_stop_timeout + d.stop_timeout + 30
        return control.stop(ws, timeout=timeout)
    if args.command == "restart":
        return control.restart(ws, timeout=args.timeout, reset_recovery=args.reset_recovery)
    from daemon_watchdog.lock import WorkspaceLock
    from daemon_watchdog.logsetup import setup_logging
    from daemon_watchdog.supervisor import Supervisor

    if not ws.base_dir.is_dir():
        raise TrainguardError(f"base_dir {ws.base_dir} is not a folder: create it or fix base_dir")
    lock = WorkspaceLock(ws.lock_file)
    lock.acquire()
    try:
        log_file = ws.path("logs/watchdog.log")
        try:
            setup_logging(log_file, as_json=args.log_json)
        except OSError as exc:
            raise TrainguardError(f"cannot write {log_file}: {exc.strerror or exc}") from None
        return Supervisor(
            ws,
            exit_when_done=args.exit_when_done,
            reload_config=lambda: load_config_in_child(args.config),
        ).run()
    finally:
        lock.release()


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(PROG, _dispatch, argv)
