"""AMD GPUs: a real rocm-smi-like subprocess with real rocm-smi JSON shapes, and FakeAmdsmi."""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from health_check.checks import amd, gpu
from health_check.context import Context
from health_check.result import Status
from tests.fakes import AmdSmiException, AmdSmiLibraryException, FakeAmdGpu, FakeAmdsmi, FakeNvml
from tests.polling import wait_until
from trainguard.config import load_config
from trainguard.workspace import Workspace

FAKE_ROCM_SMI = Path(__file__).resolve().parent.parent / "children" / "fake_rocm_smi.py"
NO_NVIDIA = FakeNvml(errors={"nvmlInit": 12})  # NVML_ERROR_LIBRARY_NOT_FOUND

# `rocm-smi --showtemp --showmeminfo vram --showuse --json` as ROCm 6 prints it for a Radeon
# card (edge, junction and memory sensors) and an Instinct one (junction only; memory N/A).
TWO_CARDS = {
    "card0": {
        "Temperature (Sensor edge) (C)": "46.0",
        "Temperature (Sensor junction) (C)": "52.0",
        "Temperature (Sensor memory) (C)": "58.0",
        "GPU use (%)": "1",
        "VRAM Total Memory (B)": "25753026560",
        "VRAM Total Used Memory (B)": "1258291200",
    },
    "card1": {
        "Temperature (Sensor edge) (C)": "N/A",
        "Temperature (Sensor junction) (C)": "61.0",
        "Temperature (Sensor memory) (C)": "N/A",
        "GPU use (%)": "97",
        "VRAM Total Memory (B)": "206141652992",
        "VRAM Total Used Memory (B)": "193273528320",
    },
    "system": {"Driver version": "6.8.5"},
}


def amd_context(tmp_path: Path, command: list[str], **health: Any) -> Context:
    health["rocm_smi_command"] = command
    lines = ["[health]", *(f"{key} = {json.dumps(value)}" for key, value in health.items())]
    path = tmp_path / "trainguard.toml"
    path.write_text("\n".join(lines) + "\n")
    return Context(Workspace(load_config(path, env={})), nvml=NO_NVIDIA, kernel_log=lambda: "")


def rocm_smi(tmp_path: Path, out: str, err: str = "", code: int = 0) -> list[str]:
    """A rocm-smi command that prints `out` and `err` and exits with `code`."""
    (tmp_path / "out.txt").write_text(out)
    if err:
        (tmp_path / "err.txt").write_text(err)
    return [
        sys.executable,
        str(FAKE_ROCM_SMI),
        "print",
        str(tmp_path / "out.txt"),
        str(tmp_path / "err.txt"),
        str(code),
    ]


def test_rocm_smi_json_is_read_card_by_card(tmp_path: Path) -> None:
    command = rocm_smi(tmp_path, json.dumps(TWO_CARDS, indent=2))
    result = gpu.probe(amd_context(tmp_path, command, gpus_expected=2))
    argv = json.loads((tmp_path / "out.txt.argv").read_text())
    assert argv == ["--showtemp", "--showmeminfo", "vram", "--showuse", "--json"]
    # card1: 94% of its VRAM, below the default 95% limit; its junction sensor stands in.
    assert result.status == Status.OK, result.summary
    assert result.summary == "2 of 2 GPUs healthy: GPU0 46°C 5% mem, GPU1 61°C 94% mem"
    assert result.details[0].startswith("GPU0 amd: OK; 46°C; memory 5% of 24 GiB")


def test_na_and_all_ones_readings_are_na(tmp_path: Path) -> None:
    card = {
        "Temperature (Sensor edge) (C)": "N/A",
        "Temperature (Sensor junction) (C)": "4294967295",
        "VRAM Total Memory (B)": "N/A",
        "VRAM Total Used Memory (B)": 18446744073709551615,
    }
    command = rocm_smi(tmp_path, json.dumps({"card0": card}))
    result = gpu.probe(amd_context(tmp_path, command, gpus_expected=1))
    assert (result.status, result.summary) == (Status.OK, "1 of 1 GPUs healthy: GPU0")
    assert "N/A: temperature, memory" in result.details[0]


def test_warnings_printed_before_the_json_are_skipped(tmp_path: Path) -> None:
    out = (
        "WARNING: AMD GPU device(s) is/are in a low-power state."
        " Check power control/runtime_status\n\n"
    )
    command = rocm_smi(tmp_path, out + json.dumps(TWO_CARDS))
    assert gpu.probe(amd_context(tmp_path, command)).summary.startswith("2 of 2 GPUs healthy")


def test_an_smu_error_makes_that_gpu_critical(tmp_path: Path) -> None:
    err = "ERROR: GPU[1]\t: SMU is not responding (timed out waiting for response)\n"
    command = rocm_smi(tmp_path, json.dumps(TWO_CARDS), err, code=2)
    result = gpu.probe(amd_context(tmp_path, command, gpus_expected=2))
    assert result.status == Status.CRITICAL
    assert result.summary.startswith("only 1 of 2 expected GPUs healthy: GPU1: SMU error: ")


def test_an_smu_error_without_json_is_critical_for_the_check(tmp_path: Path) -> None:
    err = "amdgpu 0000:83:00.0: amdgpu: SMU: I'm not done with your previous command: failed\n"
    result = gpu.probe(amd_context(tmp_path, rocm_smi(tmp_path, "", err, code=1)))
    assert result.status == Status.CRITICAL
    assert result.summary.startswith("SMU error: amdgpu 0000:83:00.0")


def test_a_hung_rocm_smi_is_killed_with_its_children_and_reported_critical(
    tmp_path: Path,
) -> None:
    ready = tmp_path / "hung.pids"
    command = [sys.executable, str(FAKE_ROCM_SMI), "hang", str(ready)]
    ctx = amd_context(tmp_path, command, check_timeout=5)  # rocm-smi gets 40%: 2 s
    started = time.monotonic()
    result = gpu.probe(ctx)
    took = time.monotonic() - started
    assert result.status == Status.CRITICAL
    assert "gave no answer within 2 s and was killed: the SMU is unresponsive" in result.summary
    assert took < 4.5, f"the check took {took:.1f} s"
    pids = [int(pid) for pid in ready.read_text().split()]  # it did start and hang
    wait_until(lambda: not any(alive(pid) for pid in pids), message="both killed")


def alive(pid: int) -> bool:
    # The orphaned child is re-parented to pytest (a subreaper), which reaps it only later.
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.parametrize(
    ("err", "code"),
    [
        ("ERROR:root:Driver not initialized (amdgpu not found in modules)\n", 1),
        ("", 0),
    ],
)
def test_no_amd_driver_is_no_gpu(tmp_path: Path, err: str, code: int) -> None:
    result = gpu.probe(amd_context(tmp_path, rocm_smi(tmp_path, "", err, code)))
    assert (result.status, result.summary) == (Status.OK, "no GPU expected, none found")


def test_a_failing_rocm_smi_is_a_warning(tmp_path: Path) -> None:
    command = rocm_smi(tmp_path, "", "Traceback (most recent call last):\n  boom\n", code=1)
    result = gpu.probe(amd_context(tmp_path, command))
    assert result.status == Status.WARNING
    assert result.summary.startswith("rocm-smi failed: Traceback (most recent call last):")


def test_excluded_amd_gpus_never_fail(tmp_path: Path) -> None:
    err = "ERROR: GPU[1]\t: SMU is not responding\n"
    command = rocm_smi(tmp_path, json.dumps(TWO_CARDS), err)
    result = gpu.probe(amd_context(tmp_path, command, excluded_gpus=[1], gpus_expected=1))
    assert result.status == Status.OK, result.summary
    assert any(d.startswith("GPU1 (excluded): SMU error") for d in result.details)


@pytest.mark.skipif(importlib.util.find_spec("amdsmi") is not None, reason="amdsmi installed")
def test_no_rocm_smi_and_no_amdsmi_is_no_gpu(tmp_path: Path) -> None:
    result = gpu.probe(amd_context(tmp_path, ["/nonexistent/rocm-smi"], gpus_expected=1))
    assert result.status == Status.CRITICAL
    assert "rocm-smi: not installed; amdsmi: not installed" in result.summary


# --- amdsmi, where rocm-smi is not installed ----------------------------------------------------


def test_amdsmi_readings(tmp_path: Path) -> None:
    fake = FakeAmdsmi([FakeAmdGpu(), FakeAmdGpu(temps={"HOTSPOT": 71}, vram_used=60000)])
    scan = amd.read_amd(["/nonexistent/rocm-smi"], timeout=5, amdsmi=fake)
    assert [(g.index, g.temp_c, round(g.mem_pct or 0)) for g in scan.gpus] == [
        (0, 45.0, 2),
        (1, 71.0, 92),
    ]
    assert scan.notes == ["rocm-smi: not installed"]
    assert fake.live == 0  # shut down again


def test_amdsmi_errors_are_na_unless_the_smu_is_stuck(tmp_path: Path) -> None:
    unsupported = AmdSmiLibraryException(2, "AMDSMI_STATUS_NOT_SUPPORTED - Feature not supported")
    stuck = AmdSmiLibraryException(41, "AMDSMI_STATUS_BUSY - Device busy")
    fake = FakeAmdsmi(
        [
            FakeAmdGpu(errors={"amdsmi_get_gpu_vram_usage": unsupported}),
            FakeAmdGpu(errors={"amdsmi_get_temp_metric": stuck}),
        ]
    )
    first, second = amd.read_amdsmi(fake).gpus
    assert (first.status, first.unavailable) == (Status.OK, ["memory"])
    assert second.status == Status.CRITICAL
    assert second.findings[0].text.startswith("SMU error (temperature): ")


def test_amdsmi_that_cannot_start_is_no_gpu() -> None:
    fake = FakeAmdsmi([], init_error=AmdSmiException("AMDSMI_STATUS_INIT_ERROR"))
    scan = amd.read_amdsmi(fake)
    assert not scan.present
    assert scan.notes == ["amdsmi: AMDSMI_STATUS_INIT_ERROR"]
