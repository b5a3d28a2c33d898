"""LogLiveness on real files: new output, complete lines only, rotation, the step regex."""

from __future__ import annotations

import os
from pathlib import Path

from daemon_watchdog.log_liveness import LogLiveness, compile_step_regex


def test_new_output_is_seen_once_and_old_output_never(tmp_path: Path) -> None:
    log = tmp_path / "daemon.log"
    log.write_bytes(b"an earlier run's output\n")
    watch = LogLiveness(log, log.stat().st_size, None)
    assert not watch.look().grew
    with open(log, "ab") as fh:
        fh.write(b"starting\n")
    seen = watch.look()
    assert seen.grew and seen.written_at == os.stat(log).st_mtime and seen.step is None
    assert not watch.look().grew


def test_the_step_comes_from_the_last_complete_matching_line(tmp_path: Path) -> None:
    log = tmp_path / "daemon.log"
    log.write_bytes(b"")
    watch = LogLiveness(log, 0, compile_step_regex(r"step (\d+)"))
    with open(log, "ab") as fh:
        fh.write(b"step 7 loss 1.0\nstep 8 loss 0.9\nstep 12")  # the last line is half written
    assert watch.look().step == 8
    with open(log, "ab") as fh:
        fh.write(b"3 loss 0.5\n")
    seen = watch.look()
    assert seen.grew and seen.step == 123  # the half line, read whole once complete


def test_a_named_group_is_the_step(tmp_path: Path) -> None:
    log = tmp_path / "daemon.log"
    log.write_bytes(b"epoch 3 it 40\n")
    watch = LogLiveness(log, 0, compile_step_regex(r"epoch (\d+) it (?P<step>\d+)"))
    assert watch.look().step == 40


def test_a_rotated_or_truncated_log_is_read_from_its_start(tmp_path: Path) -> None:
    log = tmp_path / "daemon.log"
    log.write_bytes(b"step 1\nstep 2\nstep 3\n")
    watch = LogLiveness(log, 0, compile_step_regex(r"step (\d+)"))
    assert watch.look().step == 3
    log.rename(tmp_path / "daemon.log.1")
    log.write_bytes(b"step 4\n")  # shorter than before: logrotate's create
    assert watch.look().step == 4


def test_a_missing_log_or_a_folder_is_no_output(tmp_path: Path) -> None:
    assert not LogLiveness(tmp_path / "none.log", 0, None).look().grew
    assert not LogLiveness(tmp_path, 0, None).look().grew
