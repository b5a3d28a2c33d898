"""OOM-kill counters read at a process's start and compared at its end, on files laid out as
/proc and /sys/fs/cgroup lay them out (cgroup v2, v1, hybrid), and on this machine's own."""

from __future__ import annotations

import os
from pathlib import Path

from crash_detector.oom_counters import OomSnapshot, cgroup_counter_file, parse_oom_kill
from crash_detector.oom_evidence import look_for_oom_kill

PID = 4242
V2_EVENTS = "low 0\nhigh 0\nmax 17\noom 2\noom_kill {n}\noom_group_kill 0\n"
V1_OOM_CONTROL = "oom_kill_disable 0\nunder_oom 0\noom_kill {n}\n"
VMSTAT = "nr_free_pages 123\npgfault 99\noom_kill {n}\nnr_unstable 0\n"


def _machine(tmp_path: Path, cgroup_lines: str, *, system: int = 0) -> tuple[Path, Path]:
    proc, root = tmp_path / "proc", tmp_path / "cgroup"
    (proc / str(PID)).mkdir(parents=True)
    (proc / str(PID) / "cgroup").write_text(cgroup_lines)
    (proc / "vmstat").write_text(VMSTAT.format(n=system))
    return proc, root


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_memory_events_and_vmstat_give_their_oom_kill_counter() -> None:
    assert parse_oom_kill(V2_EVENTS.format(n=3)) == 3
    assert parse_oom_kill(V1_OOM_CONTROL.format(n=0)) == 0
    assert parse_oom_kill(VMSTAT.format(n=12)) == 12
    assert parse_oom_kill("oom 5\noom_group_kill 1\n") is None  # oom is not oom_kill
    assert parse_oom_kill("oom_kill many\n") is None


def test_a_cgroup_v2_counter_that_grew_is_evidence(tmp_path: Path) -> None:
    proc, root = _machine(tmp_path, "0::/system.slice/trainguard-watchdog.service\n")
    events = _write(
        root / "system.slice/trainguard-watchdog.service/memory.events", V2_EVENTS.format(n=1)
    )
    before = OomSnapshot.read_for(PID, proc=proc, cgroup_root=root)
    assert (before.cgroup_file, before.cgroup_kills, before.system_kills) == (events, 1, 0)
    assert before.cgroup_growth() is None
    events.write_text(V2_EVENTS.format(n=2))
    assert before.cgroup_growth() == f"oom_kill 1 -> 2 in {events}"


def test_a_cgroup_v1_memory_controller_is_found_among_the_others(tmp_path: Path) -> None:
    lines = "9:name=systemd:/\n4:memory:/slurm/uid_1001/job_77\n1:cpu,cpuacct:/\n0::/\n"
    proc, root = _machine(tmp_path, lines)
    control = _write(
        root / "memory/slurm/uid_1001/job_77/memory.oom_control", V1_OOM_CONTROL.format(n=0)
    )
    assert cgroup_counter_file(PID, proc=proc, cgroup_root=root) == control


def test_a_hybrid_hierarchy_finds_the_unified_memory_events(tmp_path: Path) -> None:
    proc, root = _machine(tmp_path, "1:name=systemd:/user.slice\n0::/user.slice/run-1.scope\n")
    events = _write(root / "unified/user.slice/run-1.scope/memory.events", V2_EVENTS.format(n=0))
    assert cgroup_counter_file(PID, proc=proc, cgroup_root=root) == events


def test_no_memory_controller_means_no_counter_not_an_error(tmp_path: Path) -> None:
    proc, root = _machine(tmp_path, "0::/user.slice\n")
    (root / "user.slice").mkdir(parents=True)  # a cgroup without memory.events
    snapshot = OomSnapshot.read_for(PID, proc=proc, cgroup_root=root)
    assert snapshot.cgroup_file is None and snapshot.cgroup_growth() is None
    assert OomSnapshot.read_for(PID + 1, proc=proc, cgroup_root=root).cgroup_file is None


def test_a_cgroup_path_never_leads_out_of_the_cgroup_root(tmp_path: Path) -> None:
    proc, root = _machine(tmp_path, "0::/../../outside\n")
    _write(tmp_path / "outside/memory.events", V2_EVENTS.format(n=0))
    assert cgroup_counter_file(PID, proc=proc, cgroup_root=root) is None


def test_the_system_counter_says_whether_any_oom_kill_happened_since(tmp_path: Path) -> None:
    proc, root = _machine(tmp_path, "0::/\n", system=7)
    before = OomSnapshot.read_for(PID, proc=proc, cgroup_root=root)
    assert before.system_grew() is False
    (proc / "vmstat").write_text(VMSTAT.format(n=8))
    assert before.system_grew() is True
    (proc / "vmstat").unlink()
    assert before.system_grew() is None


def test_this_machines_counters_are_read_for_a_live_process() -> None:
    snapshot = OomSnapshot.read_for(os.getpid())
    assert snapshot.pid == os.getpid()
    assert snapshot.system_kills is not None  # /proc/vmstat has oom_kill since Linux 4.13
    assert snapshot.system_grew() is not None
    if snapshot.cgroup_file is not None:  # this machine's cgroup has a memory controller
        assert snapshot.cgroup_kills == parse_oom_kill(snapshot.cgroup_file.read_text())


def test_with_no_oom_kill_anywhere_the_kernel_log_is_not_read_and_nothing_is_found() -> None:
    evidence = look_for_oom_kill(OomSnapshot.read_for(os.getpid()))
    assert evidence.found is None
    assert "no OOM kill on this machine since it started" in evidence.checked


def test_a_grown_cgroup_counter_is_the_evidence_when_the_kernel_log_names_no_pid(
    tmp_path: Path,
) -> None:
    proc, root = _machine(tmp_path, "0::/job\n")
    events = _write(root / "job/memory.events", V2_EVENTS.format(n=1))
    before = OomSnapshot.read_for(PID, proc=proc, cgroup_root=root)
    events.write_text(V2_EVENTS.format(n=2))
    evidence = look_for_oom_kill(before)
    assert evidence.found == f"its memory cgroup counts an OOM kill: oom_kill 1 -> 2 in {events}"
