"""Two renderers of one Detection: readable text (rich) and the contract's JSON."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from crash_detector.classify import Crash, Finding
from crash_detector.detect import Detection
from crash_detector.history import RecordedCrash, Recurring

if TYPE_CHECKING:
    from rich.console import Console


def finding_json(finding: Finding) -> dict[str, Any]:
    return {
        "category": finding.category,
        "file": finding.file,
        "line": finding.line,
        "offset": finding.offset,
        "text": finding.text,
        "rule": finding.rule,
        "severity": finding.severity,
        "suggestion": finding.suggestion,
        "retryable": finding.retryable,
    }


def crash_json(crash: Crash) -> dict[str, Any]:
    evidence = [
        {"category": f.category, "rule": f.rule, "line": f.line, "text": f.text[:300]}
        for f in crash.evidence[-20:]
        if f is not crash.cause
    ]
    return {**finding_json(crash.cause), "survived": crash.survived, "evidence": evidence}


def to_json(
    detection: Detection,
    recurring: Sequence[Recurring],
    history: dict[str, Any] | None,
    recorded: Sequence[RecordedCrash] | None = None,
) -> str:
    result = detection.result
    return json.dumps(
        {
            "crashes": [crash_json(c) for c in result.crashes],
            "primary": finding_json(result.primary) if result.primary else None,
            "counts": result.counts,
            "recurring": [r.__dict__ for r in recurring],
            "files": [
                {
                    "path": s.path,
                    "lines_read": s.lines_read,
                    "bytes_read": s.bytes_read,
                    "truncated": s.truncated,
                }
                for s in detection.files
            ],
            "history": history,
            "recorded": None if recorded is None else [r.__dict__ for r in recorded],
        },
        indent=2,
    )


def where(finding: Finding) -> str:
    if finding.file is None:
        return "(exit status)"
    if finding.line is not None:
        return f"{finding.file}:{finding.line}"
    return f"{finding.file} @byte {finding.offset}"


def one_line(detection: Detection, recurring: Sequence[Recurring]) -> str:
    result = detection.result
    files = len(detection.files)
    if result.primary is None:
        line = f"OK: no crash in {files} log file{'s' * (files != 1)}"
        if result.crashes:  # every one of them was survived
            line += "; survived: " + ", ".join(f"{c} {n}" for c, n in sorted(result.counts.items()))
        return line
    counts = ", ".join(f"{cat} {n}" for cat, n in sorted(result.counts.items()))
    line = f"CRASH {result.primary.category} at {where(result.primary)} ({counts})"
    if recurring:
        top = recurring[0]
        line += f"; recurring: {top.category} x{top.count}"
    return line


def render_text(
    detection: Detection,
    recurring: Sequence[Recurring],
    console: Console,
    recorded: Sequence[RecordedCrash] = (),
) -> None:
    from rich.markup import escape  # rich costs ~50 ms to import: only for human output

    result = detection.result
    # Every string from a log, a path, a rules file or the history is escaped: `[bold]` in a
    # folder name is text, not markup (and an unbalanced `[/x]` would raise).
    for number, crash in enumerate(result.crashes, 1):
        cause = crash.cause
        if crash.survived:
            survived = "(survived: training went on)"
            head = f"[yellow]error {number}: {escape(cause.category)}[/] {survived}"
        else:
            latest = " (most recent: primary)" if crash.cause is result.primary else ""
            head = f"[bold red]crash {number}: {escape(cause.category)}[/]{latest}"
        console.print(f"{head}  {escape(where(cause))}")
        console.print(f"  {escape(cause.text[:300])}", style="dim" if cause.file is None else None)
        retry = "retryable" if cause.retryable else "NOT retryable: a restart fails the same way"
        console.print(f"  [cyan]suggestion:[/] {escape(cause.suggestion)}")
        console.print(
            f"  rule {escape(cause.rule)}; {retry}; {len(crash.evidence)} matching line(s)"
        )
    for item in recurring:
        console.print(
            f"[yellow]recurring:[/] {escape(item.category)} x{item.count} since "
            f"{escape(item.first_at)}: {escape(item.text[:200])}"
        )
    console.print(escape(one_line(detection, recurring)))
    if recorded:
        console.print(
            "[cyan]recorded by the watchdog[/] when the daemon died (exit status, kernel log, OOM "
            "counters and log), newest last:"
        )
    for entry in recorded:
        code = "-" if entry.exit_code is None else str(entry.exit_code)
        console.print(
            f"  {escape(entry.at)}  [bold]{escape(entry.category)}[/]  exit {code}  "
            f"{escape(entry.reason[:300])}"
        )
        if entry.text and entry.text != entry.reason:
            console.print(f"    {escape(entry.text[:300])}", style="dim")
