"""The workspace's required folders exist, are folders, and are writable."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from health_check.context import Context
from health_check.result import CheckResult, Fix, Status


def probe(ctx: Context) -> CheckResult:
    ws = ctx.ws
    wanted = ws.required_dirs()
    missing: list[Path] = []
    problems: list[tuple[Path, str]] = []
    for folder in wanted:
        try:
            mode = os.stat(folder).st_mode
        except FileNotFoundError:
            missing.append(folder)
            continue
        except OSError as exc:  # EACCES on a parent: it may exist, we cannot tell or use it
            problems.append((folder, f"not accessible ({exc.strerror or exc})"))
            continue
        if not stat.S_ISDIR(mode):
            problems.append((folder, "not a directory"))
        elif not os.access(folder, os.W_OK | os.X_OK):
            problems.append((folder, "not writable"))
    details = [f"missing: {d}" for d in missing] + [f"{why}: {d}" for d, why in problems]
    if not details:
        return CheckResult("directories", Status.OK, f"all {len(wanted)} present and writable")
    names = ", ".join(
        os.path.relpath(d, ws.base_dir) for d in (*missing, *(d for d, _ in problems))
    )
    fix = None
    if missing:
        rel = [os.path.relpath(d, ws.base_dir) for d in missing]

        def create() -> str:
            for folder in missing:
                folder.mkdir(parents=True, exist_ok=True)
            return f"created {', '.join(rel)}"

        fix = Fix(f"create {', '.join(rel)}", create, key="directories")
    return CheckResult("directories", Status.CRITICAL, f"not usable: {names}", details, fix)
