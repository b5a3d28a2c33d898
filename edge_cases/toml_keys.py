"""Edit trainguard.toml as an operator would: one key of one section at a time, with a TOML
library (tomlkit), so that comments, order and every other key stay as they were."""

from __future__ import annotations

from typing import Any

import tomlkit
from tomlkit.items import Table


def set_toml_key(text: str, section: str, key: str, value: Any) -> str:
    """Replace (or add) `key = value` in `[section]` (dotted: `watchdog.phase_timeouts`),
    making the table if it is missing."""
    document = tomlkit.parse(text)
    table: Any = document
    for name in section.split("."):
        if name not in table:
            table[name] = tomlkit.table()
        table = table[name]
        if not isinstance(table, Table):
            raise ValueError(f"[{section}]: {name} is not a table")
    table[key] = value
    return tomlkit.dumps(document)
