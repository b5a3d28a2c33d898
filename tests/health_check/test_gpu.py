"""The gpu check against FakeNvml, and the contract tests also against the real pynvml.

Tests taking the `nvml` fixture run twice: on a FakeNvml, and (marked `gpu`) on the real
pynvml when this machine has an NVIDIA GPU; elsewhere that second run is skipped.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import psutil
import pynvml
import pytest

from health_check.checks import gpu
from health_check.checks.xid import KernelLogUnavailable
from health_check.context import Context
from health_check.result import CheckResult, Status
from tests.fakes import GIB, FakeGpu, FakeNvml
from tests.polling import wait_until
from trainguard.config import load_config
from trainguard.host import this_host
from trainguard.procs import OWNER_ENV, identify
from trainguard.workspace import Workspace

CHILDREN = Path(__file__).resolve().parent.parent / "children"
NO_ROCM_SMI = ["/nonexistent/rocm-smi"]  # keeps a machine's real AMD GPUs out of these tests
NOT_SUPPORTED = pynvml.NVML_ERROR_NOT_SUPPORTED
BUS0, BUS1 = "00000000:3B:00.0", "00000000:86:00.0"


def gpu_context(
    tmp_path: Path,
    nvml: Any | None,
    kernel_log: str | Callable[[], str] = "",
    **health: Any,
) -> Context:
    """A workspace in tmp_path with `health` as its [health] section (JSON values are TOML)."""
    health.setdefault("rocm_smi_command", NO_ROCM_SMI)
    lines = ["[health]", *(f"{key} = {json.dumps(value)}" for key, value in health.items())]
    path = tmp_path / "trainguard.toml"
    path.write_text("\n".join(lines) + "\n")
    log = kernel_log if callable(kernel_log) else (lambda: kernel_log)
    return Context(Workspace(load_config(path, env={})), nvml=nvml, kernel_log=log)


def two_gpus(**second: Any) -> FakeNvml:
    return FakeNvml([FakeGpu(bus_id=BUS0), FakeGpu(bus_id=BUS1, temp=55, **second)])


def metric(result: CheckResult, name: str, label: str = "") -> float | None:
    found = [m.value for m in result.metrics if m.name == name and m.label == label]
    return found[0] if found else None


# --- the same tests on FakeNvml and on the real pynvml ----------------------------------------


def _real_gpu_count() -> int:
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return 0
    try:
        return int(pynvml.nvmlDeviceGetCount())
    finally:
        pynvml.nvmlShutdown()


@pytest.fixture(params=["fake", pytest.param("real", marks=pytest.mark.gpu)])
def nvml(request: pytest.FixtureRequest) -> Any | None:
    """A FakeNvml with two healthy GPUs, or None: the probe then imports the real pynvml."""
    if request.param == "fake":
        return two_gpus()
    if _real_gpu_count() == 0:
        pytest.skip("no NVIDIA GPU (NVML does not start or sees none)")
    return None


def gpu_count(nvml: Any | None) -> int:
    return len(nvml.gpus) if isinstance(nvml, FakeNvml) else _real_gpu_count()


def test_every_gpu_gets_a_detail_line_and_its_metrics(tmp_path: Path, nvml: Any) -> None:
    count = gpu_count(nvml)
    result = gpu.probe(gpu_context(tmp_path, nvml))
    for index in range(count):
        line = next(d for d in result.details if d.startswith(f"GPU{index} nvidia"))
        assert "°C" in line and "memory" in line
        assert metric(result, "temp_c", f"gpu{index}") is not None
        assert 0 <= (metric(result, "mem_used_pct", f"gpu{index}") or 0) <= 100
    assert result.fix is None
    assert "GPUs healthy" in result.summary


def test_nvml_is_shut_down_after_every_probe(tmp_path: Path, nvml: Any) -> None:
    gpu.probe(gpu_context(tmp_path, nvml))
    gpu.probe(gpu_context(tmp_path, nvml))
    if isinstance(nvml, FakeNvml):
        assert (nvml.inits, nvml.shutdowns) == (2, 2)
    else:
        with pytest.raises(pynvml.NVMLError_Uninitialized):
            pynvml.nvmlShutdown()  # NVML counts inits: one more shutdown than inits fails


def test_fewer_healthy_gpus_than_expected_is_critical(tmp_path: Path, nvml: Any) -> None:
    count = gpu_count(nvml)
    result = gpu.probe(gpu_context(tmp_path, nvml, gpus_expected=count + 1))
    assert result.status == Status.CRITICAL
    assert result.summary.startswith(f"only {count} of {count + 1} expected GPUs healthy")


def test_as_many_healthy_gpus_as_expected_is_not_critical(tmp_path: Path, nvml: Any) -> None:
    count = gpu_count(nvml)
    result = gpu.probe(gpu_context(tmp_path, nvml, gpus_expected=count))
    assert metric(result, "gpus_healthy") == count, result.details
    assert result.status != Status.CRITICAL, result.summary
    if isinstance(nvml, FakeNvml):
        assert result.status == Status.OK
        assert result.summary == "2 of 2 GPUs healthy: GPU0 40°C 10% mem, GPU1 55°C 10% mem"


def test_excluded_gpus_are_reported_but_never_fail(tmp_path: Path, nvml: Any) -> None:
    count = gpu_count(nvml)
    if isinstance(nvml, FakeNvml):
        nvml.gpus[1].ecc_volatile_uncorrected = 2
    result = gpu.probe(gpu_context(tmp_path, nvml, excluded_gpus=list(range(count))))
    assert result.status == Status.OK, result.summary
    assert result.summary.endswith(f"({count} excluded)")
    assert all(f"GPU{index} nvidia" in " ".join(result.details) for index in range(count))
    if isinstance(nvml, FakeNvml):
        assert any(d.startswith("GPU1 (excluded): 2 volatile uncorrected") for d in result.details)


def test_gpus_excluded_for_this_host_in_the_queue_are_reported_as_excluded(tmp_path: Path) -> None:
    fake = two_gpus(ecc_volatile_uncorrected=2)
    path = tmp_path / "trainguard.toml"
    path.write_text(
        f"[health]\nrocm_smi_command = {json.dumps(NO_ROCM_SMI)}\ngpus_expected = 1\n"
        f'[queue.nodes."{this_host()}"]\nexcluded_gpus = [1]\n'
        '[queue.nodes."another-rig"]\nexcluded_gpus = [0]\n'
    )
    ctx = Context(Workspace(load_config(path, env={})), nvml=fake, kernel_log=lambda: "")
    result = gpu.probe(ctx)
    assert (result.status, result.summary) == (
        Status.OK,
        "1 of 1 GPUs healthy: GPU0 40°C 10% mem (1 excluded)",
    )
    assert any(d.startswith("GPU1 (excluded): 2 volatile uncorrected") for d in result.details)


@pytest.mark.gpu
def test_the_real_kernel_log_is_scanned_or_said_to_be_unavailable(tmp_path: Path) -> None:
    if _real_gpu_count() == 0:
        pytest.skip("no NVIDIA GPU")
    ctx = Context(gpu_context(tmp_path, None).ws)  # kernel_log None: read it with dmesg
    result = gpu.probe(ctx)
    assert any(d.startswith(("kernel log: ", "Xid scan unavailable: ")) for d in result.details)


# --- no GPU -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "error", [pynvml.NVML_ERROR_LIBRARY_NOT_FOUND, pynvml.NVML_ERROR_DRIVER_NOT_LOADED]
)
def test_no_gpu_and_none_expected_is_ok(tmp_path: Path, error: int) -> None:
    fake = FakeNvml(errors={"nvmlInit": error})
    result = gpu.probe(gpu_context(tmp_path, fake))
    assert (result.status, result.summary) == (Status.OK, "no GPU expected, none found")
    assert str(pynvml.NVMLError(error)) in " ".join(result.details)
    assert fake.shutdowns == 0  # no shutdown without an init


def test_no_gpu_when_some_are_expected_is_critical_and_says_why(tmp_path: Path) -> None:
    fake = FakeNvml(errors={"nvmlInit": pynvml.NVML_ERROR_DRIVER_NOT_LOADED})
    result = gpu.probe(gpu_context(tmp_path, fake, gpus_expected=2))
    assert result.status == Status.CRITICAL
    assert result.summary.startswith("no GPU found, 2 expected (NVML: Driver Not Loaded; ")
    assert "rocm-smi: not installed" in result.summary


def test_nvml_starting_and_seeing_no_gpu_is_no_gpu(tmp_path: Path) -> None:
    result = gpu.probe(gpu_context(tmp_path, FakeNvml([])))
    assert (result.status, result.summary) == (Status.OK, "no GPU expected, none found")


def test_a_driver_that_cannot_start_is_critical(tmp_path: Path) -> None:
    fake = FakeNvml(errors={"nvmlInit": pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH})
    result = gpu.probe(gpu_context(tmp_path, fake))
    assert result.status == Status.CRITICAL
    assert result.summary.startswith("NVML cannot start: RM has detected an NVML/RM version")


# --- NVML errors ------------------------------------------------------------------------------

OPTIONAL_READINGS = [
    "nvmlDeviceGetTemperatureThreshold",
    "nvmlDeviceGetTotalEccErrors",
    "nvmlDeviceGetRetiredPagesPendingStatus",
    "nvmlDeviceGetRemappedRows",
    "nvmlDeviceGetCurrentClocksEventReasons",
    "nvmlDeviceGetCurrentClocksThrottleReasons",
    "nvmlDeviceGetCurrPcieLinkGeneration",
    "nvmlDeviceGetMaxPcieLinkGeneration",
    "nvmlDeviceGetCurrPcieLinkWidth",
    "nvmlDeviceGetMaxPcieLinkWidth",
    "nvmlDeviceGetComputeRunningProcesses",
    "nvmlDeviceGetGraphicsRunningProcesses",
]


def test_not_supported_readings_are_na_never_failures(tmp_path: Path) -> None:
    consumer = FakeGpu(name="NVIDIA GeForce RTX 4090", errors=dict.fromkeys(OPTIONAL_READINGS, 3))
    assert NOT_SUPPORTED == 3
    result = gpu.probe(gpu_context(tmp_path, FakeNvml([consumer]), gpus_expected=1))
    assert result.status == Status.OK, result.summary
    line = result.details[0]
    assert line.startswith("GPU0 nvidia NVIDIA GeForce RTX 4090 [00000000:3B:00.0]: OK; 40°C")
    for what in ("volatile ECC", "row remapping", "clock event reasons", "PCIe width"):
        assert what in line.split("N/A: ")[1]


def test_every_reading_not_supported_still_reports_the_gpu(tmp_path: Path) -> None:
    everything = [
        *OPTIONAL_READINGS,
        "nvmlDeviceGetName",
        "nvmlDeviceGetPciInfo",
        "nvmlDeviceGetTemperatureV",
        "nvmlDeviceGetTemperature",
        "nvmlDeviceGetMemoryInfo",
    ]
    fake = FakeNvml([FakeGpu(errors=dict.fromkeys(everything, NOT_SUPPORTED))])
    result = gpu.probe(gpu_context(tmp_path, fake, gpus_expected=1))
    assert (result.status, result.summary) == (Status.OK, "1 of 1 GPUs healthy: GPU0")
    assert metric(result, "gpus_healthy") == 1


@pytest.mark.parametrize("error", [pynvml.NVML_ERROR_GPU_IS_LOST, pynvml.NVML_ERROR_RESET_REQUIRED])
@pytest.mark.parametrize(
    "call", ["nvmlDeviceGetHandleByIndex", "nvmlDeviceGetTemperatureV", "nvmlDeviceGetRemappedRows"]
)
def test_a_lost_gpu_is_critical_and_the_others_still_count(
    tmp_path: Path, call: str, error: int
) -> None:
    fake = two_gpus(errors={call: error})
    result = gpu.probe(gpu_context(tmp_path, fake, gpus_expected=2))
    assert result.status == Status.CRITICAL
    assert result.summary.startswith("only 1 of 2 expected GPUs healthy: GPU1: GPU lost: ")
    assert metric(result, "gpus_healthy") == 1
    assert fake.shutdowns == 1


def test_a_lost_gpu_is_critical_even_when_none_are_expected(tmp_path: Path) -> None:
    fake = two_gpus(errors={"nvmlDeviceGetMemoryInfo": pynvml.NVML_ERROR_GPU_IS_LOST})
    result = gpu.probe(gpu_context(tmp_path, fake))
    assert result.status == Status.CRITICAL
    assert result.summary == (
        "GPU1: GPU lost: GPU is lost (reset or reboot; check Xid 79); 1 of 2 GPUs healthy"
    )


def test_an_unexpected_nvml_error_makes_that_reading_a_warning(tmp_path: Path) -> None:
    fake = two_gpus(errors={"nvmlDeviceGetTemperatureV": pynvml.NVML_ERROR_UNKNOWN})
    result = gpu.probe(gpu_context(tmp_path, fake))
    assert result.status == Status.WARNING
    assert result.summary.startswith("GPU1: temperature unreadable: Unknown Error")


def test_no_permission_is_na(tmp_path: Path) -> None:
    fake = two_gpus(
        errors={"nvmlDeviceGetComputeRunningProcesses": pynvml.NVML_ERROR_NO_PERMISSION}
    )
    result = gpu.probe(gpu_context(tmp_path, fake))
    assert result.status == Status.OK
    assert "compute processes (no permission)" in result.details[1]


def test_newer_nvml_calls_fall_back_to_the_older_ones(tmp_path: Path) -> None:
    missing = pynvml.NVML_ERROR_FUNCTION_NOT_FOUND  # an older driver than this pynvml
    hot = FakeGpu(
        temp=90,
        clock_reasons=pynvml.nvmlClocksThrottleReasonHwThermalSlowdown,
        errors={
            "nvmlDeviceGetTemperatureV": missing,
            "nvmlDeviceGetCurrentClocksEventReasons": missing,
        },
    )
    fake = FakeNvml([hot])
    result = gpu.probe(gpu_context(tmp_path, fake))
    assert "nvmlDeviceGetTemperature" in fake.calls
    assert "nvmlDeviceGetCurrentClocksThrottleReasons" in fake.calls
    assert "GPU0: clocks slowed: HW thermal slowdown" in result.details
    assert metric(result, "temp_c", "gpu0") == 90


# --- grading ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("temp", "max_temp", "status", "text"),
    [
        (79, 85, Status.OK, None),
        (80, 85, Status.WARNING, "80°C: near the 85°C limit"),
        (85, 85, Status.CRITICAL, "85°C: at or above the 85°C limit"),
        (87, 100, Status.CRITICAL, "87°C: at or above the 87°C limit"),  # its SW slowdown
        (95, 100, Status.CRITICAL, "95°C: at its shutdown temperature"),
    ],
)
def test_temperature_is_graded_against_the_lower_of_config_and_the_gpus_own_limits(
    tmp_path: Path, temp: int, max_temp: int, status: Status, text: str | None
) -> None:
    result = gpu.probe(
        gpu_context(tmp_path, FakeNvml([FakeGpu(temp=temp)]), gpu_max_temp_c=max_temp)
    )
    assert result.status == status
    if text:
        assert result.summary.startswith(f"GPU0: {text}")
    temp_metric = next(m for m in result.metrics if m.name == "temp_c")
    assert (temp_metric.warn, temp_metric.crit) == (min(max_temp, 87) - 5, min(max_temp, 87))


def test_without_a_gpu_max_threshold_the_hw_slowdown_one_counts(tmp_path: Path) -> None:
    fake = FakeNvml([FakeGpu(temp=88, gpu_max=None)])
    result = gpu.probe(gpu_context(tmp_path, fake, gpu_max_temp_c=100))
    assert result.status == Status.WARNING
    assert result.summary.startswith("GPU0: 88°C: near the 89°C limit")
    assert "N/A: GPU max threshold" in result.details[0]


def test_memory_above_the_limit_is_a_warning(tmp_path: Path) -> None:
    fake = two_gpus(mem_used=77 * GIB)
    result = gpu.probe(gpu_context(tmp_path, fake, gpu_max_mem_pct=95, gpus_expected=2))
    assert result.status == Status.WARNING
    assert result.summary == "GPU1: memory 96% used (gpu_max_mem_pct 95); 2 of 2 GPUs healthy"
    assert metric(result, "mem_used_pct", "gpu1") == 96.25


def test_volatile_uncorrected_ecc_errors_are_critical(tmp_path: Path) -> None:
    result = gpu.probe(gpu_context(tmp_path, two_gpus(ecc_volatile_uncorrected=3)))
    assert result.status == Status.CRITICAL
    assert result.summary.startswith("GPU1: 3 volatile uncorrected ECC errors since the driver")
    assert result.summary.endswith("; 1 of 2 GPUs healthy")


@pytest.mark.parametrize(
    ("state", "status", "text"),
    [
        ({"retired_pages_pending": True}, Status.WARNING, "retired pages pending"),
        ({"remapped_rows": (0, 1, 1, 0)}, Status.WARNING, "row remapping pending"),
        ({"remapped_rows": (0, 8, 0, 1)}, Status.CRITICAL, "row remapping failed"),
        ({"remapped_rows": (5, 1, 0, 0)}, Status.OK, None),  # rows remapped and applied
    ],
)
def test_pending_and_failed_memory_repairs(
    tmp_path: Path, state: dict[str, Any], status: Status, text: str | None
) -> None:
    result = gpu.probe(gpu_context(tmp_path, two_gpus(**state)))
    assert result.status == status
    if text:
        assert result.summary.startswith(f"GPU1: {text}")


@pytest.mark.parametrize(
    ("reasons", "text"),
    [
        (pynvml.nvmlClocksThrottleReasonHwSlowdown, "HW slowdown"),
        (pynvml.nvmlClocksThrottleReasonSwThermalSlowdown, "SW thermal slowdown"),
        (
            pynvml.nvmlClocksThrottleReasonHwThermalSlowdown
            | pynvml.nvmlClocksThrottleReasonHwPowerBrakeSlowdown,
            "HW thermal slowdown, power brake",
        ),
    ],
)
def test_protective_clock_slowdowns_are_warnings(tmp_path: Path, reasons: int, text: str) -> None:
    result = gpu.probe(gpu_context(tmp_path, two_gpus(clock_reasons=reasons)))
    assert result.status == Status.WARNING
    assert result.summary.startswith(f"GPU1: clocks slowed: {text}")


def test_power_capping_and_idling_are_normal(tmp_path: Path) -> None:
    reasons = pynvml.nvmlClocksThrottleReasonSwPowerCap | pynvml.nvmlClocksThrottleReasonGpuIdle
    result = gpu.probe(gpu_context(tmp_path, two_gpus(clock_reasons=reasons)))
    assert result.status == Status.OK


@pytest.mark.parametrize(
    ("pcie", "idle", "status"),
    [
        ((5, 5, 8, 16), False, Status.WARNING),  # half the lanes: always degraded
        ((5, 5, 8, 16), True, Status.WARNING),
        ((3, 5, 16, 16), False, Status.WARNING),  # a slower link while working
        ((1, 5, 16, 16), True, Status.OK),  # idle GPUs drop to gen 1 to save power
    ],
)
def test_a_degraded_pcie_link_is_a_warning(
    tmp_path: Path, pcie: tuple[int, int, int, int], idle: bool, status: Status
) -> None:
    reasons = pynvml.nvmlClocksThrottleReasonGpuIdle if idle else 0
    result = gpu.probe(gpu_context(tmp_path, two_gpus(pcie=pcie, clock_reasons=reasons)))
    assert result.status == status
    if status == Status.WARNING:
        assert result.summary.startswith("GPU1: PCIe link degraded: ")


# --- processes: ours or not -------------------------------------------------------------------


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., int]]:
    """Starts tests/children scripts (optionally with our owner token); kills them after."""
    started: list[subprocess.Popen[bytes]] = []
    pids: list[int] = []

    def start(script: str, *ready_files: Path, token: str | None = None) -> int:
        env = {k: v for k, v in os.environ.items() if k != OWNER_ENV}
        if token is not None:
            env[OWNER_ENV] = token
        argv = [sys.executable, str(CHILDREN / script), *map(str, ready_files)]
        started.append(subprocess.Popen(argv, env=env))
        for ready in ready_files:
            pids.append(int(wait_until(partial(ready_text, ready), message=str(ready))))
        return started[-1].pid

    yield start
    grandchildren = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(pid)
            proc.kill()
            grandchildren.append(proc)
    for popen in started:
        popen.kill()
        popen.wait()
    # A SIGKILLed grandchild may still be running for a moment, re-parented to us: wait until
    # it is dead (a zombie the session's reaper collects, or gone), not just signalled.
    wait_until(lambda: not any(_running(p) for p in grandchildren), message="children dead")


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def ready_text(path: Path) -> str | None:
    return path.read_text() if path.exists() else None


def write_state(ctx: Context, **state: Any) -> None:
    ctx.ws.state_file.parent.mkdir(parents=True, exist_ok=True)
    ctx.ws.state_file.write_text(json.dumps({"state": "RUNNING", **state}))


def test_a_process_without_our_mark_is_a_warning_naming_it(
    tmp_path: Path, spawn: Callable[..., int]
) -> None:
    stranger = spawn("sleeper.py", tmp_path / "stranger.pid")
    fake = two_gpus(compute_procs=[(stranger, 3 * GIB)])
    ctx = gpu_context(tmp_path, fake)
    write_state(ctx, owner_token="our-token")
    result = gpu.probe(ctx)
    assert result.status == Status.WARNING
    name = psutil.Process(stranger).name()
    assert result.summary.startswith(f"GPU1: 1 process not ours on it: pid {stranger} ({name}, ")
    assert "3.0 GiB)" in result.summary


def test_processes_with_our_owner_token_are_ours(tmp_path: Path, spawn: Callable[..., int]) -> None:
    trainer = spawn("sleeper.py", tmp_path / "trainer.pid", token="our-token")
    fake = two_gpus(compute_procs=[(trainer, 70 * GIB)], graphics_procs=[(trainer, None)])
    ctx = gpu_context(tmp_path, fake)
    write_state(ctx, owner_token="our-token")
    result = gpu.probe(ctx)
    assert result.status == Status.OK, result.summary
    assert "1 process" in result.details[1]


def test_descendants_of_the_daemon_are_ours(tmp_path: Path, spawn: Callable[..., int]) -> None:
    daemon = spawn("spawns_worker.py", tmp_path / "daemon.pid", tmp_path / "worker.pid")
    worker = int((tmp_path / "worker.pid").read_text())
    identity = identify(daemon)
    assert identity is not None
    fake = two_gpus(compute_procs=[(worker, GIB)])
    ctx = gpu_context(tmp_path, fake)
    write_state(ctx, daemon=identity.to_json(), daemon_pid=daemon)
    assert gpu.probe(ctx).status == Status.OK


def test_without_watchdog_state_no_process_is_ours(tmp_path: Path) -> None:
    fake = two_gpus(compute_procs=[(os.getpid(), GIB)])
    result = gpu.probe(gpu_context(tmp_path, fake))
    assert result.status == Status.WARNING
    assert f"pid {os.getpid()} (" in result.summary


def test_a_process_in_another_pid_namespace_is_not_ours(tmp_path: Path) -> None:
    invisible = 4_194_303  # above any pid_max Linux hands out
    fake = two_gpus(compute_procs=[(invisible, None)])
    ctx = gpu_context(tmp_path, fake)
    write_state(ctx, owner_token="our-token")
    result = gpu.probe(ctx)
    assert result.status == Status.WARNING
    assert f"pid {invisible} (not visible here)" in result.summary


# --- Xid events -------------------------------------------------------------------------------

XID_79 = "[ 512.1] NVRM: Xid (PCI:0000:86:00): 79, pid='<unknown>', name=<unknown>, GPU has fallen"


def test_a_critical_xid_makes_its_gpu_critical(tmp_path: Path) -> None:
    result = gpu.probe(gpu_context(tmp_path, two_gpus(), kernel_log=XID_79, gpus_expected=2))
    assert result.status == Status.CRITICAL
    assert result.summary.startswith(
        "only 1 of 2 expected GPUs healthy: GPU1: Xid 79: GPU has fallen off the bus"
    )
    assert "kernel log: 1 Xid event" in result.details


def test_application_xids_warn_or_only_inform(tmp_path: Path) -> None:
    log = "\n".join(
        [
            "NVRM: Xid (PCI:0000:3b:00): 13, pid=4242, name=python, Graphics SM Warp Exception",
            "NVRM: Xid (PCI:0000:3b:00): 13, pid=4242, name=python, Graphics SM Warp Exception",
            "NVRM: Xid (PCI:0000:86:00): 43, pid=4243, name=python, Ch 00000010",
        ]
    )
    result = gpu.probe(gpu_context(tmp_path, two_gpus(), kernel_log=log))
    assert result.status == Status.WARNING
    assert result.summary.startswith("GPU0: Xid 13 (2 times): graphics engine exception")
    assert any(d.startswith("GPU1: Xid 43: GPU stopped processing") for d in result.details)


def test_an_xid_on_a_gpu_nvml_does_not_list_counts_for_the_check(tmp_path: Path) -> None:
    log = "NVRM: Xid (PCI:0000:c1:00): 48, pid=1, name=python, An uncorrectable DBE error"
    result = gpu.probe(gpu_context(tmp_path, two_gpus(), kernel_log=log))
    assert result.status == Status.CRITICAL
    assert result.summary.startswith("PCI 0000:c1:00: Xid 48: double-bit ECC error")


def test_an_unreadable_kernel_log_is_reported_not_failed(tmp_path: Path) -> None:
    def refused() -> str:
        raise KernelLogUnavailable(
            "dmesg failed: read kernel buffer failed: Operation not permitted"
        )

    result = gpu.probe(gpu_context(tmp_path, two_gpus(), kernel_log=refused))
    assert result.status == Status.OK
    assert (
        "Xid scan unavailable: dmesg failed: read kernel buffer failed: Operation not "
        "permitted" in result.details
    )


def test_the_kernel_log_is_not_read_without_an_nvidia_driver(tmp_path: Path) -> None:
    def unexpected() -> str:
        raise AssertionError("read the kernel log")

    fake = FakeNvml(errors={"nvmlInit": pynvml.NVML_ERROR_LIBRARY_NOT_FOUND})
    assert gpu.probe(gpu_context(tmp_path, fake, kernel_log=unexpected)).status == Status.OK
