"""Two renderers of one Detection: readable text (styled by rich on a terminal) and the
contract's JSON."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, TextIO

from crash_detector.classify import Crash, Finding
from crash_detector.detect import Detection

if TYPE_CHECKING:
    from crash_detector.history import RecordedCrash, Recurring

# One line of the readable report: (text, rich style or None) spans.
Line = list[tuple[str, str | None]]
TAB_SIZE = 8  # rich's default
# What rich drops from any text it prints: bell, backspace, vertical tab, form feed, CR.
_DROPPED = dict.fromkeys((7, 8, 11, 12, 13))
_TAB_OR_NEWLINE = re.compile(r"(\t|\n)")


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


def text_lines(
    detection: Detection,
    recurring: Sequence[Recurring],
    recorded: Sequence[RecordedCrash] = (),
) -> list[Line]:
    """The readable report, line by line: spans of text, each with a rich style or None."""
    result = detection.result
    lines: list[Line] = []
    for number, crash in enumerate(result.crashes, 1):
        cause = crash.cause
        if crash.survived:
            head: Line = [
                (f"error {number}: {cause.category}", "yellow"),
                (" (survived: training went on)", None),
            ]
        else:
            latest = " (most recent: primary)" if crash.cause is result.primary else ""
            head = [(f"crash {number}: {cause.category}", "bold red"), (latest, None)]
        lines.append([*head, (f"  {where(cause)}", None)])
        lines.append([(f"  {cause.text[:300]}", "dim" if cause.file is None else None)])
        retry = "retryable" if cause.retryable else "NOT retryable: a restart fails the same way"
        lines.append([("  ", None), ("suggestion:", "cyan"), (f" {cause.suggestion}", None)])
        lines.append(
            [(f"  rule {cause.rule}; {retry}; {len(crash.evidence)} matching line(s)", None)]
        )
    for item in recurring:
        lines.append(
            [
                ("recurring:", "yellow"),
                (f" {item.category} x{item.count} since {item.first_at}: {item.text[:200]}", None),
            ]
        )
    lines.append([(one_line(detection, recurring), None)])
    if recorded:
        lines.append(
            [
                ("recorded by the watchdog", "cyan"),
                (
                    " when the daemon died (exit status, kernel log, OOM counters and log), "
                    "newest last:",
                    None,
                ),
            ]
        )
    for entry in recorded:
        code = "-" if entry.exit_code is None else str(entry.exit_code)
        lines.append(
            [
                (f"  {entry.at}  ", None),
                (entry.category, "bold"),
                (f"  exit {code}  {entry.reason[:300]}", None),
            ]
        )
        if entry.text and entry.text != entry.reason:
            lines.append([(f"    {entry.text[:300]}", "dim")])
    return [_printable(line) for line in lines]


def _printable(line: Line) -> Line:
    """The line as rich prints it: without the control characters it drops (a tqdm `\\r`, a
    bell) and with tabs expanded to 8-cell stops. Done here, for both printers, so that the
    plain text and the styled one hold the same characters."""
    spans = [(text.translate(_DROPPED), style) for text, style in line]
    if not any("\t" in text for text, _ in spans):
        return spans
    from rich.cells import cell_len  # rich's columns: wide and zero-width characters, an ESC

    expanded: Line = []
    column = 0  # cells since the line (or a newline inside it) began: tab stops count from it
    for text, style in spans:
        pieces: list[str] = []
        for piece in _TAB_OR_NEWLINE.split(text):
            if piece == "\t":
                piece = " " * (TAB_SIZE - column % TAB_SIZE)
                column += len(piece)
            elif piece == "\n":
                column = 0
            else:
                column += cell_len(piece)
            pieces.append(piece)
        expanded.append(("".join(pieces), style))
    return expanded


def styled(stream: TextIO, environ: Mapping[str, str]) -> bool:
    """Whether rich may style the report: on a terminal, or when FORCE_COLOR or TTY_COMPATIBLE
    (rich's own switches, left to it) are set. Anywhere else rich prints exactly what
    `print_plain` does, and importing it would cost more than the rest of the run (~25 ms)."""
    if "FORCE_COLOR" in environ or "TTY_COMPATIBLE" in environ:
        return True
    try:
        return stream.isatty()
    except ValueError:  # a closed stream: rich treats it as no terminal too
        return False


def print_plain(lines: Sequence[Line], stream: TextIO) -> None:
    stream.write("".join("".join(text for text, _ in line) + "\n" for line in lines))


def print_styled(lines: Sequence[Line], stream: TextIO, environ: Mapping[str, str]) -> None:
    """The report with rich's styles, as rich's Console prints it on a 16-colour terminal (a
    test holds the two equal), from rich's `Style` alone: the Console's import would cost a
    fifth of the run (~25 ms) for nothing else it does here (no wrapping, no markup, no
    highlighting). NO_COLOR keeps bold and dim, drops colours; TERM=dumb prints plain."""
    if environ.get("TERM", "").lower() in ("dumb", "unknown"):
        print_plain(lines, stream)
        return
    from rich.color import ColorSystem
    from rich.style import Style

    no_color = environ.get("NO_COLOR", "") != ""
    parsed: dict[str, Style] = {}
    out: list[str] = []
    for line in lines:
        for text, name in line:
            if name is None or not text:
                out.append(text)
                continue
            style = parsed.get(name)
            if style is None:
                style = Style.parse(name)
                parsed[name] = style = style.without_color if no_color else style
            # Each line of a styled span on its own, as the Console renders line by line.
            out.append("\n".join(
                style.render(part, color_system=ColorSystem.STANDARD) if part else ""
                for part in text.split("\n")
            ))  # fmt: skip
        out.append("\n")
    stream.write("".join(out))
