"""GPU memory each process holds, summed over the NVIDIA GPUs: how much a stray process costs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from health_check.checks.nvidia import read_nvidia_processes

GIB = 2**30


@dataclass(frozen=True)
class GpuMemory:
    present: bool  # NVML answered: there are NVIDIA GPUs to hold memory
    complete: bool  # every GPU's process lists were read: a pid not listed holds none
    used: dict[int, int | None] = field(default_factory=dict)  # pid -> bytes; None: N/A

    def describe(self, pid: int) -> str:
        """`2.5 GiB GPU memory`, `no GPU memory`, ... for `pid`; "" when there is no GPU."""
        if not self.present:
            return ""
        if pid in self.used:
            used = self.used[pid]
            # NVML reports no amount under MIG and for some graphics contexts.
            return "on a GPU, memory N/A" if used is None else f"{used / GIB:.1f} GiB GPU memory"
        return "no GPU memory" if self.complete else "GPU memory unknown"


def read_gpu_memory(nvml: Any | None) -> GpuMemory:
    """Ask NVML (`nvml`: a pynvml-like module, None: import pynvml) once, for every GPU."""
    scan = read_nvidia_processes(nvml)
    if not scan.present:
        return GpuMemory(present=False, complete=False)
    complete = not scan.findings and not any(gpu.findings or gpu.unavailable for gpu in scan.gpus)
    used: dict[int, int | None] = {}
    for gpu in scan.gpus:
        for pid, amount in gpu.processes:
            if amount is None:
                used.setdefault(pid, None)
            else:
                used[pid] = (used.get(pid) or 0) + amount
    return GpuMemory(present=True, complete=complete, used=used)
