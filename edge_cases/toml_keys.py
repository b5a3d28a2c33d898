"""Edit trainguard.toml as an operator would: one key of one section at a time."""

from __future__ import annotations

import json
from typing import Any


def set_toml_key(text: str, section: str, key: str, value: Any) -> str:
    """Replace (or add) `key = value` in `[section]`; JSON literals are valid TOML for these."""
    lines = text.splitlines()
    start = lines.index(f"[{section}]")
    literal = json.dumps(value)
    end = len(lines)
    for i in range(start + 1, len(lines)):
        if lines[i].startswith("["):
            end = i
            break
        if lines[i].split("=")[0].strip() == key:
            lines[i] = f"{key} = {literal}"
            return "\n".join(lines) + "\n"
    lines.insert(end, f"{key} = {literal}")
    return "\n".join(lines) + "\n"
