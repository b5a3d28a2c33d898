"""The state of an attempt's GPU when it failed, for the ledger: temperature, memory, what the
driver reports wrong (ECC, row remapping, a GPU that fell off the bus), who holds memory.

Read with health-check's vendor readers (NVML; `rocm-smi` for AMD), only after a failure: an
NVML session costs tens of milliseconds, and a successful attempt needs none.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import asdict
from typing import Any

from health_check.checks.amd import read_amd
from health_check.checks.gpu_model import GpuReading
from health_check.checks.nvidia import read_nvidia

AMD_TIMEOUT = 5.0


def read_gpu_state(
    indexes: Collection[int] | None,
    *,
    nvml: Any | None = None,
    rocm_smi: tuple[str, ...] = ("rocm-smi",),
) -> dict[str, Any] | None:
    """The GPUs `indexes` (None: every GPU) as {"gpus": [...], "notes": [...]}; None where
    this machine has no GPU a vendor tool answers for."""
    readings: list[GpuReading] = []
    notes: list[str] = []
    for scan in (read_nvidia(nvml), read_amd(rocm_smi, AMD_TIMEOUT)):
        if scan.present:
            readings += scan.gpus
            notes += [f.text for f in scan.findings]
    if not readings and not notes:
        return None
    chosen = [g for g in readings if indexes is None or g.index in indexes]
    return {"gpus": [_brief(g) for g in chosen], "notes": notes}


def _brief(gpu: GpuReading) -> dict[str, Any]:
    data = asdict(gpu)
    data["findings"] = [f"{f.status.name}: {f.text}" for f in gpu.findings]
    data["processes"] = [{"pid": pid, "mem_used": used} for pid, used in gpu.processes]
    return data


def visible_indexes(cuda_visible_devices: str | None) -> list[int] | None:
    """The GPU indexes a `CUDA_VISIBLE_DEVICES` value names (None: not set, so every GPU)."""
    if cuda_visible_devices is None:
        return None
    return [int(part) for part in cuda_visible_devices.split(",") if part.strip().isdigit()]
