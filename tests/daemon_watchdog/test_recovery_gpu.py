"""#20: a GPU that fails is left out of the restarted daemon's CUDA_VISIBLE_DEVICES. A real
supervisor and real daemon processes; the GPUs are a FakeNvml (there is no GPU here) read by
health-check's real survey, with the Xid in a kernel log it is given."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

import psutil
import pytest

from daemon_watchdog.states import State
from daemon_watchdog.supervisor import Supervisor
from health_check.checks.gpu_model import GpuReading
from tests.daemon_watchdog.test_crash_actions import XID_79_ON_GPU1, gpus
from tests.daemon_watchdog.test_supervisor_progress import (
    driven_supervisor,
    handle_until,
    killing_its_daemon,
)
from trainguard.progress import write_progress

CHILD = Path(__file__).resolve().parents[2] / "edge_cases" / "children" / "gpu_falls_off.py"
two_gpus_one_fallen_off = gpus(XID_79_ON_GPU1)


def make_supervisor(tmp_path: Path, min_gpus: int) -> Supervisor:
    command = [sys.executable, str(CHILD), str(tmp_path / "failed-once")]
    table = (
        f"\n[watchdog.recovery]\ngpu_hardware = {{ exclude_gpu = true, min_gpus = {min_gpus} }}\n"
    )
    return driven_supervisor(tmp_path, command, table, gpu_survey=two_gpus_one_fallen_off)


def _restarted(sup: Supervisor) -> int:
    """Drive the loop until the spawned daemon has died and a new one runs; its pid."""
    first = sup.daemon
    assert first is not None
    handle_until(sup, lambda: sup.daemon is not None and sup.daemon.pid != first.pid, "restarted")
    assert sup.daemon is not None
    return sup.daemon.pid


@pytest.fixture
def cuda_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("CUDA_DEVICE_ORDER", raising=False)


@pytest.mark.usefixtures("cuda_env")
def test_an_xid_79_on_gpu_1_restarts_the_daemon_without_gpu_1(tmp_path: Path) -> None:
    with killing_its_daemon(make_supervisor(tmp_path, min_gpus=1)) as sup:
        sup._spawn(None)
        env = psutil.Process(_restarted(sup)).environ()
        assert env.get("CUDA_VISIBLE_DEVICES") == "0"
        assert env.get("CUDA_DEVICE_ORDER") == "PCI_BUS_ID"
        (restart,) = sup.restarts
        assert restart.category == "gpu_hardware"
        assert restart.recovery[0] == (
            "gpu_hardware: GPU1 (Xid 79: GPU has fallen off the bus): "
            "env:CUDA_VISIBLE_DEVICES unset -> 0"
        )
        status = json.loads(sup.ws.state_file.read_text())
        assert status["recovery"]["knobs"]["env:CUDA_VISIBLE_DEVICES"] == {
            "original": None, "value": "0"
        }  # fmt: skip

        # A new watchdog keeps the GPU out until --reset-recovery.
        successor = Supervisor(sup.ws, gpu_survey=two_gpus_one_fallen_off)
        successor._restore(sup.last_status)
        assert successor.recovery.env()["CUDA_VISIBLE_DEVICES"] == "0"
        successor._reset_recovery()
        assert successor.recovery.env() == {}


@pytest.mark.usefixtures("cuda_env")
def test_without_enough_gpus_left_it_is_fatal_naming_the_gpu(tmp_path: Path) -> None:
    with killing_its_daemon(make_supervisor(tmp_path, min_gpus=2)) as sup:
        sup._spawn(None)
        handle_until(sup, lambda: sup.state == State.FATAL, "FATAL")
        assert sup.daemon is None
        assert sup.fatal_reason is not None and sup.fatal_reason.startswith(
            "gpu_hardware: GPU1 (Xid 79: GPU has fallen off the bus) failed; without it 1 GPU(s) "
            "would remain, fewer than min_gpus (2)"
        ), sup.fatal_reason


@pytest.mark.usefixtures("cuda_env")
def test_an_action_that_breaks_is_recorded_and_the_restart_still_happens(tmp_path: Path) -> None:
    def broken_survey() -> Sequence[GpuReading]:
        raise RuntimeError("NVML exploded")

    command = [sys.executable, str(CHILD), str(tmp_path / "failed-once")]
    table = "\n[watchdog.recovery]\ngpu_hardware = { min_gpus = 1 }\n"
    with killing_its_daemon(
        driven_supervisor(tmp_path, command, table, gpu_survey=broken_survey)
    ) as sup:
        sup._spawn(None)
        assert "CUDA_VISIBLE_DEVICES" not in psutil.Process(_restarted(sup)).environ()
        assert sup.restarts[0].recovery == (
            "gpu_hardware: the recovery action failed (RuntimeError: NVML exploded); "
            "restarting unchanged",
        )


@pytest.mark.usefixtures("cuda_env")
def test_the_step_it_died_at_counts_its_last_progress_even_if_its_exit_came_first(
    tmp_path: Path,
) -> None:
    """The progress event and the exit race in the loop's queue: the exit handled first must
    still see the last step the trainer wrote (what recovery and the restart policy judge)."""
    with killing_its_daemon(make_supervisor(tmp_path, min_gpus=1)) as sup:
        sup._spawn(None)
        write_progress(sup.ws.progress_file, 12)  # its event never handled before the exit
        _restarted(sup)
        assert sup.restarts[0].recovery[0].startswith("gpu_hardware after step 12: GPU1 ")
