"""Other ways to read a tail: colour codes inside lines removed, hard-wrapped lines joined."""

from __future__ import annotations

from pathlib import Path

import pytest

from crash_detector import log_views
from crash_detector.classify import classify_text
from crash_detector.detect import detect
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
    assert log_views.unwrap(log) is None
    assert log_views.unwrap(b"short\nlines\n") is None


def test_a_line_repeated_word_for_word_is_no_sign_of_wrapping() -> None:
    warning = b"UserWarning: the mask of a padded batch is deprecated; pass attention_mask"
    assert log_views.unwrap(b"\n".join([warning, b"step 1", warning, b"step 2"])) is None
    assert log_views.unwrap(b"\n".join([warning, b"step 1", warning[::-1], b"step 2"]))


def test_wide_characters_count_as_columns_not_bytes() -> None:
    # 80 characters, most of them 3 bytes in UTF-8: still 80 columns wide.
    piece = "显存不足" * 20
    unwrapped = log_views.unwrap(f"{piece}\nrest of it\nnext".encode())
    assert unwrapped is not None
    assert unwrapped.buffer.decode().split("\n") == [f"{piece}rest of it", "next"]
    assert list(unwrapped.pieces(0)) == [0, 1]
    assert list(unwrapped.pieces(1)) == [2]


def test_a_buffer_too_big_to_be_a_tail_is_read_as_written() -> None:
    lines = (b"%07d " % i + b"a" * 71 + b"\n" for i in range(log_views.MAX_BYTES // 80 + 1))
    big = b"".join(lines)  # 79 wide each, all different
    assert log_views.unwrap(big[:4000]) is not None
    assert log_views.unwrap(big) is None


@pytest.mark.parametrize("engine", ENGINES)
def test_joining_never_hides_what_a_line_says(engine: str) -> None:
    """Two lines that only look wrapped (both as wide as the widest) are joined, but each keeps
    what it matched: a warning's ignore pattern does not swallow the error after it."""
    warning = "UserWarning: this overload is deprecated and will be removed in a later release."
    error = "RuntimeError: CUDA error: an illegal memory access was encountered"
    width = len(warning)
    log = "\n".join([warning, "step 3 loss 1.2", warning, error.ljust(width)[:width], "x"])
    unwrapped = log_views.unwrap(log.encode())
    assert unwrapped is not None and unwrapped.changed  # taken for wrapped
    assert _primary(log, Scanner(CATALOG, engine=engine)) == "cuda_error"


# --- colour inside a line ----------------------------------------------------------------------


def _ipython(name: str, message: str, esc: str) -> str:
    """An IPython/Colab traceback: the class coloured in the header and in the last line."""
    red, reset = f"{esc}[0;31m", f"{esc}[0m"
    return "\n".join(
        [
            f"{red}{'-' * 75}{reset}",
            f"{red}{name}{reset}{' ' * 20}Traceback (most recent call last)",
            f"Cell {esc}[0;32mIn[4], line 3{reset}",
            f"{red}----> 3{reset} trainer{esc}[38;5;241m.{reset}train()",
            "",
            f"{red}{name}{reset}: {message}",
        ]
    )


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("esc", ["\x1b", ""], ids=["ansi", "pasted_without_esc"])
@pytest.mark.parametrize(
    ("name", "message", "category"),
    [
        ("ModuleNotFoundError", "No module named 'flash_attn'", "import_error"),
        ("PermissionError", "[Errno 13] Permission denied: '/data/out'", "permission_error"),
        ("OutOfMemoryError", "CUDA out of memory. Tried to allocate 2.00 GiB", "cuda_oom"),
        ("KeyError", "'learning_rate'", "unknown"),
    ],
)
def test_colour_codes_inside_a_line_do_not_hide_the_error(
    engine: str, esc: str, name: str, message: str, category: str
) -> None:
    log = _ipython(name, message, esc)
    assert _primary(log, Scanner(CATALOG, engine=engine)) == category


def test_a_decoloured_finding_is_on_its_own_line_with_the_plain_text() -> None:
    log = (
        "step 1 loss 2.0\n" + _ipython("ModuleNotFoundError", "No module named 'x'", "")
    ).encode()
    lines = log.split(b"\n")
    found = [
        m for m in SCANNER.scan(log).matches if any(r.id == "import_error.python" for r in m.rules)
    ]
    assert [m.index for m in found] == [2, 6]  # the header and the last line
    assert found[-1].offset == sum(len(line) + 1 for line in lines[:6])
    assert found[-1].text == "ModuleNotFoundError: No module named 'x'"


def test_a_log_without_codes_inside_its_lines_has_no_decoloured_view() -> None:
    assert log_views.decolour(b"step 1 loss [0.5]\nTraceback (most recent call last):\n") is None
    view = log_views.decolour(b"ok\n[1mKeyError[0m: 'x'\nok")
    assert view is not None
    assert view.buffer == b"ok\nKeyError: 'x'\nok"
    assert view.changed == frozenset({1})


# --- lines glued together ----------------------------------------------------------------------


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize(
    ("log", "category"),
    [
        ("Loading checkpoint shards:  50%|#####     | 1/2 [00:09<00:09,  9.10s/it]Killed",
         "host_oom"),
        (" 20%|##        | 2/10 [00:02<00:08,  1.00it/s]\r 30%|###       | 3/10 [00:03<00:07,"
         "  1.00it/s]ValueError: Expected input batch_size (8) to match target batch_size (4).",
         "unknown"),
        ("step 3\rstep 4\rKilled", "host_oom"),
        # an error's line with a warning that another stream wrote straight after it
        ("RuntimeError: Expected all tensors to be on the same device, but found at least two "
         "devices, cuda:0 and cpu!/opt/venv/lib/python3.10/site-packages/torch/autograd/"
         "graph.py:744: UserWarning: Error detected in AddmmBackward0.", "unknown"),
    ],
)  # fmt: skip
def test_what_was_printed_after_a_progress_bar_or_before_a_warning_is_read(
    engine: str, log: str, category: str
) -> None:
    assert _primary(log, Scanner(CATALOG, engine=engine)) == category


def test_a_line_printed_as_written_has_no_unglued_view() -> None:
    assert log_views.unglue(b"epoch 1: 100%|##########| 10/10 [00:01<00:00, 9.9it/s]\n") is None
    assert log_views.unglue(b"/opt/x.py:3: UserWarning: a warning on its own line\n") is None
    view = log_views.unglue(b"a\n 1/2 [00:01<00:01, 1.0it/s]Killed\nb")
    assert view is not None
    assert view.buffer == b"a\n 1/2 [00:01<00:01, 1.0it/s]\nKilled\nb"
    assert view.first == [0, 1, 1, 2]
    assert [list(view.pieces(i)) for i in range(4)] == [[0], [1], [1], [2]]


def test_a_run_of_full_width_lines_is_joined_a_bounded_number_at_a_time() -> None:
    bars = [f"{i:>3}/999 " + "#" * 72 for i in range(100)]  # 80 wide each
    unwrapped = log_views.unwrap("\n".join([*bars, "done"]).encode())
    assert unwrapped is not None
    longest = max(len(line) for line in unwrapped.buffer.split(b"\n"))
    assert longest == 80 * (log_views.MAX_PIECES + 1)
    assert unwrapped.buffer.replace(b"\n", b"") == "".join([*bars, "done"]).encode()


# --- which reads get the views -----------------------------------------------------------------


def _category(log: Path, **read: int) -> str | None:
    primary = detect([log], SCANNER, **read).result.primary
    return primary.category if primary else None


@pytest.mark.parametrize("mib", [0, 5, 9])  # one chunk; one chunk over 4 MiB; two chunks
def test_a_full_scan_answers_alike_whatever_the_files_size_and_a_tail_reads_the_views(
    tmp_path: Path, mib: int
) -> None:
    """Views are for tails: a full scan reads lines as written, so its answer never depends
    on the file's size or where a chunk ends; `--last-n-lines` reads the coloured line."""
    coloured = (_ipython("ModuleNotFoundError", "No module named 'x'", "") + "\n").encode()
    small, log = tmp_path / "small.log", tmp_path / "train.log"
    small.write_bytes(coloured)
    log.write_bytes(b"step 1 loss 1.0 lr 3e-4\n" * (mib * 2**20 // 24) + coloured)
    assert _category(log) == _category(small)
    assert _category(log, last_n_lines=50) == "import_error"
