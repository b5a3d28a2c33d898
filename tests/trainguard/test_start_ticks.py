"""Reading a process's start from /proc: ticks since boot, whatever its command name holds."""

from __future__ import annotations

import os
from pathlib import Path

import psutil
import pytest

from tests.trainguard.test_procs import Children, children, start_ready
from trainguard.start_ticks import current_boot_id, parse_start_ticks, read_start_ticks

__all__ = ["children"]  # the fixture, imported for its name

needs_proc = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")

# Fields 3..21 of /proc/PID/stat (state .. itrealvalue), then starttime (22), then the rest.
BEFORE = "S 1 4242 4242 0 -1 4194560 1 0 0 0 5 3 0 0 20 0 1 0"
AFTER = "3133440 390 18446744073709551615 1 1 0 0 0 0 0 0 0 17 1 0 0 0 0 0"


@pytest.mark.parametrize(
    "comm",
    [
        "python3",
        "my trainer",
        ") (",
        "a) (b",
        "x) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 (y",  # longer than comm allows
        "((",
        "",
    ],
)
def test_start_ticks_are_counted_from_the_last_parenthesis(comm: str) -> None:
    line = f"4242 ({comm}) {BEFORE} 901381 {AFTER}\n"
    assert parse_start_ticks(line) == 901381


@pytest.mark.parametrize(
    "line",
    [
        "",
        "4242 python3 S 1",
        f"4242 (python3) {BEFORE}",  # cut short before starttime
        f"4242 (python3) {BEFORE} -5 {AFTER}",
        f"4242 (python3) {BEFORE} 12x {AFTER}",
        f"4242 (python3) {BEFORE} \u0663 {AFTER}",  # a digit, but not an ASCII one
    ],
)
def test_a_stat_line_without_a_tick_count_is_refused(line: str) -> None:
    with pytest.raises(ValueError, match="stat"):
        parse_start_ticks(line)


@needs_proc
@pytest.mark.parametrize("name", ["a) (b c", ") (", "x y) 1 2 (z"])
def test_the_start_of_a_live_process_with_an_odd_name_is_read_right(
    children: Children, name: str
) -> None:
    pid, _ = start_ready(children, "renamed_sleeper.py", "child", args=[name])
    proc = psutil.Process(pid)
    assert proc.name() == name
    ticks = read_start_ticks(pid)
    assert ticks is not None
    # What psutil derives from the same field: boot time + ticks / CLK_TCK.
    derived = psutil.boot_time() + ticks / os.sysconf("SC_CLK_TCK")
    assert abs(derived - proc.create_time()) < 0.005


@pytest.mark.parametrize("pid", [0, -1, 2**31 - 1])
def test_no_start_for_impossible_or_dead_pids(pid: int) -> None:
    assert read_start_ticks(pid) is None


@needs_proc
def test_the_boot_id_is_the_kernels() -> None:
    boot_id = current_boot_id()
    assert boot_id == Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    assert boot_id is not None and len(boot_id) == 36
