"""Exceptions Python printed under "Exception ignored in" and went on from are no crash."""

from __future__ import annotations

import pytest

from crash_detector import unraisable
from crash_detector.classify import classify_text
from crash_detector.rules import load_rules
from crash_detector.scanner import Scanner, hyperscan, re2

ENGINES = ["re", *(["re2"] if re2 else []), *(["hyperscan"] if hyperscan else [])]
CATALOG = load_rules()

IGNORED = """\
Exception ignored in: <function _MultiProcessingDataLoaderIter.__del__ at 0x7f3c2a1b>
Traceback (most recent call last):
  File "/opt/venv/lib/python3.10/site-packages/torch/utils/data/dataloader.py", line 1479
    self._shutdown_workers()
  File "/opt/venv/lib/python3.10/site-packages/torch/utils/data/dataloader.py", line 1443
    if w.is_alive():
RuntimeError: DataLoader worker (pid 4411) is killed by signal: Killed."""


def _primary(log: str, engine: str = "hyperscan" if hyperscan else "re") -> str:
    primary = classify_text(log, scanner=Scanner(CATALOG, engine=engine)).primary
    return primary.category if primary else "none"


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("prefix", ["", "[rank1]: "])
def test_an_ignored_exception_is_no_crash(engine: str, prefix: str) -> None:
    log = "\n".join(prefix + line for line in f"step 1 loss 2.0\n{IGNORED}".split("\n"))
    assert _primary(log, engine) == "none"


@pytest.mark.parametrize("engine", ENGINES)
def test_the_crash_after_an_ignored_exception_is_still_seen(engine: str) -> None:
    log = f"{IGNORED}\nstep 2 loss 1.9\ntorch.OutOfMemoryError: CUDA out of memory."
    assert _primary(log, engine) == "cuda_oom"


def test_the_span_ends_at_the_exception_line_and_takes_a_chain_with_it() -> None:
    log = (
        "Exception ignored in: <generator object stream at 0x7f>\n"
        "Traceback (most recent call last):\n"
        '  File "a.py", line 3, in stream\n'
        "OSError: [Errno 5] Input/output error\n"
        "\n"
        "During handling of the above exception, another exception occurred:\n"
        "\n"
        "Traceback (most recent call last):\n"
        '  File "a.py", line 9, in stream\n'
        "KeyError: 'x'\n"
        "FileNotFoundError: [Errno 2] No such file or directory: 'data/x'\n"
    )
    assert unraisable.spans(log.encode()) == [(0, 9)]
    assert _primary(log) == "file_not_found"  # the line after the span is a crash of its own


def test_two_ignored_exceptions_and_one_without_a_traceback() -> None:
    log = f"{IGNORED}\nstep 2\nException ignored in: <function f>\nValueError: x\nstep 3"
    assert unraisable.spans(log.encode()) == [(0, 6), (8, 9)]


def test_an_ignored_exception_whose_header_a_terminal_wrapped_is_still_ignored() -> None:
    header = (
        "Exception ignored in: <bound method BaseSession.__del__ of <tensorflow.python.client."
        "session.Session object at 0x7f2b1c3d4e50>>"
    )
    lines = [header[i : i + 80] for i in range(0, len(header), 80)]
    log = "\n".join(
        ["step 9 loss 0.2", *lines, "Traceback (most recent call last):",
         '  File "session.py", line 738, in __del__',
         "TypeError: 'NoneType' object is not callable"]
    )  # fmt: skip
    assert len(lines) == 2 and len(lines[0]) == 80
    assert _primary(log) == "none"
