"""The flags every trainguard command shares, and where a CLI turns errors into exit codes."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from trainguard import __version__
from trainguard.errors import UsageError, error_boundary


class Parser(argparse.ArgumentParser):
    """argparse whose bad usage is a UsageError (exit 2): the usage line on stderr, then the
    error as every other error (`prog: ...`, and under --json a JSON object on stdout).
    Subcommand parsers are of the same class (argparse makes them of the parent's)."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        command = self.prog.split(" ", 1)[1] + ": " if " " in self.prog else ""
        raise UsageError(f"{command}{message}")


def base_parser(
    prog: str, description: str, *, config: bool = True, exit_codes: str = ""
) -> argparse.ArgumentParser:
    """The top-level parser; tools with subcommands pass `config=False` and give each
    subcommand `config_option()` as a parent, so `-c` goes after the subcommand's name.
    `exit_codes` ("0  ...\n1  ...") closes `--help`."""
    parents = [config_option()] if config else []
    parser = Parser(
        prog=prog,
        description=description,
        parents=parents,
        epilog=f"exit codes:\n{exit_codes}" if exit_codes else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"{prog} (trainguard) {__version__}")
    return parser


def config_option(*, also_top_level: bool = False) -> argparse.ArgumentParser:
    """`-c PATH` for a subcommand. `also_top_level`: the tool's parser has `-c` too (the
    runners take it before or after the subcommand); SUPPRESS keeps the top-level value when
    the subcommand is given none."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "-c",
        "--config",
        metavar="PATH",
        default=argparse.SUPPRESS if also_top_level else None,
        help="trainguard.toml to use (default: ./trainguard.toml, then $TRAINGUARD_CONFIG)",
    )
    return parent


def run_cli(
    prog: str,
    handler: Callable[[Sequence[str] | None], int],
    argv: Sequence[str] | None,
    *,
    config_exit_code: int | None = None,
    json_errors: bool = False,
) -> int:
    """Run `handler(argv)` inside the error boundary; return the process exit code. A command
    line with `--json` gets its errors as JSON on stdout too (`{"error", "exit_code"}`)."""
    words = list(sys.argv[1:] if argv is None else argv)
    json_errors = json_errors or "--json" in words
    result = [1]
    with error_boundary(prog, result, config_exit_code=config_exit_code, json_errors=json_errors):
        result[0] = handler(words)
    return result[0]
