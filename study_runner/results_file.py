"""predictions.jsonl: one JSON record a line, only ever appended; the latest record of an idx wins.

Appending (never rewriting) is what makes a crash harmless: the worst a kill mid-write can
leave is one truncated last line, which reading skips and the next append starts after.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

log = logging.getLogger("study_runner")

Record = dict[str, Any]
ERROR_PREFIX = "[ERROR: "
ABORTED_PREFIX = "[ABORTED: "
_SHOWN = 200  # characters of an error kept in the `[ERROR: ...]` prediction
_KEPT = 2000  # characters of an error kept in a record's "error"


def prediction_record(idx: int, prediction: Any) -> Record:
    return {"idx": idx, "prediction": prediction}


def error_record(idx: int, message: str) -> Record:
    """An item that failed when tried alone."""
    return {
        "idx": idx,
        "prediction": f"{ERROR_PREFIX}{_first_line(message)}]",
        "error": message[:_KEPT],
    }


def aborted_record(idx: int, reason: str, message: str) -> Record:
    """An item left undone because the run stopped; `message` is the error that stopped it."""
    return {"idx": idx, "prediction": f"{ABORTED_PREFIX}{reason}]", "error": message[:_KEPT]}


def is_failed(record: Record) -> bool:
    """Recorded as an error or an abort: a rerun computes it again.

    The "error" key is what our records carry; the prefix also catches such records written by
    hand or by an older script in the same format."""
    prediction = record.get("prediction")
    return "error" in record or (
        isinstance(prediction, str) and prediction.startswith((ERROR_PREFIX, ABORTED_PREFIX))
    )


# One encoder for every line: json.dumps with any non-default argument builds a new one per
# call, which was half the executor's cost per batch (32 records: 80 us against 20 us).
_encode = json.JSONEncoder(ensure_ascii=False).encode


# The one str UTF-8 cannot hold, a lone surrogate (a model's broken decode), becomes the six
# characters `\udXXX`: inside a JSON string that is its escape, so it reads back exactly.
_UTF8 = ("utf-8", "backslashreplace")


def encode(records: Iterable[Record]) -> bytes:
    """The lines to append; raises TypeError / ValueError for a prediction JSON cannot hold."""
    return "".join([_encode(r) + "\n" for r in records]).encode(*_UTF8)


def encode_predictions(idxs: Iterable[int], predictions: Iterable[Any]) -> bytes:
    """`encode` of prediction records, the same bytes, faster: a string (the usual prediction)
    is encoded without building a dict and walking it."""
    return "".join(
        [
            f'{{"idx": {i}, "prediction": {_encode(p)}}}\n'
            for i, p in zip(idxs, predictions, strict=True)
        ]
    ).encode(*_UTF8)


def read_latest(path: Path) -> dict[int, Record]:
    """The latest record of each idx in `path` ({} if it does not exist).

    A line that is not a JSON object with a non-negative integer "idx" is skipped with a
    warning, never fatal: a crash mid-write leaves a truncated last line, and once a rerun has
    appended after it, that line sits in the middle of the file."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return {}
    latest: dict[int, Record] = {}
    skipped = 0
    for line in data.split(b"\n"):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            skipped += 1
            continue
        idx = record.get("idx") if isinstance(record, dict) else None
        if type(idx) is not int or idx < 0:
            skipped += 1
            continue
        latest[idx] = record
    if skipped:
        log.warning(
            "%s: skipped %d unreadable line(s) (a crash mid-write leaves one)", path, skipped
        )
    return latest


class ResultsFile:
    """The append side: whole lines, one write per batch, on a line of their own."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        self.fd = os.open(path, flags, 0o644)
        size = os.fstat(self.fd).st_size
        # After a truncated last line, the first append starts with the newline it lacks.
        self._prefix = b"\n" if size and os.pread(self.fd, 1, size - 1) != b"\n" else b""

    def append(self, data: bytes) -> None:
        view = memoryview(self._prefix + data)
        self._prefix = b""
        while view:
            view = view[os.write(self.fd, view) :]

    def close(self) -> None:
        os.close(self.fd)


def _first_line(message: str) -> str:
    line = message.strip().split("\n", 1)[0]
    return line if len(line) <= _SHOWN else line[: _SHOWN - 3] + "..."
