"""NVIDIA GPUs through NVML (pynvml): read everything, judge only what NVML alone can tell.

Any NVML call may fail. NOT_SUPPORTED (consumer cards, ECC off, pre-Ampere row remapping) makes
a reading N/A, never a failure; GPU_IS_LOST and RESET_REQUIRED make that GPU CRITICAL; other
errors make the one reading unreadable (WARNING). Deprecated NVML entry points are used only
where the newer one is missing from pynvml or the driver.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from health_check.checks.gpu_model import Finding, GpuReading, VendorScan
from health_check.result import Status

# nvmlInit failures that mean "no NVIDIA GPU here", not "the NVIDIA stack is broken".
_ABSENT = ("NVML_ERROR_LIBRARY_NOT_FOUND", "NVML_ERROR_DRIVER_NOT_LOADED")
# Per-GPU failures after which nothing that GPU says can be trusted.
_LOST = ("NVML_ERROR_GPU_IS_LOST", "NVML_ERROR_RESET_REQUIRED")

# Clock-event reasons that mean the hardware or driver slowed the GPU to protect itself. Power
# capping, application clocks and idling are normal operation and are not reported.
_THROTTLES = (
    ("nvmlClocksThrottleReasonHwSlowdown", "HW slowdown"),
    ("nvmlClocksThrottleReasonHwThermalSlowdown", "HW thermal slowdown"),
    ("nvmlClocksThrottleReasonSwThermalSlowdown", "SW thermal slowdown"),
    ("nvmlClocksThrottleReasonHwPowerBrakeSlowdown", "power brake"),
)


class _Lost(Exception):
    """The GPU stopped answering: abandon its remaining readings."""


def read_nvidia(nvml: Any | None) -> VendorScan:
    """Every NVIDIA GPU NVML sees; `nvml` is the pynvml module (None: import it now)."""
    return _session(nvml, _read_device)


def read_nvidia_processes(nvml: Any | None) -> VendorScan:
    """Only the processes on each NVIDIA GPU and the memory each holds: a few calls per GPU."""
    return _session(nvml, _read_device_processes)


_DeviceReader = Callable[[Any, int, GpuReading], None]


def _session(nvml: Any | None, read: _DeviceReader) -> VendorScan:
    if nvml is None:
        try:
            import pynvml
        except ImportError:
            return VendorScan("nvidia", present=False, notes=["pynvml is not installed"])
        nvml = pynvml
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as exc:
        if exc.value in {getattr(nvml, name) for name in _ABSENT}:
            return VendorScan("nvidia", present=False, notes=[f"NVML: {exc}"])
        scan = VendorScan("nvidia", present=True)
        scan.findings.append(_init_failure(exc))
        return scan
    try:
        return _scan(nvml, read)
    finally:
        nvml.nvmlShutdown()  # NVML counts inits: every successful one needs its shutdown


def _init_failure(exc: Exception) -> Finding:
    # A driver that is installed but cannot be initialised fails CUDA too (typically a driver
    # upgraded without a reboot: "RM has detected an NVML/RM version mismatch").
    return Finding(Status.CRITICAL, f"NVML cannot start: {exc}")


def _scan(nvml: Any, read: _DeviceReader) -> VendorScan:
    scan = VendorScan("nvidia", present=True)
    try:
        count = int(nvml.nvmlDeviceGetCount())
    except nvml.NVMLError as exc:
        scan.findings.append(Finding(Status.CRITICAL, f"NVML cannot count GPUs: {exc}"))
        return scan
    for index in range(count):
        reading = GpuReading(index, "nvidia")
        try:
            read(nvml, index, reading)
        except _Lost as exc:
            reading.add(Status.CRITICAL, f"GPU lost: {exc} (reset or reboot; check Xid 79)")
        scan.gpus.append(reading)
    return scan


def _read_device(nvml: Any, index: int, reading: GpuReading) -> None:
    handle = _call(nvml, reading, "handle", ["nvmlDeviceGetHandleByIndex"], index)
    if handle is None:
        reading.add(Status.CRITICAL, "NVML gives no handle for it")
        return
    reading.name = _text(_call(nvml, reading, "name", ["nvmlDeviceGetName"], handle))
    pci = _call(nvml, reading, "PCI info", ["nvmlDeviceGetPciInfo"], handle)
    reading.bus_id = _text(getattr(pci, "busId", "")) if pci is not None else ""
    _read_temperature(nvml, handle, reading)
    memory = _call(nvml, reading, "memory", ["nvmlDeviceGetMemoryInfo"], handle)
    if memory is not None:
        reading.mem_used, reading.mem_total = int(memory.used), int(memory.total)
    util = _call(nvml, reading, "utilisation", ["nvmlDeviceGetUtilizationRates"], handle)
    if util is not None:
        reading.util_pct = float(util.gpu)
    _read_memory_errors(nvml, handle, reading)
    reasons = _call(
        nvml,
        reading,
        "clock event reasons",
        ["nvmlDeviceGetCurrentClocksEventReasons", "nvmlDeviceGetCurrentClocksThrottleReasons"],
        handle,
    )
    if reasons is not None:
        slowed = [text for name, text in _THROTTLES if int(reasons) & getattr(nvml, name)]
        if slowed:
            reading.add(Status.WARNING, f"clocks slowed: {', '.join(slowed)}")
    idle = reasons is not None and bool(int(reasons) & nvml.nvmlClocksThrottleReasonGpuIdle)
    _read_pcie(nvml, handle, reading, idle=idle)
    _read_processes(nvml, handle, reading)


def _read_device_processes(nvml: Any, index: int, reading: GpuReading) -> None:
    handle = _call(nvml, reading, "handle", ["nvmlDeviceGetHandleByIndex"], index)
    if handle is None:
        reading.add(Status.CRITICAL, "NVML gives no handle for it")
        return
    _read_processes(nvml, handle, reading)


def _read_temperature(nvml: Any, handle: Any, reading: GpuReading) -> None:
    temp = _call(
        nvml,
        reading,
        "temperature",
        ["nvmlDeviceGetTemperatureV", "nvmlDeviceGetTemperature"],
        handle,
        nvml.NVML_TEMPERATURE_GPU,
    )
    reading.temp_c = None if temp is None else float(temp)
    limits = {}
    for what, threshold in (
        ("slowdown threshold", nvml.NVML_TEMPERATURE_THRESHOLD_SLOWDOWN),
        # Where the GPU may drop below its base clock (SW slowdown); on an H100 it is 87°C,
        # below the 89°C HW slowdown, so it is the first point where training slows.
        ("GPU max threshold", nvml.NVML_TEMPERATURE_THRESHOLD_GPU_MAX),
        ("shutdown threshold", nvml.NVML_TEMPERATURE_THRESHOLD_SHUTDOWN),
    ):
        value = _call(nvml, reading, what, ["nvmlDeviceGetTemperatureThreshold"], handle, threshold)
        # Some boards answer 0 for a threshold they do not have.
        limits[what] = float(value) if value else None
    slowdowns = [v for k, v in limits.items() if v and k != "shutdown threshold"]
    reading.slowdown_c = min(slowdowns) if slowdowns else None
    reading.shutdown_c = limits["shutdown threshold"]


def _read_memory_errors(nvml: Any, handle: Any, reading: GpuReading) -> None:
    ecc = _call(
        nvml,
        reading,
        "volatile ECC",
        ["nvmlDeviceGetTotalEccErrors"],
        handle,
        nvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED,
        nvml.NVML_VOLATILE_ECC,
    )
    if ecc:
        reading.add(
            Status.CRITICAL,
            f"{int(ecc)} volatile uncorrected ECC error{'s' * (int(ecc) != 1)} since the driver"
            " loaded (drain it and reset the GPU)",
        )
    pending = _call(
        nvml, reading, "retired pages", ["nvmlDeviceGetRetiredPagesPendingStatus"], handle
    )
    if pending == nvml.NVML_FEATURE_ENABLED:
        reading.add(Status.WARNING, "retired pages pending: reset the GPU when idle to apply")
    rows = _call(nvml, reading, "row remapping", ["nvmlDeviceGetRemappedRows"], handle)
    if rows is not None:
        _corrected, _uncorrected, rows_pending, rows_failed = rows
        if rows_failed:
            reading.add(Status.CRITICAL, "row remapping failed: no spare rows left (replace it)")
        elif rows_pending:
            reading.add(Status.WARNING, "row remapping pending: reset the GPU when idle")


def _read_pcie(nvml: Any, handle: Any, reading: GpuReading, *, idle: bool) -> None:
    gen = _call(nvml, reading, "PCIe gen", ["nvmlDeviceGetCurrPcieLinkGeneration"], handle)
    max_gen = _call(nvml, reading, "PCIe max gen", ["nvmlDeviceGetMaxPcieLinkGeneration"], handle)
    width = _call(nvml, reading, "PCIe width", ["nvmlDeviceGetCurrPcieLinkWidth"], handle)
    max_width = _call(nvml, reading, "PCIe max width", ["nvmlDeviceGetMaxPcieLinkWidth"], handle)
    if width and max_width and width < max_width:
        reading.add(Status.WARNING, f"PCIe link degraded: x{width} of x{max_width}")
    # An idle GPU lowers its link generation to save power; that is not a degraded link.
    if gen and max_gen and gen < max_gen and not idle:
        reading.add(Status.WARNING, f"PCIe link degraded: gen {gen} of {max_gen} while busy")


def _read_processes(nvml: Any, handle: Any, reading: GpuReading) -> None:
    found: dict[int, int | None] = {}
    for what, names in (
        (
            "compute processes",
            ["nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetComputeRunningProcesses_v2"],
        ),
        (
            "graphics processes",
            ["nvmlDeviceGetGraphicsRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses_v2"],
        ),
    ):
        for proc in _call(nvml, reading, what, names, handle) or ():
            used = getattr(proc, "usedGpuMemory", None)
            previous = found.get(int(proc.pid))
            found[int(proc.pid)] = used if previous is None else max(previous, used or 0)
    reading.processes = sorted(found.items())


def _call(nvml: Any, reading: GpuReading, what: str, names: Sequence[str], *args: Any) -> Any:
    """The first of `names` that this pynvml and driver have, called; None when N/A."""
    lost = {getattr(nvml, name) for name in _LOST}
    for position, name in enumerate(names):
        fn = getattr(nvml, name, None)
        last = position == len(names) - 1
        if fn is None:
            continue
        try:
            return fn(*args)
        except nvml.NVMLLibraryMismatchError:
            continue  # pynvml's unversioned wrapper on an older driver: try the next name
        except nvml.NVMLError as exc:
            if exc.value == nvml.NVML_ERROR_FUNCTION_NOT_FOUND and not last:
                continue
            if exc.value in lost:
                raise _Lost(str(exc)) from exc
            if exc.value in (nvml.NVML_ERROR_NOT_SUPPORTED, nvml.NVML_ERROR_FUNCTION_NOT_FOUND):
                reading.unavailable.append(what)
            elif exc.value == nvml.NVML_ERROR_NO_PERMISSION:
                reading.unavailable.append(f"{what} (no permission)")
            else:
                reading.add(Status.WARNING, f"{what} unreadable: {exc}")
            return None
    reading.unavailable.append(what)
    return None


def _text(value: object) -> str:
    # Older pynvml returns bytes where newer returns str.
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value or "")
