"""The state of an attempt's GPU when it failed, for the ledger: temperature, memory, what the
driver reports wrong (ECC, row remapping, a GPU that fell off the bus, SMU errors, Xids in the
kernel log), who holds memory, and which of those problems appeared while the attempt ran.

Read with health-check's GPU survey (NVML; `rocm-smi` for AMD; the kernel log for Xids), only
after a failure: a reading costs tens of milliseconds, and a successful attempt needs none.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable
from dataclasses import asdict
from typing import Any

from health_check.checks.gpu import survey
from health_check.checks.gpu_model import GpuReading
from health_check.result import Status
from trainguard.config import HealthSection

AMD_TIMEOUT = 5.0
_HEAT = re.compile(r": CRITICAL: \d+°C: ")
_BUDGET = AMD_TIMEOUT / 0.4  # the survey gives rocm-smi 40 % of its budget


def read_gpu_state(
    indexes: Collection[int] | None,
    *,
    nvml: Any | None = None,
    rocm_smi: tuple[str, ...] = ("rocm-smi",),
    kernel_log: Callable[[], str] | None = None,
    before: Collection[str] = (),
    health: HealthSection | None = None,
) -> dict[str, Any] | None:
    """The GPUs `indexes` (None: every GPU) as {"gpus": [...], "notes": [...], "new_errors":
    [...]}; `new_errors` are the WARNING / CRITICAL findings on them that were not in `before`
    (the findings when the attempt started). None where no vendor tool answers for a GPU."""
    graded = health or HealthSection(rocm_smi_command=list(rocm_smi))
    found = survey(graded, budget=_BUDGET, ours=lambda _pid: True, nvml=nvml, kernel_log=kernel_log)
    notes = [f.text for f in found.findings]
    if not found.gpus and not notes:
        return None
    chosen = [g for g in found.gpus if indexes is None or g.index in indexes]
    now = findings_of(chosen)
    return {
        "gpus": [_brief(g) for g in chosen],
        "notes": notes,
        "new_errors": sorted(now - set(before)),
    }


def findings_of(gpus: Collection[GpuReading]) -> frozenset[str]:
    """`GPU1: CRITICAL: Xid 79: ...` for every CRITICAL finding on `gpus`, and every Xid or SMU
    one (memory in use, foreign processes: what training does, not errors)."""
    return frozenset(
        f"{gpu.label}: {f.status.name}: {f.text}"
        for gpu in gpus
        for f in gpu.findings
        if f.status == Status.CRITICAL or f.text.startswith(("Xid", "SMU"))
    )


def hardware_errors(new_errors: Iterable[str]) -> list[str]:
    """The CRITICAL ones of `new_errors` that a hot GPU does not explain: a GPU that fell off
    the bus, an SMU that stopped answering, uncorrectable ECC, a fatal Xid."""
    return [e for e in new_errors if ": CRITICAL: " in e and not _HEAT.search(e)]


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
