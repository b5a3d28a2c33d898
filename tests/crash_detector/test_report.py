"""The readable report: plain text off a terminal (no rich), styled by rich on one, same text."""

from __future__ import annotations

import io

from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console
from rich.text import Text

from crash_detector import report
from crash_detector.classify import Crash, Finding, Result
from crash_detector.detect import Detection, FileScan
from crash_detector.history import RecordedCrash, Recurring

# What log lines, paths and rule files hold that a printer could get wrong: markup look-alikes
# and backslashes, tabs after wide, zero-width and escape characters, the control characters
# rich drops (tqdm's \r), newlines.
_PIECES = st.sampled_from(
    ["a", "Z", " ", "[", "]", "/", "\\", "@", "#", ":", "[bold]", "[/]", "[red]x[/red]",
     "\t", "\r", "\x07", "\x08", "\x0b", "\x0c", "\x1b[31m", "\n", "é", "e\u0301", "显存",
     "🔥", " " * 85]
)  # fmt: skip
_TEXT = st.lists(_PIECES, max_size=12).map("".join)


@st.composite
def _findings(draw: st.DrawFn) -> Finding:
    return Finding(
        category=draw(_TEXT),
        rule=draw(_TEXT),
        priority=500,
        severity="error",
        retryable=draw(st.booleans()),
        suggestion=draw(_TEXT),
        text=draw(_TEXT),
        file=draw(st.none() | _TEXT),
        line=draw(st.none() | st.just(12)),
        offset=draw(st.none() | st.just(4096)),
    )


@st.composite
def _reports(
    draw: st.DrawFn,
) -> tuple[Detection, list[Recurring], list[RecordedCrash]]:
    crashes = tuple(
        Crash(cause, (cause,), survived=draw(st.booleans()))
        for cause in draw(st.lists(_findings(), max_size=3))
    )
    primary = next((c.cause for c in reversed(crashes) if not c.survived), None)
    detection = Detection(Result(crashes, primary), [FileScan("t.log", [], 1, 1, False)])
    recurring = [
        Recurring("fp", draw(_TEXT), 3, draw(_TEXT), "2026-01-01T00:00:00Z", draw(_TEXT))
        for _ in range(draw(st.integers(0, 2)))
    ]
    recorded = [
        RecordedCrash(
            draw(_TEXT), draw(_TEXT), draw(_TEXT), draw(st.none() | st.just(-9)), draw(_TEXT), True
        )
        for _ in range(draw(st.integers(0, 2)))
    ]
    return detection, recurring, recorded


def _rich(lines: list[report.Line], *, terminal: bool, no_color: bool = False) -> str:
    """The report as rich's own Console prints it (the CLI's options; 16 colours on a
    terminal): what the CLI's printers must reproduce without importing it."""
    out = io.StringIO()
    console = Console(
        file=out,
        highlight=False,
        soft_wrap=True,
        emoji=False,
        force_terminal=terminal,
        color_system="standard" if terminal else None,
        no_color=no_color,
    )
    for line in lines:
        # Text, not markup: a `[bold]` in a path, a rule id or a log line is printed as is.
        console.print(
            Text.assemble(*(text if style is None else (text, style) for text, style in line))
        )
    return out.getvalue()


@settings(max_examples=300, deadline=None)
@given(_reports())
def test_plain_text_is_what_rich_prints_off_a_terminal(
    shown: tuple[Detection, list[Recurring], list[RecordedCrash]],
) -> None:
    lines = report.text_lines(*shown)
    plain = io.StringIO()
    report.print_plain(lines, plain)
    assert plain.getvalue() == _rich(lines, terminal=False)


@settings(max_examples=300, deadline=None)
@given(_reports(), st.booleans())
def test_styled_text_is_what_rich_prints_on_a_terminal(
    shown: tuple[Detection, list[Recurring], list[RecordedCrash]], no_color: bool
) -> None:
    lines = report.text_lines(*shown)
    styled = io.StringIO()
    report.print_styled(lines, styled, {"NO_COLOR": "1"} if no_color else {})
    assert styled.getvalue() == _rich(lines, terminal=True, no_color=no_color)
    if not no_color and any(not c.survived for c in shown[0].result.crashes):
        assert "\x1b[1;31m" in styled.getvalue()  # a crash's heading: bold red


def test_a_dumb_terminal_gets_plain_text() -> None:
    cause = Finding("cuda_oom", "r", 1, "error", True, "s", "oom", file="t.log")
    lines = report.text_lines(Detection(Result((Crash(cause, (cause,)),), cause), []), [], [])
    styled, plain = io.StringIO(), io.StringIO()
    report.print_styled(lines, styled, {"TERM": "dumb"})
    report.print_plain(lines, plain)
    assert styled.getvalue() == plain.getvalue() and "\x1b" not in plain.getvalue()


def test_a_tab_stops_at_rich_columns_after_wide_and_zero_width_characters() -> None:
    cause = Finding("cuda_oom", "r", 1, "error", True, "s", "显存\tx\x1b[0m\ty", file="t.log")
    detection = Detection(Result((Crash(cause, (cause,)),), cause), [])
    out = io.StringIO()
    report.print_plain(report.text_lines(detection, [], []), out)
    # "  显存" fills 6 columns: the tab goes to 8; "x\x1b[0m" fills 4 (the ESC none): on to 16.
    assert "\n  显存  x\x1b[0m    y\n" in out.getvalue()


class _Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_rich_styles_the_report_only_on_a_terminal_or_when_told_to() -> None:
    assert report.styled(_Stream(tty=True), {})
    assert not report.styled(_Stream(tty=False), {"NO_COLOR": "1", "TERM": "xterm"})
    # rich's own switches: it decides what they mean (FORCE_COLOR="" is "no", for one).
    assert report.styled(_Stream(tty=False), {"FORCE_COLOR": "1"})
    assert report.styled(_Stream(tty=False), {"TTY_COMPATIBLE": "1"})
    closed = _Stream(tty=False)
    closed.close()
    assert not report.styled(closed, {})
