"""The kernel log read for the OOM killer's word on one pid: real line formats, real /dev/kmsg."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest

from crash_detector.kernel_log import (
    KernelLine,
    oom_kill_line,
    oom_victim,
    parse_kmsg_record,
    read_journal,
    read_kmsg,
)

# As a 6.x kernel writes them to /dev/kmsg for a cgroup OOM kill (pid 30639 killed).
KMSG_OOM = [
    b"4,343,9165315004,-;python3 invoked oom-killer: gfp_mask=0xcc0(GFP_KERNEL), order=0, "
    b"oom_score_adj=0\n",
    b"4,344,9165315010,-;CPU: 1 PID: 30639 Comm: python3 Not tainted 6.18.44 #1\n",
    b"6,418,9165318147,-;[  pid  ]   uid  tgid total_vm      rss rss_anon rss_file rss_shmem "
    b"pgtables_bytes swapents oom_score_adj name\n",
    b"6,419,9165318150,-;[  30639]     0 30639   132142    19707    18048     1659         0   "
    b"208896        0             0 python3\n",
    b"6,420,9165318152,-;oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,"
    b"mems_allowed=0,oom_memcg=/process_api/tgtest,task_memcg=/process_api/tgtest,task=python3,"
    b"pid=30639,uid=0\n",
    b"3,421,9165318175,-;Memory cgroup out of memory: Killed process 30639 (python3) "
    b"total-vm:528568kB, anon-rss:72192kB, file-rss:6636kB, shmem-rss:0kB, UID:0 pgtables:204kB "
    b"oom_score_adj:0\n",
]
# `journalctl -k -o short` of a global OOM kill on a 5.15 kernel (pid 48213 killed).
JOURNAL_OOM = [
    "Mar 02 03:14:07 gpu-node-7 kernel: python invoked oom-killer: gfp_mask=0x140dca, order=0",
    "Mar 02 03:14:07 gpu-node-7 kernel: oom-kill:constraint=CONSTRAINT_NONE,nodemask=(null),"
    "cpuset=/,mems_allowed=0-1,global_oom,task_memcg=/system.slice/trainguard-watchdog.service,"
    "task=python,pid=48213,uid=1001",
    "Mar 02 03:14:07 gpu-node-7 kernel: Out of memory: Killed process 48213 (python) "
    "total-vm:98213412kB, anon-rss:61524380kB, file-rss:0kB, shmem-rss:0kB, UID:1001 "
    "pgtables:121432kB oom_score_adj:0",
    "Mar 02 03:14:08 gpu-node-7 kernel: oom_reaper: reaped process 48213 (python), now "
    "anon-rss:0kB, file-rss:0kB, shmem-rss:0kB",
]


def _lines(records: list[bytes]) -> list[KernelLine]:
    parsed = [parse_kmsg_record(r) for r in records]
    return [line for line in parsed if line is not None]


@pytest.mark.parametrize(
    ("text", "pid"),
    [
        (JOURNAL_OOM[1], 48213),
        (JOURNAL_OOM[2], 48213),
        (JOURNAL_OOM[3], 48213),
        ("Killed process 7001 (python3) total-vm:1000kB, anon-rss:900kB, file-rss:0kB", 7001),
        ("Out of memory: Kill process 7001 (python3) score 901 or sacrifice child", None),
        (JOURNAL_OOM[0], None),  # the process that asked for memory, not the one killed
        ("CPU: 1 PID: 30639 Comm: python3 Not tainted 6.18.44 #1", None),
        ("[  30639]     0 30639   132142    19707 python3", None),  # a candidate, not a victim
        ("step 12 pid=30639 loss 0.5", None),
    ],
)
def test_only_the_oom_killers_lines_name_a_victim(text: str, pid: int | None) -> None:
    assert oom_victim(text) == pid


def test_a_kmsg_record_gives_its_message_and_time_since_boot() -> None:
    line = parse_kmsg_record(KMSG_OOM[-1] + b" SUBSYSTEM=memory\n DEVICE=+memory:x\n")
    assert line is not None and line.at == pytest.approx(9165.318175)
    assert line.text.startswith("Memory cgroup out of memory: Killed process 30639 (python3)")
    assert "SUBSYSTEM" not in line.text


def test_a_line_written_to_kmsg_by_a_process_is_not_the_kernels() -> None:
    forged = b"12,422,9171781722,-;Out of memory: Killed process 4242 (python3) total-vm:1kB\n"
    assert parse_kmsg_record(forged) is None
    assert parse_kmsg_record(b"no header here\n") is None
    assert parse_kmsg_record(b"x,1,2,-;text\n") is None


def test_the_kill_of_our_pid_is_found_and_that_of_another_pid_is_not() -> None:
    lines = _lines(KMSG_OOM)
    found = oom_kill_line(lines, {30639}, since_boot=9000.0)
    assert found is not None and found.startswith(
        "Memory cgroup out of memory: Killed process 30639"
    )
    assert oom_kill_line(lines, {30640}, since_boot=9000.0) is None
    assert oom_kill_line(lines, {3063}, since_boot=9000.0) is None


def test_a_kill_from_before_the_process_started_is_a_reused_pid_not_ours() -> None:
    assert oom_kill_line(_lines(KMSG_OOM), {30639}, since_boot=9200.0) is None


def test_the_summary_line_counts_when_the_killed_process_line_is_missing() -> None:
    lines = [KernelLine(JOURNAL_OOM[1], None)]
    assert oom_kill_line(lines, {48213}, since_boot=None) == JOURNAL_OOM[1]


def test_dev_kmsg_is_read_to_its_end_without_blocking() -> None:
    if not os.access("/dev/kmsg", os.R_OK) or read_kmsg() is None:
        pytest.skip("/dev/kmsg is not readable here (dmesg_restrict, no CAP_SYSLOG)")
    records = read_kmsg()  # returning at all proves it did not wait for the next record
    assert records is not None and records
    assert all(r.at is not None and r.text for r in records)


def test_a_kernel_log_that_is_not_there_is_none_not_an_error(tmp_path: Path) -> None:
    assert read_kmsg(tmp_path / "no-such-kmsg") is None


def _fake_journalctl(bin_dir: Path, lines: list[str]) -> Path:
    """A journalctl that prints `lines` and records its argv: no journald runs here."""
    argv_log = bin_dir / "argv.json"
    script = bin_dir / "journalctl"
    script.write_text(
        f"#!{sys.executable}\n"
        "import json, sys\n"
        f"json.dump(sys.argv[1:], open({str(argv_log)!r}, 'w'))\n"
        f"print({chr(10).join(lines)!r})\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return argv_log


def test_the_journal_is_read_since_the_start_as_an_argv_never_a_shell(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    argv_log = _fake_journalctl(bin_dir, [line.split("kernel: ", 1)[1] for line in JOURNAL_OOM])
    monkeypatch.setenv("PATH", str(bin_dir))
    lines = read_journal(1_700_000_000.7)
    assert lines is not None
    assert oom_kill_line(lines, {48213}, since_boot=None) == JOURNAL_OOM[2].split("kernel: ")[1]
    argv = json.loads(argv_log.read_text())
    assert argv[:2] == ["-k", "-q"] and argv[argv.index("--since") + 1] == "@1700000000"


def test_without_journalctl_the_journal_is_not_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert read_journal(0.0) is None
