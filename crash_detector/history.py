"""`.crash_history.jsonl`: one JSON object per crash, appended; recurring patterns read from it.

Two keys per record: `fingerprint` (category + the message with numbers, addresses and paths
blanked) groups the same failure across days; `occurrence` says "this very crash again", so
scanning the same log twice records nothing new. For a line of a log it is (file, offset,
text). A crash that only the exit status shows has no line: its occurrence is the exit status
plus the size and mtime of every log read, so rerunning on unchanged logs records nothing new,
while the next such crash (the logs grew or were touched meanwhile) is recorded.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from crash_detector.classify import Crash, Finding
from trainguard.timestamps import parse_iso_utc, utc_now_iso

_NOISE = [
    (re.compile(r"^\S*\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d\S*\s*"), ""),  # leading timestamp
    (re.compile(r"0x[0-9a-fA-F]+"), "HEX"),
    (re.compile(r"(?:/[\w.@+-]+)+"), "/PATH"),
    (re.compile(r"\d+(?:\.\d+)?\s*[KMGT]i?B\b"), "#B"),  # 2.00 GiB and 512 MiB: one failure
    (re.compile(r"\d+(?:\.\d+)?"), "#"),
    (re.compile(r"\s+"), " "),
]


def normalize(text: str) -> str:
    for pattern, replacement in _NOISE:
        text = pattern.sub(replacement, text)
    return text.strip().lower()


def fingerprint(finding: Finding) -> str:
    return _digest(finding.category, normalize(finding.text))[:16]


# A log as it was read: (path, size in bytes, mtime in ns).
LogState = tuple[str, int, int]


def occurrence(
    finding: Finding, *, exit_code: int | None = None, logs: Sequence[LogState] = ()
) -> str:
    if finding.offset is not None:
        where = os.path.realpath(finding.file) if finding.file else ""
        return _digest(where, str(finding.offset), finding.text)[:20]
    seen = sorted(f"{os.path.realpath(path)}:{size}:{mtime}" for path, size, mtime in logs)
    return _digest("exit status", str(exit_code), finding.text, *seen)[:20]


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode("utf-8", "replace")).hexdigest()


def now_iso() -> str:
    return utc_now_iso("seconds")


def to_record(
    crash: Crash,
    *,
    source: str,
    exit_code: int | None = None,
    logs: Sequence[LogState] = (),
) -> dict[str, Any]:
    """The history record of `crash`; `logs` are the logs read, as they were when read."""
    cause = crash.cause
    return {
        "at": now_iso(),
        "category": cause.category,
        "rule": cause.rule,
        "retryable": cause.retryable,
        "fingerprint": fingerprint(cause),
        "occurrence": occurrence(cause, exit_code=exit_code, logs=logs),
        "file": cause.file,
        "line": cause.line,
        "offset": cause.offset,
        "text": cause.text[:500],
        "suggestion": cause.suggestion,
        "exit_code": exit_code,
        "source": source,
        "survived": crash.survived,
    }


def append_new(history: Path, records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Append the records whose occurrence is not yet in `history`; return those appended.

    An exclusive lock keeps the watchdog and a cron run of crash-detector from both
    appending the same crash; each record is one write() of one line to an O_APPEND file.
    """
    history.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(history, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    with os.fdopen(fd, "r+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        seen = {record.get("occurrence") for record in _parse(fh.read().splitlines())}
        added = [record for record in records if record["occurrence"] not in seen]
        for record in added:
            os.write(fh.fileno(), (json.dumps(record, sort_keys=True) + "\n").encode())
            seen.add(record["occurrence"])
        if added:
            os.fsync(fh.fileno())
    return added


def read_history(history: Path) -> list[dict[str, Any]]:
    """Every well-formed record; a torn or hand-edited line is skipped, never fatal."""
    try:
        with open(history, "rb") as fh:
            return _parse(fh.read().splitlines())
    except FileNotFoundError:
        return []


def _parse(lines: Iterable[bytes]) -> list[dict[str, Any]]:
    records = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("fingerprint"), str):
            records.append(record)
    return records


WATCHDOG_SOURCE = "daemon-watchdog"  # the `source` of the records the watchdog appends


@dataclass(frozen=True)
class RecordedCrash:
    """A crash as the watchdog diagnosed it when it happened (exit status, kernel log, log)."""

    at: str
    category: str
    reason: str
    exit_code: int | None
    text: str  # the evidence that decided it
    retryable: bool


def watchdog_crashes(records: Sequence[dict[str, Any]], *, limit: int) -> list[RecordedCrash]:
    """The newest `limit` crashes the watchdog recorded, oldest first."""
    found = [
        RecordedCrash(
            at=str(record.get("at", "")),
            category=str(record.get("category", "unknown")),
            reason=str(record.get("reason", "")),
            exit_code=code if isinstance(code := record.get("exit_code"), int) else None,
            text=str(record.get("text", "")),
            retryable=record.get("retryable") is not False,
        )
        for record in records
        if record.get("source") == WATCHDOG_SOURCE
    ]
    return found[-limit:] if limit > 0 else []


@dataclass(frozen=True)
class Recurring:
    fingerprint: str
    category: str
    count: int
    first_at: str
    last_at: str
    text: str


def recurring(
    records: Sequence[dict[str, Any]],
    *,
    window: timedelta,
    min_count: int,
    now: datetime | None = None,
) -> list[Recurring]:
    """Fingerprints seen at least `min_count` times within `window` before `now`, most first."""
    cutoff = (now or datetime.now(timezone.utc)) - window
    groups: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        at = _parse_time(record.get("at"))
        if at is not None and at >= cutoff:
            groups.setdefault(record["fingerprint"], []).append(record)
    found = [
        Recurring(
            fingerprint=key,
            category=str(items[-1].get("category", "unknown")),
            count=len(items),
            first_at=str(items[0]["at"]),
            last_at=str(items[-1]["at"]),
            text=str(items[-1].get("text", "")),
        )
        for key, items in groups.items()
        if len(items) >= min_count
    ]
    return sorted(found, key=lambda r: (-r.count, r.last_at))


def _parse_time(value: object) -> datetime | None:
    return parse_iso_utc(value)
