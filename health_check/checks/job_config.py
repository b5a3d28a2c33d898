"""The training job's own config.json: parses, has its required keys, names a base model that
exists. Every OK run refreshes a last-known-good backup; --fix restores it over a broken file.
"""

from __future__ import annotations

import json
import os
import stat
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from health_check.context import Context
from health_check.result import CheckResult, Fix, FixError, Status
from trainguard.atomicio import fsync_dir, write_bytes_atomic
from trainguard.config import read_toml
from trainguard.errors import ConfigError
from trainguard.workspace import Workspace

MAX_BYTES = 16 * 2**20  # a job config is small; anything bigger is not one


def inspect(ws: Workspace, data: bytes) -> str | None:
    """Why `data` is not a usable job config, or None."""
    try:
        parsed: Any = json.loads(data)
    except UnicodeDecodeError:
        return "not UTF-8 text"
    except json.JSONDecodeError as exc:
        return f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
    if not isinstance(parsed, dict):
        return f"not a JSON object (a {type(parsed).__name__})"
    missing = [key for key in ws.config.health.job_config_required_keys if key not in parsed]
    if missing:
        return f"required keys missing: {', '.join(missing)}"
    base_model = parsed.get("base_model")
    if base_model is not None:
        if not isinstance(base_model, str) or not base_model:
            return f"base_model must be a path, got {base_model!r}"
        model = ws.base_dir / os.path.expanduser(base_model)
        if not model.exists():
            return f"base_model {base_model} does not exist"
    return None


def _read(path: Path) -> tuple[bytes | None, str | None]:
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return None, "missing"
    except OSError as exc:
        return None, f"cannot stat: {exc.strerror or exc}"
    if not stat.S_ISREG(mode):
        return None, "not a regular file"  # a FIFO would block a plain open
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_BYTES + 1)
    except OSError as exc:
        return None, f"cannot read: {exc.strerror or exc}"
    if len(data) > MAX_BYTES:
        return None, f"larger than {MAX_BYTES // 2**20} MiB: not a job config"
    return data, None


def probe(ctx: Context) -> CheckResult:
    ws = ctx.ws
    if not ws.config.health.job_config:  # a trainer configured on its command line alone
        exposed = _secrets_exposed(ctx)
        summary = exposed or "no job config to check (health.job_config is empty)"
        return CheckResult("config", Status.WARNING if exposed else Status.OK, summary)
    path, backup = ws.job_config, ws.job_config_backup
    name = os.path.relpath(path, ws.base_dir)
    data, problem = _read(path)
    if data is not None:
        problem = inspect(ws, data)
    if problem is None and data is not None:
        saved = _refresh_backup(ws, data) if not ctx.read_only else None
        details = [f"last-known-good backup: {backup}"] + ([saved] if saved else [])
        exposed = _secrets_exposed(ctx)
        if exposed:
            return CheckResult("config", Status.WARNING, exposed, details)
        return CheckResult("config", Status.OK, f"{name} valid", details)
    fix = _restore_fix(ws, problem or "")
    details = [f"{path}: {problem}"]
    if fix is None:
        details.append(f"no usable backup at {backup} to restore")
    return CheckResult("config", Status.CRITICAL, f"{name}: {problem}", details, fix)


def _secrets_exposed(ctx: Context) -> str | None:
    """A WARNING when a file holding alert URLs (tokens) is readable by other users: the
    trainguard.toml with `[alerts] urls` in it, or `[alerts] urls_file`."""
    ws = ctx.ws
    holders: list[tuple[Path, str]] = []
    if ws.config.alerts.urls_file:
        holders.append(
            (ws.path(os.path.expanduser(ws.config.alerts.urls_file)), "alerts.urls_file")
        )
    if ctx.config_path is not None and _lists_urls(ctx.config_path):
        holders.append((ctx.config_path, "the config (its [alerts] urls)"))
    for path, what in holders:
        try:
            mode = path.stat().st_mode
        except OSError:
            continue  # the config loaded it a moment ago; gone now is the next run's error
        if mode & 0o077:
            return (
                f"{what} {path} (alert tokens) can be read by other users "
                f"(mode {mode & 0o777:o}): chmod 600 {path}"
            )
    return None


def _lists_urls(config_path: Path) -> bool:
    try:
        data = read_toml(config_path)
    except ConfigError:
        return False
    alerts = data.get("alerts")
    return isinstance(alerts, dict) and bool(alerts.get("urls"))


def _refresh_backup(ws: Workspace, data: bytes) -> str | None:
    backup = ws.job_config_backup
    try:
        if backup.is_file() and backup.read_bytes() == data:
            return None
        backup.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(backup, data, mode=0o600)
    except OSError as exc:
        return f"could not refresh the backup: {exc.strerror or exc}"
    return "backup refreshed"


def _restore_fix(ws: Workspace, problem: str) -> Fix | None:
    path, backup = ws.job_config, ws.job_config_backup
    good, _ = _read(backup)
    if good is None or inspect(ws, good) is not None:
        return None
    # (A backup naming the same missing base_model fails `inspect` too: no restore offered.)
    if problem == "not a regular file":
        return None  # a FIFO or a folder there is someone's doing: not ours to move

    def restore() -> str:
        current, why = _read(path)
        if current == good:
            return f"{path.name} already matches the backup"
        if current is not None and inspect(ws, current) is None:
            raise FixError(f"{path.name} is valid now; not replaced")
        kept = ""
        if why != "missing":
            # Keep the broken file: it may hold the only copy of someone's edit.
            aside = path.with_name(f"{path.name}.broken-{_stamp()}")
            os.rename(path, aside)
            fsync_dir(path.parent)
            kept = f" (broken file kept as {aside.name})"
        write_bytes_atomic(path, good)
        return f"restored {path.name} from {backup}{kept}"

    return Fix(f"restore {path.name} from the last good backup", restore, key="job-config")


def _stamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
