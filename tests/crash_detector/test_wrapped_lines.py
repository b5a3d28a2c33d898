"""A log that a terminal hard-wrapped: its lines joined back, and nothing a line says lost."""

from __future__ import annotations

import pytest

from crash_detector import wrapped_lines
from crash_detector.classify import classify_text
from crash_detector.rules import load_rules
from crash_detector.scanner import Scanner, hyperscan, re2

ENGINES = [
    "re",
    *(["re2"] if re2 is not None else []),
    *(["hyperscan"] if hyperscan is not None else []),
]
CATALOG = load_rules()
SCANNER = Scanner(CATALOG)

OOM = (
    "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 23.65 GiB total "
    "capacity; 21.10 GiB already allocated; 1.12 GiB free; 21.40 GiB reserved in total by PyTorch)"
)


def fold(text: str, width: int) -> str:
    """What `fold -w WIDTH` (or a terminal WIDTH columns wide) prints."""
    out: list[str] = []
    for line in text.split("\n"):
        out += [line[i : i + width] for i in range(0, len(line), width)] or [""]
    return "\n".join(out)


def _primary(text: str, scanner: Scanner = SCANNER) -> str:
    primary = classify_text(text, scanner=scanner).primary
    return primary.category if primary else "none"


def log(width: int) -> str:
    """A crash whose error line, behind a timestamp, has "CUDA out of memory" across column
    `width`: wrapped there, no line holds the words."""
    stamp = "[2024-05-01 10:00:00,123] ERROR".ljust(width - 22)
    return "\n".join(
        [
            "step 10 loss 2.31",
            "Traceback (most recent call last):",
            '  File "/opt/app/train.py", line 42, in <module>',
            "    loss.backward()",
            stamp + OOM,
        ]
    )


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("width", [80, 100, 77])
def test_a_message_a_terminal_cut_in_two_is_read_whole(engine: str, width: int) -> None:
    wrapped = fold(log(width), width)
    assert not any("CUDA out of memory" in line for line in wrapped.split("\n"))
    assert _primary(wrapped, Scanner(CATALOG, engine=engine)) == "cuda_oom"


def test_the_finding_is_on_the_first_line_of_the_wrapped_message() -> None:
    wrapped = fold(log(80), 80).encode()
    lines = wrapped.split(b"\n")
    matches = SCANNER.scan(wrapped).matches
    oom = [m for m in matches if any(r.category == "cuda_oom" for r in m.rules)]
    assert len(oom) == 1
    assert oom[0].index == 4  # the line the error starts on
    assert oom[0].offset == sum(len(line) + 1 for line in lines[:4])
    assert "CUDA out of memory. Tried to allocate 2.00 GiB" in oom[0].text


def test_a_wrapped_log_with_crlf_and_colour_is_read_whole() -> None:
    wrapped = fold(log(80), 80).split("\n")
    coloured = "\r\n".join(f"\x1b[31m{line}\x1b[0m" for line in wrapped)
    assert _primary(coloured) == "cuda_oom"


def test_a_log_as_written_is_not_joined() -> None:
    # One longest line, at no terminal's width: lines as they were printed.
    log = f"step 1 loss 2.0\n{'x' * 90}\n{'y' * 70}\nstep 2 loss 1.9".encode()
    assert wrapped_lines.unwrap(log) is None
    assert wrapped_lines.unwrap(b"short\nlines\n") is None


def test_wide_characters_count_as_columns_not_bytes() -> None:
    # 80 characters, most of them 3 bytes in UTF-8: still 80 columns wide.
    piece = "显存不足" * 20
    unwrapped = wrapped_lines.unwrap(f"{piece}\nrest of it\nnext".encode())
    assert unwrapped is not None
    assert unwrapped.buffer.decode().split("\n") == [f"{piece}rest of it", "next"]
    assert list(unwrapped.pieces(0)) == [0, 1]
    assert list(unwrapped.pieces(1)) == [2]


def test_a_buffer_too_big_to_be_a_tail_is_read_as_written() -> None:
    line = b"a" * 79 + b"\n"
    big = line * (wrapped_lines.MAX_BYTES // len(line) + 1)
    assert wrapped_lines.unwrap(big[:4000]) is not None
    assert wrapped_lines.unwrap(big) is None


@pytest.mark.parametrize("engine", ENGINES)
def test_joining_never_hides_what_a_line_says(engine: str) -> None:
    """Two lines that only look wrapped (both as wide as the widest) are joined, but each keeps
    what it matched: a warning's ignore pattern does not swallow the error after it."""
    warning = "UserWarning: this overload is deprecated and will be removed in a later release."
    error = "RuntimeError: CUDA error: an illegal memory access was encountered"
    width = len(warning)
    log = "\n".join([warning, "step 3 loss 1.2", warning, error.ljust(width)[:width], "x"])
    unwrapped = wrapped_lines.unwrap(log.encode())
    assert unwrapped is not None and unwrapped.runs  # taken for wrapped
    assert _primary(log, Scanner(CATALOG, engine=engine)) == "cuda_error"
