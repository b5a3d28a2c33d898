"""SIGHUP: what of a reloaded config a running watchdog can apply, and what needs a new watchdog.

A hangup must never restart training (a closed terminal sends one): it re-reads the config and
applies what can change live. Paths the watchdog holds open or has handed out (the state file,
the pid and progress files, the daemon log), the metrics listener and the alert channels stay as
they were until the watchdog itself is restarted; the daemon's command, resume arguments and
stop signal apply from the daemon's next start.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from trainguard.config import Config, config_as_dict, config_from_dict

NOT_LIVE = (
    "base_dir",
    "daemon.pid_file",
    "daemon.progress_file",
    "daemon.log_file",
    "watchdog.state_file",
    "metrics.",
    "alerts.",
    "crash_detector.history_file",
)
"""Keys (or section prefixes) that take effect only when the watchdog is restarted."""

AT_NEXT_START = ("daemon.",)
"""Live keys that reach the daemon only when it is next started."""


@dataclass(frozen=True)
class Reload:
    config: Config  # the new config, with the keys that cannot change live kept as they were
    applied: tuple[str, ...]  # "watchdog.progress_timeout: 600 -> 30"
    next_start: tuple[str, ...]  # applied, reaching the daemon at its next start
    kept: tuple[str, ...]  # changed in the file, not applied: they need a watchdog restart

    def summary(self) -> str:
        if not (self.applied or self.next_start or self.kept):
            return "config reloaded: no changes"
        parts = []
        if self.applied:
            parts.append("applied " + "; ".join(self.applied))
        if self.next_start:
            parts.append("at the daemon's next start " + "; ".join(self.next_start))
        if self.kept:
            parts.append("NOT applied (restart the watchdog for these) " + "; ".join(self.kept))
        return "config reloaded: " + ", ".join(parts)


def plan_reload(old: Config, new: Config) -> Reload:
    old_values, new_values = config_as_dict(old), config_as_dict(new)
    merged = dict(_flat(new_values))
    applied: list[str] = []
    next_start: list[str] = []
    kept: list[str] = []
    for key, before in _flat(old_values):
        after = merged.get(key)
        if after == before:
            continue
        change = f"{key}: {_show(before)} -> {_show(after)}"
        if any(key == k or (k.endswith(".") and key.startswith(k)) for k in NOT_LIVE):
            merged[key] = before
            kept.append(change)
        elif key.startswith(AT_NEXT_START):
            next_start.append(change)
        else:
            applied.append(change)
    config = config_from_dict(_nested(merged, old_values))
    return Reload(config, tuple(applied), tuple(next_start), tuple(kept))


def _flat(values: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Section keys as `section.key`; a key's value (lists, the phase_timeouts map) whole."""
    for key, value in values.items():
        if not prefix and isinstance(value, Mapping):
            yield from _flat(value, f"{key}.")
        else:
            yield f"{prefix}{key}", value


def _nested(flat: Mapping[str, Any], shape: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in shape.items():
        if isinstance(value, Mapping):
            out[key] = {inner: flat[f"{key}.{inner}"] for inner in value}
        else:
            out[key] = flat[key]
    return out


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."
