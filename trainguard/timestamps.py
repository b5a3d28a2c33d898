"""Times in state files, histories and logs: ISO-8601, UTC, with a `Z`."""

from __future__ import annotations

from datetime import datetime, timezone


def utc_now_iso(timespec: str = "milliseconds") -> str:
    return datetime.now(timezone.utc).isoformat(timespec=timespec).replace("+00:00", "Z")


def parse_iso_utc(value: object) -> datetime | None:
    """An ISO-8601 time as an aware datetime (naive means UTC); None if `value` is not one.

    Accepts the `Z` suffix on Python 3.10 too, whose `fromisoformat` rejects it.
    """
    if not isinstance(value, str):
        return None
    text = value[:-1] + "+00:00" if value.endswith(("Z", "z")) else value
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=timezone.utc)
