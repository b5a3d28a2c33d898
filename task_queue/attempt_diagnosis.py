"""Why an attempt failed: the crash detector on what it wrote to its log, plus its exit status."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from crash_detector.classify import classify_text
from crash_detector.scanner import Scanner
from crash_detector.tail import last_lines

LOG_TAIL_LINES = 1000
TRACEBACK_LINES = 40  # the traceback tail the ledger keeps
LINES_WITHOUT_TRACEBACK = 5


@dataclass(frozen=True)
class AttemptDiagnosis:
    category: str
    retryable: bool
    error: str  # one line: the log line that decided it, else how the process ended
    traceback_tail: str


def diagnose_attempt(
    scanner: Scanner,
    log_file: Path,
    *,
    since: int,
    exit_code: int | None,
    how: str,
    tail: bytes | None = None,
) -> AttemptDiagnosis:
    """Classify what the attempt wrote to `log_file` from byte `since` (its own output, not
    an earlier attempt's), or `tail` (that output's end, read on the machine that ran it),
    with its exit status (`exit_code`: negative for a signal)."""
    if tail is not None:
        lines = tail.splitlines()[-LOG_TAIL_LINES:]
    else:
        try:
            lines = list(last_lines(log_file, LOG_TAIL_LINES).lines_from(since))
        except (OSError, ValueError):
            lines = []
    crash = _crash_block(lines[-TRACEBACK_LINES:]).decode("utf-8", "replace")
    result = classify_text(b"\n".join(lines), exit_code=exit_code, scanner=scanner)
    primary = result.primary
    if primary is None:
        return AttemptDiagnosis("unknown", True, how, crash)
    if primary.rule.startswith("exit_status.") or not primary.text:
        return AttemptDiagnosis(primary.category, primary.retryable, how, crash)  # said already
    first = primary.text.splitlines()[0]
    return AttemptDiagnosis(primary.category, primary.retryable, f"{how}: {first}", crash)


def _crash_block(lines: list[bytes]) -> bytes:
    """From the last traceback on, or else the last few lines."""
    for index in range(len(lines) - 1, -1, -1):
        if lines[index].lstrip().startswith(b"Traceback (most recent call last)"):
            return b"\n".join(lines[index:])
    return b"\n".join(lines[-LINES_WITHOUT_TRACEBACK:])
