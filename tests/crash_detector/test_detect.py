"""Reading files: the answer must not depend on where a chunk or a tail happens to begin."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from crash_detector.classify import BLOCK_GAP, classify_text
from crash_detector.detect import Detection, InputError, detect, log_files
from crash_detector.rules import load_rules
from crash_detector.scanner import Scanner, hyperscan, re2
from tests.crash_detector.catalogs import SMALL

SCANNER = Scanner(load_rules())
FILLER = "".join(f"data: shard {i} opened\n" for i in range(40))

# The frame quotes a line that names an OOM; the exception that happened is something else.
TRAIN_PY = """\
def step(ok):
    raise ValueError("unrelated") if ok else RuntimeError("CUDA out of memory")


step(True)
"""


def _summary(detection: Detection) -> tuple[object, ...]:
    result = detection.result
    primary = result.primary
    crashes = [(c.cause.category, c.cause.line, c.survived) for c in result.crashes]
    return (primary.category if primary else None, crashes)


def _traceback(tmp_path: Path) -> str:
    script = tmp_path / "train.py"
    script.write_text(TRAIN_PY)
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True)
    assert 'raise ValueError("unrelated") if ok else' in run.stderr, run.stderr
    return run.stderr


def _quoted_oom_log(tmp_path: Path) -> tuple[Path, int]:
    """A log with a real traceback; returns it and the size of the chunk that ends right
    after the frame line, so the quoted source line opens the next chunk."""
    text = FILLER + _traceback(tmp_path)
    frame_end = text.index('raise ValueError("unrelated") if ok')
    frame_end = text.rindex("\n", 0, frame_end) + 1
    log = tmp_path / "daemon.log"
    log.write_text(text)
    return log, frame_end


def test_a_quoted_source_line_opening_a_chunk_is_still_quoted_source(tmp_path: Path) -> None:
    log, boundary = _quoted_oom_log(tmp_path)
    whole = detect([log], SCANNER)
    assert _summary(whole)[0] == "unknown"  # ValueError: unrelated
    for chunk_size in [boundary, *range(16, 2 * boundary, 37)]:
        assert _summary(detect([log], SCANNER, chunk_size=chunk_size)) == _summary(whole)


def test_a_tail_that_starts_at_a_quoted_source_line_knows_the_frame_above(
    tmp_path: Path,
) -> None:
    log, boundary = _quoted_oom_log(tmp_path)
    text = log.read_text()
    after = text[boundary:].count("\n")  # the quoted line and the lines after it
    tail = detect([log], SCANNER, last_n_lines=after)
    assert tail.files[0].lines_read == after
    assert tail.result.primary is not None and tail.result.primary.category == "unknown"


def test_a_state_cleared_in_a_later_chunk_is_not_a_crash(tmp_path: Path) -> None:
    log = tmp_path / "daemon.log"
    log.write_text("step 1 loss: nan\n" + FILLER * 3 + "step 2 loss: 1.23\n")
    whole = detect([log], SCANNER)
    assert whole.result.crashes == ()
    for chunk_size in range(16, 600, 29):
        assert detect([log], SCANNER, chunk_size=chunk_size).result.crashes == ()
    assert detect([log], SCANNER, last_n_lines=50).result.crashes == ()


def test_a_state_that_stays_is_a_crash_whatever_the_chunks(tmp_path: Path) -> None:
    log = tmp_path / "daemon.log"
    log.write_text("step 1 loss: 1.23\n" + FILLER + "step 2 loss: nan\n" + "step 3 loss: nan\n")
    whole = detect([log], SCANNER)
    assert _summary(whole)[0] == "nan_loss"
    for chunk_size in range(16, 600, 29):
        assert _summary(detect([log], SCANNER, chunk_size=chunk_size)) == _summary(whole)


def test_full_scans_in_any_chunks_agree_with_one_read_of_the_whole_log(tmp_path: Path) -> None:
    text = (
        "step 1 loss: nan\n"
        + FILLER
        + _traceback(tmp_path)
        + "".join(f"step {i} loss: 0.{i}\n" for i in range(2, 40))
        + "Killed\n"
    )
    log = tmp_path / "daemon.log"
    log.write_text(text)
    expected = classify_text(text, scanner=SCANNER)
    expected_summary = (
        expected.primary.category if expected.primary else None,
        [(c.cause.category, c.cause.line, c.survived) for c in expected.crashes],
    )
    for chunk_size in range(16, len(text) + 16, 53):
        assert _summary(detect([log], SCANNER, chunk_size=chunk_size)) == expected_summary


ENGINES = ["re", *(["re2"] if re2 else []), *(["hyperscan"] if hyperscan else [])]


@pytest.mark.parametrize("engine", ENGINES)
def test_line_numbers_of_matches_are_exact_in_any_chunks(tmp_path: Path, engine: str) -> None:
    """Only matched lines get a number: it must still be the count of b"\\n" before them."""
    crashes = ["Killed", "x CUDA error: y\r", "CUDA out of memory", "ValueError: z"]
    lines: list[str] = []
    crash_lines: list[int] = []
    for i in range(120):
        if i % 17 in (0, 5) or i == 119:  # the first line, the last (unterminated), and more
            lines.append(crashes[i % len(crashes)])
            crash_lines.append(i + 1)
        else:
            lines.append("" if i % 7 == 3 else f"step {i} loss 0.{i}\r")
    text = "\n".join(lines)  # no b"\\n" after the last line
    log = tmp_path / "daemon.log"
    log.write_bytes(text.encode())
    scanner = Scanner(SMALL, engine=engine)
    for chunk_size in [1, 2, 7, *range(16, len(text) + 16, 41)]:
        scan = detect([log], scanner, chunk_size=chunk_size).files[0]
        assert scan.lines_read == len(lines)
        assert [f.line for f in scan.findings] == crash_lines
        for finding in scan.findings:
            assert finding.offset is not None and finding.line is not None
            assert text.count("\n", 0, finding.offset) == finding.line - 1
            assert text[finding.offset :].startswith(lines[finding.line - 1])


def test_the_exit_status_is_placed_after_every_file_read(tmp_path: Path) -> None:
    old = tmp_path / "a.log"
    old.write_text(FILLER + "torch.OutOfMemoryError: CUDA out of memory.\n")
    new = tmp_path / "b.log"
    new.write_text(FILLER * 10)
    os.utime(old, (1_000, 1_000))
    detection = detect([old, new], SCANNER, exit_code=-9)
    assert [c.cause.category for c in detection.result.crashes] == ["cuda_oom", "unknown"]
    assert detection.result.primary is not None
    assert detection.result.primary.rule == "exit_status.sigkill"
    assert detect([old], SCANNER, exit_code=-9).result.primary.category == "cuda_oom"  # type: ignore[union-attr]


def test_progress_in_another_file_does_not_make_a_crash_survived(tmp_path: Path) -> None:
    crashed = tmp_path / "a.log"
    crashed.write_text(FILLER + "Segmentation fault (core dumped)\n")
    other = tmp_path / "b.log"
    other.write_text("".join(f"step {i}\n" for i in range(BLOCK_GAP)))
    os.utime(crashed, (1_000, 1_000))
    result = detect([crashed, other], SCANNER).result
    assert result.primary is not None and result.primary.category == "segfault"


def test_a_folder_skips_entries_that_are_not_files(tmp_path: Path) -> None:
    (tmp_path / "sub.log").mkdir()
    os.mkfifo(tmp_path / "pipe.log")
    (tmp_path / "daemon.log").write_text("Killed\n")
    found = log_files([str(tmp_path)], base_dir=tmp_path, default_globs=[])
    assert found == [tmp_path / "daemon.log"]


def test_a_folder_without_logs_is_an_input_error(tmp_path: Path) -> None:
    (tmp_path / "sub.log").mkdir()
    (tmp_path / "notes.txt").write_text("Killed\n")
    with pytest.raises(InputError, match=r"no \*\.log files in"):
        log_files([str(tmp_path)], base_dir=tmp_path, default_globs=[])


def test_a_workspace_path_with_glob_characters_is_a_path(tmp_path: Path) -> None:
    base = tmp_path / "run[1]"
    (base / "logs").mkdir(parents=True)
    (base / "logs" / "daemon.log").write_text("Killed\n")
    found = log_files([], base_dir=base, default_globs=["logs/*.log"])
    assert found == [base / "logs" / "daemon.log"]
