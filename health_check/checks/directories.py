"""The workspace's required folders exist, are folders, and are writable."""

from __future__ import annotations

import os

from health_check.context import Context
from health_check.result import CheckResult, Fix, Status


def probe(ctx: Context) -> CheckResult:
    ws = ctx.ws
    wanted = ws.required_dirs()
    missing = [d for d in wanted if not os.path.lexists(d)]
    not_dirs = [d for d in wanted if os.path.lexists(d) and not d.is_dir()]
    read_only = [d for d in wanted if d.is_dir() and not os.access(d, os.W_OK | os.X_OK)]
    details = [f"missing: {d}" for d in missing]
    details += [f"not a directory: {d}" for d in not_dirs]
    details += [f"not writable: {d}" for d in read_only]
    if not details:
        return CheckResult("directories", Status.OK, f"all {len(wanted)} present and writable")
    names = ", ".join(os.path.relpath(d, ws.base_dir) for d in (*missing, *not_dirs, *read_only))
    fix = None
    if missing:
        rel = [os.path.relpath(d, ws.base_dir) for d in missing]

        def create() -> str:
            for folder in missing:
                folder.mkdir(parents=True, exist_ok=True)
            return f"created {', '.join(rel)}"

        fix = Fix(f"create {', '.join(rel)}", create, key="directories")
    return CheckResult("directories", Status.CRITICAL, f"not usable: {names}", details, fix)
