"""The whole edge-case suite, for real; and proof that its scenarios can fail."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from edge_cases.runner import run_scenarios, select
from edge_cases.scenario import Result, ScenarioSkipped
from edge_cases.scenarios import ALL
from edge_cases.tmpfs import mount_tmpfs, unmount
from tests.polling import wait_until

pytestmark = [pytest.mark.edge_cases, pytest.mark.e2e]

SABOTAGED = (
    "trainer_that_only_prints",
    "crash_loop_goes_fatal",
    "low_disk_threshold",
    "daemon_hang_no_progress",
    "partial_inplace_checkpoint_skipped",
    "nan_rewinds_past_newest_checkpoint",
    "planned_stop_loses_nothing",
    "gpu_failure_left_out",
)
# task-queue has no config key that switches off what these guard: a sitecustomize on
# PYTHONPATH does it in `python -m task_queue` (see sabotage/sitecustomize.py).
SABOTAGED_QUEUE = {
    "task_worker_death": "orphan_sweep",
    "task_runner_death": "dead_runner_kill",
}
SABOTAGE_PATH = Path(__file__).resolve().parent / "sabotage"


def _leftovers(scratch: Path) -> list[str]:
    """Processes and folders of the suite (its workspaces are under `scratch`) still around."""
    found = [str(p) for p in scratch.glob("trainguard-edge-*")]
    for proc in psutil.process_iter(["cmdline"]):
        if any(f"{scratch}/trainguard-edge-" in arg for arg in proc.info["cmdline"] or []):
            try:
                if proc.status() != psutil.STATUS_ZOMBIE:
                    found.append(f"pid {proc.pid}: {' '.join(proc.info['cmdline'])[:100]}")
            except psutil.Error:
                continue
    return found


def _skips_expected_here(scratch: Path) -> set[str]:
    """The scenarios that must skip on this machine, probed with the same means they use: any
    other skip is a failure to run, not a pass."""
    expected = set()
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            if pynvml.nvmlDeviceGetCount() == 0:
                expected.add("gpu_availability")
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no library, no driver, no device: NVML cannot answer
        expected.add("gpu_availability")
    if importlib.util.find_spec("distributed") is None:
        expected.add("dask_worker_death")
    probe = scratch / "tmpfs-probe"
    probe.mkdir()
    try:
        mount_tmpfs(probe, "64k")
    except ScenarioSkipped:
        expected.update(("disk_full", "disk_full_prunes"))
    else:
        unmount(probe)
    finally:
        probe.rmdir()
    return expected


@pytest.mark.timeout(300)
def test_whole_suite_passes_and_reports_json() -> None:
    scratch = Path(os.environ["TMPDIR"])
    must_skip = _skips_expected_here(scratch)
    result = subprocess.run(
        [sys.executable, "-m", "edge_cases", "--json"],
        capture_output=True,
        text=True,
        timeout=280,
    )
    report = json.loads(result.stdout)
    assert set(report) == {"results", "passed", "failed", "skipped"}
    failed = [r for r in report["results"] if r["status"] == "fail"]
    assert not failed, json.dumps(failed, indent=2)
    assert result.returncode == 0, result.stderr[-2000:]
    assert [r["name"] for r in report["results"]] == [s.name for s in ALL]
    for entry in report["results"]:
        assert set(entry) == {"name", "status", "duration_s", "detail"}
        assert entry["status"] in ("pass", "skip") and entry["detail"]
        assert isinstance(entry["duration_s"], float)
    skipped = {r["name"] for r in report["results"] if r["status"] == "skip"}
    assert skipped == must_skip, json.dumps(report["results"], indent=2)
    assert report["skipped"] == len(must_skip) and report["failed"] == 0
    assert report["passed"] == len(ALL) - len(must_skip)
    assert not _leftovers(scratch)


@pytest.fixture(scope="module")
def sabotaged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Result]]:
    """The SABOTAGED scenarios run once, each with the mechanism it guards switched off."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tempfile, "tempdir", str(tmp_path_factory.mktemp("sabotaged")))
        results = run_scenarios(select(SABOTAGED), sabotage=set(SABOTAGED))
    yield {r.name: r for r in results}


def test_crash_loop_scenario_fails_when_max_restarts_is_lifted(
    sabotaged: dict[str, Result],
) -> None:
    result = sabotaged["crash_loop_goes_fatal"]
    assert result.status == "fail", result
    assert "state FATAL: not seen" in result.detail


def test_partial_checkpoint_scenario_fails_when_no_file_marks_a_complete_save(
    sabotaged: dict[str, Result],
) -> None:
    result = sabotaged["partial_inplace_checkpoint_skipped"]
    assert result.status == "fail"
    assert result.status == "fail" and ", not checkpoint-" in result.detail, result


def test_low_disk_scenario_fails_when_the_threshold_is_zero(sabotaged: dict[str, Result]) -> None:
    result = sabotaged["low_disk_threshold"]
    assert result.status == "fail", result
    assert "health-check disk_space exit 0" in result.detail


def test_hang_scenario_fails_when_progress_timeout_is_an_hour(
    sabotaged: dict[str, Result],
) -> None:
    result = sabotaged["daemon_hang_no_progress"]
    assert result.status == "fail", result
    assert "not seen" in result.detail and result.duration_s < 20


def test_printing_trainer_scenario_fails_when_only_a_progress_file_shows_life(
    sabotaged: dict[str, Result],
) -> None:
    result = sabotaged["trainer_that_only_prints"]
    assert result.status == "fail", result
    assert result.detail == "liveness 'progress file'", result


def test_nan_scenario_fails_when_the_recovery_rewinds_nothing(sabotaged: dict[str, Result]) -> None:
    result = sabotaged["nan_rewinds_past_newest_checkpoint"]
    assert result.status == "fail", result
    assert result.detail == "resumed from checkpoint-30, not checkpoint-20", result


def test_planned_stop_scenario_fails_when_a_stop_asks_for_no_checkpoint(
    sabotaged: dict[str, Result],
) -> None:
    result = sabotaged["planned_stop_loses_nothing"]
    assert result.status == "fail", result
    assert result.detail.startswith("no checkpoint after the stop: steps 1.."), result


def test_gpu_scenario_fails_when_no_gpu_may_be_left_out(sabotaged: dict[str, Result]) -> None:
    result = sabotaged["gpu_failure_left_out"]
    assert result.status == "fail", result
    assert result.detail == "the restart's recovery: []", result


@pytest.fixture(scope="module")
def sabotaged_queue(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Result]]:
    """The task-queue scenarios run once, each with the mechanism it guards switched off."""
    chosen = [
        dataclasses.replace(
            scenario,
            sabotage={
                "PYTHONPATH": str(SABOTAGE_PATH),
                "EDGE_CASES_SABOTAGE": SABOTAGED_QUEUE[scenario.name],
            },
        )
        for scenario in select(list(SABOTAGED_QUEUE))
    ]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tempfile, "tempdir", str(tmp_path_factory.mktemp("sabotaged-queue")))
        results = run_scenarios(chosen, sabotage=set(SABOTAGED_QUEUE))
    yield {r.name: r for r in results}


def test_task_worker_death_scenario_fails_when_a_killed_attempts_leftovers_live_on(
    sabotaged_queue: dict[str, Result],
) -> None:
    result = sabotaged_queue["task_worker_death"]
    assert result.status == "fail", result
    assert "the killed attempt's processes still run beside its retry" in result.detail, result
    assert "task.py helper" in result.detail


def test_task_runner_death_scenario_fails_when_a_dead_runners_processes_are_not_killed(
    sabotaged_queue: dict[str, Result],
) -> None:
    result = sabotaged_queue["task_runner_death"]
    assert result.status == "fail", result
    assert "processes of the dead runner's attempts still run beside" in result.detail, result


def test_interrupted_run_stops_every_process_and_removes_its_workspaces() -> None:
    scratch = Path(os.environ["TMPDIR"])
    run = subprocess.Popen(
        [sys.executable, "-m", "edge_cases", "--test", "daemon_sigkill", "--test", "daemon_hang_*"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:

        def daemons_up() -> bool:
            count = 0
            for proc in psutil.Process(run.pid).children(recursive=True):
                try:
                    count += "daemon_watchdog.example.daemon" in " ".join(proc.cmdline())
                except psutil.Error:
                    continue
            return count >= 2

        wait_until(daemons_up, timeout=30, message="two example daemons running")
        run.send_signal(signal.SIGINT)  # what Ctrl+C sends
        out, _ = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert run.returncode == 130, out.decode()[-2000:]
    assert b"interrupted" in out
    assert not _leftovers(scratch)
