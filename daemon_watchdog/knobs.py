"""The knobs a recovery action may turn: a key of the job's own config.json (`config:KEY`, dots
reaching into nested objects) or an environment variable of the daemon (`env:NAME`).

A config.json change is written atomically, the file as it was kept beside it
(`config.json.before-recovery`). An environment change lives in the watchdog's state
(`RecoveryState.knobs`) and is applied to each daemon it starts. A knob that cannot be read or
changed is a `KnobError` with a one-line reason: the caller logs it and restarts unchanged.
"""

from __future__ import annotations

import json
import math
import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from trainguard.atomicio import UnreadableJson, read_small_file, write_bytes_atomic
from trainguard.errors import TrainguardError
from trainguard.watchdog_status import Scalar
from trainguard.workspace import Workspace

BEFORE_SUFFIX = ".before-recovery"
MAX_CONFIG_BYTES = 16 * 2**20  # a job config is small; anything bigger is not one


class KnobError(TrainguardError):
    """A knob that cannot be read or changed; the message is one line naming it."""


def previous_config(ws: Workspace) -> Path:
    """Where config.json is kept as it was before the watchdog's last change to it."""
    return ws.job_config.with_name(ws.job_config.name + BEFORE_SUFFIX)


def read_knob(ws: Workspace, knob: str, env: Mapping[str, str | None]) -> Scalar:
    """The knob's value now: config.json's, or the daemon's environment (`env`, the overrides
    recovery made, over this process's own environment, which the daemon inherits)."""
    kind, _, name = knob.partition(":")
    if kind == "env":
        return env[name] if name in env else os.environ.get(name)
    parent, key = _holder(_load(ws.job_config, knob), knob, ws.job_config)
    node = parent[key]
    if isinstance(node, bool) or not isinstance(node, (int, float, str)):
        raise KnobError(f"{knob}: {ws.job_config} holds {json.dumps(node)[:60]}, not a number")
    return node


def number(knob: str, value: Scalar) -> int | float:
    """A knob's value as a number: an int or float, or a string that spells one (environment
    variables are strings)."""
    if isinstance(value, str):
        text = value.strip()
        try:
            return int(text)
        except ValueError:
            try:
                parsed = float(text)
            except ValueError:
                parsed = math.nan
        if math.isfinite(parsed):
            return parsed
    elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return value
    shown = "unset" if value is None else json.dumps(value)[:60]
    raise KnobError(f"{knob} is {shown}, not a number")


def write_config_key(ws: Workspace, knob: str, value: Scalar, *, backup: bool = True) -> None:
    """Set config.json's key `knob` (`config:KEY`) to `value`: atomically, the previous file
    kept beside it (`backup`; a second key changed for the same crash keeps the first's
    backup, the file as it was). Other keys and their order are kept; the file is written
    indented by 2 (compact if it was one line), with its permissions, through a symlink to its
    target."""
    path = Path(os.path.realpath(ws.job_config))
    raw = _read_bytes(path, knob)
    data = _parse(raw, path, knob)
    parent, key = _holder(data, knob, path)
    parent[key] = value
    indent = 2 if raw.lstrip()[1:2] in (b"\n", b"\r") else None
    text = json.dumps(data, indent=indent) + "\n"
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        if backup:
            write_bytes_atomic(previous_config(ws), raw, mode=mode)
        write_bytes_atomic(path, text.encode("utf-8"), mode=mode)
    except OSError as exc:
        raise KnobError(f"{knob}: cannot write {path}: {exc.strerror or exc}") from None


def _holder(data: Any, knob: str, path: Path) -> tuple[dict[str, Any], str]:
    """The object holding `knob`'s key (dots reach into nested objects), and the key."""
    name = knob.partition(":")[2]
    *parents, key = name.split(".")
    node = data
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
    if not isinstance(node, dict) or key not in node:
        raise KnobError(f"{knob}: no key {name!r} in {path}")
    return node, key


def _load(path: Path, knob: str) -> Any:
    return _parse(_read_bytes(path, knob), path, knob)


def _read_bytes(path: Path, knob: str) -> bytes:
    try:
        return read_small_file(path, max_bytes=MAX_CONFIG_BYTES)
    except (OSError, UnreadableJson) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise KnobError(f"{knob}: cannot read {path}: {why}") from None


def _parse(raw: bytes, path: Path, knob: str) -> Any:
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise KnobError(f"{knob}: {path} is not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise KnobError(f"{knob}: {path} holds no JSON object")
    return data
