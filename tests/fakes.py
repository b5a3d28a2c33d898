"""Fakes for what cannot exist on a test machine without a GPU, and nothing else.

`FakeNvml` stands in for the pynvml module: the same function names, constants and error
classes (taken from the real pynvml), returning real pynvml structs, and raising real
`pynvml.NVMLError`s wherever a test asks for one. Functions it does not define are missing,
as in an older pynvml. `FakeAmdsmi` does the same, much smaller, for the amdsmi library.
`FakeTorch` is the one piece of the torch module the resilient executor touches
(`torch.cuda.empty_cache()`), for a test machine without torch or a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pynvml

GIB = 2**30


@dataclass
class FakeGpu:
    """One GPU's state; `errors` maps a pynvml function name to the NVML error code it raises."""

    name: str = "NVIDIA H100 80GB HBM3"
    bus_id: str = "00000000:3B:00.0"
    temp: int = 40
    slowdown: int = 89  # the thresholds an H100 reported
    gpu_max: int | None = 87  # None: NOT_SUPPORTED, as on boards without it
    shutdown: int = 95
    mem_used: int = 8 * GIB
    mem_total: int = 80 * GIB
    util: int = 0  # % of the last sample period its kernels ran
    ecc_volatile_uncorrected: int = 0
    retired_pages_pending: bool = False
    remapped_rows: tuple[int, int, int, int] = (0, 0, 0, 0)  # corr, unc, pending, failure
    clock_reasons: int = 0
    pcie: tuple[int, int, int, int] = (5, 5, 16, 16)  # gen, max gen, width, max width
    compute_procs: list[tuple[int, int | None]] = field(default_factory=list)  # (pid, bytes)
    graphics_procs: list[tuple[int, int | None]] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class FakeHandle:
    index: int


class FakeNvml:
    """A pynvml module with `gpus` in it; `errors` is for calls that take no device."""

    def __init__(self, gpus: list[FakeGpu] | None = None, errors: dict[str, int] | None = None):
        self.gpus = list(gpus or [])
        self.errors = dict(errors or {})
        self.inits = 0
        self.shutdowns = 0
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        # Constants and error classes come from the real module; functions never do.
        if name.startswith(("NVML_", "NVMLError", "NVMLLibraryMismatchError", "nvmlClocks")):
            return getattr(pynvml, name)
        raise AttributeError(name)

    @property
    def initialised(self) -> int:
        return self.inits - self.shutdowns

    # --- library ---------------------------------------------------------------------------

    def nvmlInit(self) -> None:
        self._fail("nvmlInit")
        self.inits += 1

    def nvmlShutdown(self) -> None:
        self._live("nvmlShutdown")
        self.shutdowns += 1

    def nvmlDeviceGetCount(self) -> int:
        self._live("nvmlDeviceGetCount")
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeHandle:
        self._live("nvmlDeviceGetHandleByIndex")
        if not 0 <= index < len(self.gpus):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        self._fail("nvmlDeviceGetHandleByIndex", self.gpus[index])
        return FakeHandle(index)

    # --- per device --------------------------------------------------------------------------

    def nvmlDeviceGetName(self, handle: FakeHandle) -> str:
        return self._gpu("nvmlDeviceGetName", handle).name

    def nvmlDeviceGetPciInfo(self, handle: FakeHandle) -> Any:
        info = pynvml.nvmlPciInfo_t()
        info.busId = self._gpu("nvmlDeviceGetPciInfo", handle).bus_id
        return info

    def nvmlDeviceGetTemperatureV(self, handle: FakeHandle, sensor: int) -> int:
        assert sensor == pynvml.NVML_TEMPERATURE_GPU
        return self._gpu("nvmlDeviceGetTemperatureV", handle).temp

    def nvmlDeviceGetTemperature(self, handle: FakeHandle, sensor: int) -> int:
        assert sensor == pynvml.NVML_TEMPERATURE_GPU
        return self._gpu("nvmlDeviceGetTemperature", handle).temp

    def nvmlDeviceGetTemperatureThreshold(self, handle: FakeHandle, threshold: int) -> int:
        gpu = self._gpu("nvmlDeviceGetTemperatureThreshold", handle)
        value = {
            pynvml.NVML_TEMPERATURE_THRESHOLD_SLOWDOWN: gpu.slowdown,
            pynvml.NVML_TEMPERATURE_THRESHOLD_GPU_MAX: gpu.gpu_max,
            pynvml.NVML_TEMPERATURE_THRESHOLD_SHUTDOWN: gpu.shutdown,
        }[threshold]
        if value is None:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return value

    def nvmlDeviceGetMemoryInfo(self, handle: FakeHandle) -> Any:
        gpu = self._gpu("nvmlDeviceGetMemoryInfo", handle)
        memory = pynvml.c_nvmlMemory_t()
        memory.total, memory.used = gpu.mem_total, gpu.mem_used
        memory.free = gpu.mem_total - gpu.mem_used
        return memory

    def nvmlDeviceGetUtilizationRates(self, handle: FakeHandle) -> Any:
        gpu = self._gpu("nvmlDeviceGetUtilizationRates", handle)
        rates = pynvml.c_nvmlUtilization_t()
        rates.gpu, rates.memory = gpu.util, 0
        return rates

    def nvmlDeviceGetTotalEccErrors(
        self, handle: FakeHandle, error_type: int, counter_type: int
    ) -> int:
        gpu = self._gpu("nvmlDeviceGetTotalEccErrors", handle)
        assert error_type == pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED
        assert counter_type == pynvml.NVML_VOLATILE_ECC
        return gpu.ecc_volatile_uncorrected

    def nvmlDeviceGetRetiredPagesPendingStatus(self, handle: FakeHandle) -> int:
        gpu = self._gpu("nvmlDeviceGetRetiredPagesPendingStatus", handle)
        pending = gpu.retired_pages_pending
        return int(pynvml.NVML_FEATURE_ENABLED if pending else pynvml.NVML_FEATURE_DISABLED)

    def nvmlDeviceGetRemappedRows(self, handle: FakeHandle) -> tuple[int, int, int, int]:
        return self._gpu("nvmlDeviceGetRemappedRows", handle).remapped_rows

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: FakeHandle) -> int:
        return self._gpu("nvmlDeviceGetCurrentClocksEventReasons", handle).clock_reasons

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, handle: FakeHandle) -> int:
        return self._gpu("nvmlDeviceGetCurrentClocksThrottleReasons", handle).clock_reasons

    def nvmlDeviceGetCurrPcieLinkGeneration(self, handle: FakeHandle) -> int:
        return self._gpu("nvmlDeviceGetCurrPcieLinkGeneration", handle).pcie[0]

    def nvmlDeviceGetMaxPcieLinkGeneration(self, handle: FakeHandle) -> int:
        return self._gpu("nvmlDeviceGetMaxPcieLinkGeneration", handle).pcie[1]

    def nvmlDeviceGetCurrPcieLinkWidth(self, handle: FakeHandle) -> int:
        return self._gpu("nvmlDeviceGetCurrPcieLinkWidth", handle).pcie[2]

    def nvmlDeviceGetMaxPcieLinkWidth(self, handle: FakeHandle) -> int:
        return self._gpu("nvmlDeviceGetMaxPcieLinkWidth", handle).pcie[3]

    def nvmlDeviceGetComputeRunningProcesses(self, handle: FakeHandle) -> list[Any]:
        gpu = self._gpu("nvmlDeviceGetComputeRunningProcesses", handle)
        return _processes(gpu.compute_procs)

    def nvmlDeviceGetGraphicsRunningProcesses(self, handle: FakeHandle) -> list[Any]:
        gpu = self._gpu("nvmlDeviceGetGraphicsRunningProcesses", handle)
        return _processes(gpu.graphics_procs)

    # --- plumbing ------------------------------------------------------------------------------

    def _gpu(self, name: str, handle: FakeHandle) -> FakeGpu:
        self._live(name)
        gpu = self.gpus[handle.index]
        self._fail(name, gpu)
        return gpu

    def _live(self, name: str) -> None:
        self.calls.append(name)
        if self.initialised <= 0:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_UNINITIALIZED)
        self._fail(name)

    def _fail(self, name: str, gpu: FakeGpu | None = None) -> None:
        errors = self.errors if gpu is None else gpu.errors
        if name in errors:
            raise pynvml.NVMLError(errors[name])


def _processes(procs: list[tuple[int, int | None]]) -> list[Any]:
    return [pynvml.nvmlFriendlyObject({"pid": pid, "usedGpuMemory": used}) for pid, used in procs]


# --- amdsmi -----------------------------------------------------------------------------------


class AmdSmiException(Exception):
    """amdsmi's base error class; the real one is in amdsmi, which needs an AMD GPU stack."""


class AmdSmiLibraryException(AmdSmiException):
    def __init__(self, code: int, text: str) -> None:
        super().__init__(f"Error code:\n\t{code} | {text}")
        self.code = code

    def get_error_code(self) -> int:
        return self.code


class _Enum:
    def __init__(self, **members: int) -> None:
        self.__dict__.update(members)


@dataclass
class FakeAmdGpu:
    temps: dict[str, int] = field(default_factory=lambda: {"EDGE": 45, "HOTSPOT": 60})
    vram_used: int = 1024  # amdsmi counts in MB; only the ratio matters
    vram_total: int = 65536
    errors: dict[str, AmdSmiException] = field(default_factory=dict)
    procs: list[tuple[int, int]] = field(default_factory=list)  # (pid, VRAM bytes)


class FakeAmdsmi:
    """The amdsmi calls the gpu check makes, raising amdsmi-shaped errors on demand."""

    AmdSmiException = AmdSmiException
    AmdSmiLibraryException = AmdSmiLibraryException
    AmdSmiTemperatureType = _Enum(EDGE=0, HOTSPOT=1, JUNCTION=1, VRAM=2)
    AmdSmiTemperatureMetric = _Enum(CURRENT=0)

    def __init__(self, gpus: list[FakeAmdGpu], init_error: Exception | None = None):
        self.gpus = gpus
        self.init_error = init_error
        self.live = 0

    def amdsmi_init(self) -> None:
        if self.init_error is not None:
            raise self.init_error
        self.live += 1

    def amdsmi_shut_down(self) -> None:
        self.live -= 1

    def amdsmi_get_processor_handles(self) -> list[int]:
        assert self.live > 0
        return list(range(len(self.gpus)))

    def amdsmi_get_temp_metric(self, handle: int, sensor: int, metric: int) -> int:
        gpu = self._gpu("amdsmi_get_temp_metric", handle)
        names = {0: "EDGE", 1: "HOTSPOT", 2: "VRAM"}
        if names[sensor] not in gpu.temps:
            raise AmdSmiLibraryException(2, "AMDSMI_STATUS_NOT_SUPPORTED - Feature not supported")
        return gpu.temps[names[sensor]]

    def amdsmi_get_gpu_process_list(self, handle: int) -> list[dict[str, Any]]:
        """As amdsmi 6 and later answer: a dict per process."""
        gpu = self._gpu("amdsmi_get_gpu_process_list", handle)
        return [
            {"name": "python", "pid": pid, "mem": vram, "memory_usage": {"vram_mem": vram}}
            for pid, vram in gpu.procs
        ]

    def amdsmi_get_gpu_vram_usage(self, handle: int) -> dict[str, int]:
        gpu = self._gpu("amdsmi_get_gpu_vram_usage", handle)
        return {"vram_total": gpu.vram_total, "vram_used": gpu.vram_used}

    def _gpu(self, name: str, handle: int) -> FakeAmdGpu:
        assert self.live > 0
        gpu = self.gpus[handle]
        if name in gpu.errors:
            raise gpu.errors[name]
        return gpu


class FakeTorchCuda:
    def __init__(self, events: list[str]) -> None:
        self.events = events

    def empty_cache(self) -> None:
        self.events.append("empty_cache")


class FakeTorch:
    """What `sys.modules["torch"]` needs for the executor: `cuda.empty_cache()`, which appends
    "empty_cache" to `events` (a list the test shares with its fake fn, to see the order)."""

    def __init__(self, events: list[str]) -> None:
        self.cuda = FakeTorchCuda(events)
