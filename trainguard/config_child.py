"""Validating a config in a child process, for the watchdog.

pydantic (~10 MiB of RSS once imported) would otherwise stay in a watchdog that runs for
weeks, for one validation at its start. `load_config_in_child` runs
`python -m trainguard.config_child [PATH]`, which calls `load_config` (same search, same
environment overrides, same messages) and prints one JSON object on stdout: `{"config": {...}}`
or `{"problems": [...]}`. The watchdog rebuilds the Config from it without validating again.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence

from trainguard import exitcodes
from trainguard.config import Config, config_as_dict, config_from_dict, load_config
from trainguard.errors import ConfigError, TrainguardError
from trainguard.python_child import module_argv

CHILD_TIMEOUT = 60.0  # seconds; a validation takes ~0.3 s


def load_config_in_child(
    path: str | os.PathLike[str] | None, *, timeout: float = CHILD_TIMEOUT
) -> Config:
    """`load_config(path)`, run in a child; raise ConfigError or TrainguardError as it would."""
    command = module_argv("trainguard.config_child", *([os.fspath(path)] if path else []))
    try:
        done = subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise TrainguardError(f"cannot validate the config in a child process: {exc}") from None
    try:
        reply = json.loads(done.stdout)
    except ValueError:
        reply = None
    if isinstance(reply, dict) and isinstance(reply.get("config"), dict):
        return config_from_dict(reply["config"])
    if isinstance(reply, dict) and reply.get("problems"):
        problems = [str(line) for line in reply["problems"]]
        raise ConfigError(problems[0], problems=problems)
    last = (done.stderr.strip().splitlines() or ["no output"])[-1]
    raise TrainguardError(
        f"cannot validate the config in a child process (exit {done.returncode}): {last}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        config = load_config(args[0] if args else None)
    except ConfigError as exc:
        print(json.dumps({"problems": exc.lines()}))
        return exitcodes.CONFIG
    print(json.dumps({"config": config_as_dict(config)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
