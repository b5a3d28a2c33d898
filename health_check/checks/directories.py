"""The workspace's required folders exist, are folders, and are writable."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from health_check.context import Context
from health_check.result import CheckResult, Fix, Status
from trainguard.timestamps import utc_now_iso


def probe(ctx: Context) -> CheckResult:
    ws = ctx.ws
    wanted = ws.required_dirs()
    missing: list[Path] = []
    problems: list[tuple[Path, str]] = []
    in_the_way: list[Path] = []  # plain files where a folder should be: moved aside by --fix
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
            kind = "a plain file" if stat.S_ISREG(mode) else "not a directory"
            problems.append((folder, f"{kind} where a folder should be"))
            if stat.S_ISREG(mode):
                in_the_way.append(folder)
        elif not os.access(folder, os.W_OK | os.X_OK):
            problems.append((folder, "not writable"))
    details = [f"missing: {d}" for d in missing] + [f"{why}: {d}" for d, why in problems]
    if not details:
        return CheckResult("directories", Status.OK, f"all {len(wanted)} present and writable")
    names = ", ".join(
        os.path.relpath(d, ws.base_dir) + (" (a plain file)" if d in in_the_way else "")
        for d in (*missing, *(d for d, _ in problems))
    )
    fix = None
    if missing or in_the_way:
        rel = [os.path.relpath(d, ws.base_dir) for d in (*missing, *in_the_way)]

        def create() -> str:
            done = []
            for folder in in_the_way:
                if folder.is_file() and not folder.is_symlink():
                    aside = folder.with_name(f"{folder.name}.file-{utc_now_iso('seconds')}")
                    os.replace(folder, aside.with_name(aside.name.replace(":", "")))
                    done.append(f"moved the file {folder.name} aside")
            for folder in (*missing, *in_the_way):
                folder.mkdir(parents=True, exist_ok=True)
            return "; ".join([*done, f"created {', '.join(rel)}"])

        moves = [f"move the file {d.name} aside" for d in in_the_way]
        fix = Fix("; ".join([*moves, f"create {', '.join(rel)}"]), create, key="directories")
    return CheckResult("directories", Status.CRITICAL, f"not usable: {names}", details, fix)
