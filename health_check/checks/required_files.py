"""The files a run needs are there, are regular files and can be read."""

from __future__ import annotations

import os
import stat

from health_check.context import Context
from health_check.result import CheckResult, Status


def problem(path: os.PathLike[str] | str) -> str | None:
    """Why `path` is not a readable regular file, or None. Never opens it: a FIFO would block."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        return f"cannot stat: {exc.strerror or exc}"
    if not stat.S_ISREG(mode):
        return "not a regular file"
    if not os.access(path, os.R_OK):
        return "not readable"
    return None


def probe(ctx: Context) -> CheckResult:
    ws = ctx.ws
    files = ws.required_files()
    problems = [(f, why) for f in files if (why := problem(f)) is not None]
    if not problems:
        return CheckResult("required_files", Status.OK, f"all {len(files)} present")
    details = [f"{why}: {f}" for f, why in problems]
    names = ", ".join(f"{os.path.relpath(f, ws.base_dir)} ({why})" for f, why in problems)
    # config.json has its own repair (restore from backup) in the `config` check.
    return CheckResult("required_files", Status.CRITICAL, names, details)
