"""Where a config comes from: the file to read and the `TRAINGUARD_*` names that override keys.

Kept apart from `trainguard.config` (its models cost ~25 ms to import) so that a quick command
can tell "no config at all" without building them: crash-detector on a log named on its
command line.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

CONFIG_FILENAME = "trainguard.toml"
CONFIG_ENV = "TRAINGUARD_CONFIG"
ENV_PREFIX = "TRAINGUARD_"


def find_config_path(
    explicit: str | os.PathLike[str] | None, env: Mapping[str, str]
) -> Path | None:
    """`-c PATH` if given, else `./trainguard.toml` if present, else `$TRAINGUARD_CONFIG`."""
    if explicit is not None:
        return Path(explicit)
    local = Path(CONFIG_FILENAME)
    if local.is_file():
        return local
    from_env = env.get(CONFIG_ENV)
    return Path(from_env) if from_env else None


def override_keys(name: str) -> tuple[str, ...] | None:
    """The key path an environment variable overrides (`TRAINGUARD_WATCHDOG__MAX_RESTARTS` ->
    `("watchdog", "max_restarts")`, `TRAINGUARD_BASE_DIR` -> `("base_dir",)`), or None for a
    name that is no override: other variables, and `TRAINGUARD_*` names without `__` (the
    config path, the owner mark given to daemons). A malformed name gives an empty part."""
    if not name.startswith(ENV_PREFIX):
        return None
    rest = name[len(ENV_PREFIX) :]
    if rest == "BASE_DIR":
        return ("base_dir",)
    if "__" not in rest:
        return None
    return tuple(part.lower() for part in rest.split("__"))


def has_overrides(env: Mapping[str, str]) -> bool:
    return any(override_keys(name) is not None for name in env)
