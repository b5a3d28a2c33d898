"""edge-cases' listing, plan and selection: instant, and they touch nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from edge_cases.cli import main
from edge_cases.scenarios import ALL

REQUIRED = {
    "config_corruption",
    "missing_base_model",
    "disk_full",
    "low_disk_threshold",
    "checkpoint_corrupt_resume_previous",
    "staged_checkpoint_ignored",
    "orphan_worker_cleanup",
    "unrelated_process_untouched",
    "gpu_availability",
    "status_file_updates",
    "daemon_sigkill",
    "daemon_segfault",
    "daemon_hang_sigstop",
    "daemon_hang_no_progress",
    "trainer_that_only_prints",
    "sigterm_ignored_escalates_to_sigkill",
    "crash_loop_goes_fatal",
    "non_retryable_goes_fatal",
    "watchdog_killed_then_adopts",
    "second_watchdog_refused",
    "watchdog_killed_between_spawn_and_record",
    "stale_pid_reuse",
    "progress_file_garbage",
    "log_with_binary_and_huge_lines",
    "queue_system",
    "task_worker_death",
    "task_runner_death",
    "dask_worker_death",
    "study_survives_failures",
    "executor_cuda_error_at_item_64",
    "pipeline_runner_killed",
    "pipeline_phase_without_outputs",
    "preflight_unreachable_node",
    "preflight_study_missing_input",
    "oom_halves_batch_size",
    "oom_at_floor_goes_fatal",
    "nan_rewinds_past_newest_checkpoint",
    "disk_full_prunes",
    "hang_seen_by_learned_rhythm",
    "planned_stop_loses_nothing",
    "gpu_failure_left_out",
}


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_suite_has_every_scenario_the_issue_names_each_with_a_plan() -> None:
    names = [s.name for s in ALL]
    assert len(names) == len(set(names))
    assert set(names) >= REQUIRED
    for scenario in ALL:
        assert scenario.summary and scenario.fault and scenario.expected
        assert 0 < scenario.deadline <= 120


def test_list_names_and_describes_each_scenario(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == [s.name for s in ALL]
    assert all(len(line.split(None, 1)) == 2 for line in lines)


def test_dry_run_prints_every_plan_and_touches_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _tree(tmp_path)
    children_before = {p.pid for p in psutil.Process().children(recursive=True)}
    assert main(["--dry-run", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)["plan"]
    assert [p["name"] for p in plan] == [s.name for s in ALL]
    for step in plan:
        assert step["fault"] and step["expected"] and step["deadline_s"] > 0
    assert _tree(tmp_path) == before, "--dry-run wrote files"
    assert {p.pid for p in psutil.Process().children(recursive=True)} <= children_before


def test_dry_run_command_takes_under_two_seconds_and_leaves_no_trace(tmp_path: Path) -> None:
    scratch = Path(os.environ["TMPDIR"])
    before = _tree(tmp_path)
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "edge_cases", "--dry-run"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    took = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert "daemon_sigkill" in result.stdout and "expected:" in result.stdout
    assert took < 2.0, f"--dry-run took {took:.2f} s"
    assert _tree(tmp_path) == before
    assert not list(scratch.glob("trainguard-edge-*"))


def test_test_flag_selects_by_glob_and_repeats(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--list", "--test", "daemon_hang_*", "--test", "disk_full"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert names == ["disk_full", "daemon_hang_sigstop", "daemon_hang_no_progress"]


def test_unknown_test_name_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--dry-run", "--test", "no_such_scenario"]) == 2
    assert "no scenario matches 'no_such_scenario'" in capsys.readouterr().err


def test_version_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert "edge-cases" in capsys.readouterr().out
