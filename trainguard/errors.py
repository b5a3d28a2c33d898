"""Expected errors and the one boundary that turns them into a message and an exit code."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from trainguard import exitcodes


class TrainguardError(Exception):
    """An expected failure: reported as one line (or one line per problem), never a traceback."""

    exit_code = exitcodes.FAILURE

    def __init__(self, message: str, *, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []

    def lines(self) -> list[str]:
        return self.problems or [str(self)]


class ConfigError(TrainguardError):
    exit_code = exitcodes.CONFIG


class UsageError(TrainguardError):
    exit_code = exitcodes.USAGE


class ExitCode(Exception):
    """Raised inside a CLI to leave with a given code after its own output."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


@contextmanager
def error_boundary(
    prog: str,
    result: list[int],
    *,
    config_exit_code: int | None = None,
    json_errors: bool = False,
) -> Iterator[None]:
    """Map expected errors to `prog: message` on stderr and an exit code stored in `result[0]`.

    `config_exit_code` lets health-check report a bad config as Nagios UNKNOWN (3) instead of 78.
    `json_errors` (a command run with --json) also prints `{"error", "exit_code"}` on stdout, so
    that a script reading stdout gets JSON whatever happened.
    """
    try:
        yield
    except ExitCode as exc:
        result[0] = exc.code
    except TrainguardError as exc:
        for line in exc.lines():
            print(f"{prog}: {line}", file=sys.stderr)
        is_config = isinstance(exc, ConfigError)
        result[0] = (
            config_exit_code if is_config and config_exit_code is not None else exc.exit_code
        )
        if json_errors:
            print(json.dumps({"error": "; ".join(exc.lines()), "exit_code": result[0]}))
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        result[0] = exitcodes.INTERRUPTED
    except BrokenPipeError:
        # `trainguard-cmd | head` closed our stdout: not an error worth a traceback.
        sys.stderr.close()
        result[0] = exitcodes.FAILURE
