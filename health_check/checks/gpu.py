"""The gpu check: every NVIDIA and AMD GPU present, healthy enough to train on.

How a GPU is graded (`[health]` keys in brackets):

| finding                                                                  | status   |
| ------------------------------------------------------------------------ | -------- |
| fewer healthy GPUs than [gpus_expected] (excluded GPUs never count)      | CRITICAL |
| GPU lost or reset required (NVML); SMU unresponsive or erroring (AMD)    | CRITICAL |
| NVML present but cannot start (e.g. driver upgraded without a reboot)    | CRITICAL |
| temperature >= its shutdown threshold, or >= the lower of                | CRITICAL |
|   [gpu_max_temp_c] and its slowdown threshold                            |          |
| temperature within 5 °C of that limit                                    | WARNING  |
| volatile uncorrected ECC errors > 0                                      | CRITICAL |
| row remapping failed (no spare rows left)                                | CRITICAL |
| retired pages or row remapping pending (a GPU reset applies them)        | WARNING  |
| clocks slowed: HW slowdown, HW or SW thermal slowdown, power brake       | WARNING  |
| PCIe width below its max; generation below its max while not idle        | WARNING  |
| memory used >= [gpu_max_mem_pct] (training fills GPUs: never CRITICAL)   | WARNING  |
| a process that is not ours holds GPU memory                              | WARNING  |
| an Xid in the kernel log                                                 | `xid.XIDS` |
| a reading the GPU does not support (NOT_SUPPORTED, "N/A", 0xFFFFFFFF)    | OK (N/A) |

A GPU is healthy unless it has a CRITICAL finding. GPUs in [excluded_gpus] (and in this
host's [queue.nodes."HOST"] excluded_gpus) are reported as excluded, with their findings, but
never change the status. With no GPU at all the check is OK when
[gpus_expected] is 0 ("no GPU expected") and CRITICAL otherwise. A process is ours when its
environment carries the watchdog's owner token, or it descends from the supervised daemon.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psutil

from health_check.checks.amd import read_amd
from health_check.checks.gpu_model import Finding, GpuReading, VendorScan
from health_check.checks.nvidia import read_nvidia
from health_check.checks.xid import (
    KernelLogUnavailable,
    XidEvent,
    bus_key,
    parse_xids,
    read_kernel_log,
)
from health_check.context import Context
from health_check.result import CheckResult, Metric, Status, worst
from health_check.supervision import read_supervision
from trainguard.config import HealthSection
from trainguard.host import this_host
from trainguard.procs import descendants, has_owner_mark
from trainguard.workspace import Workspace

NAME = "gpu"
TEMP_MARGIN_C = 5.0  # WARNING this close to the temperature limit


@dataclass(frozen=True)
class Survey:
    """Every GPU of this machine, graded; findings that belong to no one GPU; what was read."""

    gpus: list[GpuReading]
    findings: list[Finding]
    scans: list[VendorScan]
    details: list[str]


def survey(
    health: HealthSection,
    *,
    budget: float,
    ours: Callable[[int], bool],
    nvml: Any | None = None,
    kernel_log: Callable[[], str] | None = None,
) -> Survey:
    """Read NVIDIA (NVML) and AMD (rocm-smi / amdsmi) GPUs, attribute kernel-log Xids, grade.

    Subprocesses get part of `budget`, so that a hung rocm-smi is reported as such (CRITICAL)
    before a caller's own deadline runs out."""
    nvidia = read_nvidia(nvml)
    amd = read_amd(health.rocm_smi_command, timeout=budget * 0.4)
    scans = [nvidia, amd]
    gpus = [gpu for scan in scans for gpu in scan.gpus]
    findings = [finding for scan in scans for finding in scan.findings]
    details: list[str] = []
    if nvidia.present:
        details.append(_attribute_xids(kernel_log, nvidia.gpus, findings, timeout=budget * 0.2))
    for gpu in gpus:
        _grade(gpu, health, ours)
    return Survey(gpus, findings, scans, details)


def probe(ctx: Context) -> CheckResult:
    health = ctx.ws.config.health
    budget = health.check_timeouts.get(NAME, health.check_timeout)
    found = survey(
        health, budget=budget, ours=_ownership(ctx.ws), nvml=ctx.nvml, kernel_log=ctx.kernel_log
    )
    excluded = set(ctx.ws.config.excluded_gpus(this_host()))
    return _result(health, excluded, found)


def _grade(gpu: GpuReading, health: HealthSection, ours: Callable[[int], bool]) -> None:
    limit = _temp_limit(gpu, health)
    if gpu.temp_c is not None:
        if gpu.shutdown_c is not None and gpu.temp_c >= gpu.shutdown_c:
            gpu.add(Status.CRITICAL, f"{gpu.temp_c:.0f}°C: at its shutdown temperature")
        elif gpu.temp_c >= limit:
            gpu.add(Status.CRITICAL, f"{gpu.temp_c:.0f}°C: at or above the {limit:.0f}°C limit")
        elif gpu.temp_c >= limit - TEMP_MARGIN_C:
            gpu.add(Status.WARNING, f"{gpu.temp_c:.0f}°C: near the {limit:.0f}°C limit")
    pct = gpu.mem_pct
    if pct is not None and pct >= health.gpu_max_mem_pct:
        gpu.add(
            Status.WARNING, f"memory {pct:.0f}% used (gpu_max_mem_pct {health.gpu_max_mem_pct:g})"
        )
    foreign = [(pid, used) for pid, used in gpu.processes if not ours(pid)]
    if foreign:
        names = ", ".join(_describe(pid, used) for pid, used in foreign)
        many = len(foreign) != 1
        gpu.add(Status.WARNING, f"{len(foreign)} process{'es' * many} not ours on it: {names}")


def _temp_limit(gpu: GpuReading, health: HealthSection) -> float:
    # The GPU slows itself down at its slowdown threshold: training there is already degraded.
    return min(limit for limit in (health.gpu_max_temp_c, gpu.slowdown_c, gpu.shutdown_c) if limit)


def _attribute_xids(
    kernel_log: Callable[[], str] | None,
    gpus: list[GpuReading],
    findings: list[Finding],
    *,
    timeout: float,
) -> str:
    """Add each Xid in the kernel log to its GPU (or to the check); say what was scanned."""
    try:
        text = kernel_log() if kernel_log is not None else read_kernel_log(timeout)
    except KernelLogUnavailable as exc:
        return f"Xid scan unavailable: {exc}"
    events = parse_xids(text)
    by_bus = {bus_key(gpu.bus_id): gpu for gpu in gpus if gpu.bus_id}
    # (bus, xid) -> how often; the first event of each stands for the rest.
    counts: dict[tuple[tuple[int, int, int], int], int] = {}
    for event in events:
        counts[(event.bus, event.xid)] = counts.get((event.bus, event.xid), 0) + 1
    for (bus, xid), count in counts.items():
        event = XidEvent(bus, xid)
        times = f" ({count} times)" if count > 1 else ""
        owner = by_bus.get(bus)
        if owner is not None:
            owner.add(event.status, f"Xid {xid}{times}: {event.meaning}")
        else:
            domain, number, device = bus
            where = f"PCI {domain:04x}:{number:02x}:{device:02x}"
            findings.append(Finding(event.status, f"{where}: Xid {xid}{times}: {event.meaning}"))
    return f"kernel log: {len(events)} Xid event{'s' * (len(events) != 1)}"


def _ownership(ws: Workspace) -> Callable[[int], bool]:
    """Whether a pid is ours: our owner token in its environment, or under the daemon."""
    sup = read_supervision(ws)
    tree: set[int] = set()
    if sup.daemon is not None:
        tree = {sup.daemon.pid, *(proc.pid for proc in descendants(sup.daemon.pid))}
    token = sup.token or ""

    def ours(pid: int) -> bool:
        if pid in tree:
            return True
        try:
            return has_owner_mark(psutil.Process(pid), token)
        except psutil.Error:
            return False  # gone, or in another pid namespace: not provably ours

    return ours


def _describe(pid: int, used: int | None) -> str:
    size = f", {used / 2**30:.1f} GiB" if used else ""
    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            who = f"{proc.name()}, {proc.username()}"
    except (psutil.Error, KeyError):  # KeyError: a uid with no user name
        who = "not visible here"
    return f"pid {pid} ({who}{size})"


def _result(health: HealthSection, excluded: set[int], found: Survey) -> CheckResult:
    gpus, findings, scans, details = found.gpus, found.findings, found.scans, found.details
    counted = [gpu for gpu in gpus if gpu.index not in excluded]
    healthy = [gpu for gpu in counted if gpu.status != Status.CRITICAL]
    expected = health.gpus_expected
    lines = [_gpu_line(gpu, excluded) for gpu in gpus]
    for gpu in gpus:
        mark = " (excluded)" if gpu.index in excluded else ""
        lines += [f"{gpu.label}{mark}: {f.text}" for f in _by_severity(gpu.findings)]
    lines += [f.text for f in _by_severity(findings)]
    lines += details
    if not gpus:
        lines += [note for scan in scans for note in scan.notes]
    metrics = _metrics(gpus, health, len(healthy))
    problems = [(f.status, f"{gpu.label}: {f.text}") for gpu in counted for f in gpu.findings] + [
        (f.status, f.text) for f in findings
    ]
    problems = [p for p in problems if p[0] != Status.OK]
    problems.sort(key=lambda p: -_rank(p[0]))
    status = worst(p[0] for p in problems)
    if not gpus and not problems:
        if expected == 0:
            return CheckResult(NAME, Status.OK, "no GPU expected, none found", lines, None, metrics)
        reasons = "; ".join(note for scan in scans for note in scan.notes)
        return CheckResult(
            NAME,
            Status.CRITICAL,
            f"no GPU found, {expected} expected ({reasons})",
            lines,
            None,
            metrics,
        )
    if len(healthy) < expected:
        status = Status.CRITICAL
        head = f"only {len(healthy)} of {expected} expected GPUs healthy"
        summary = f"{head}: {problems[0][1]}" if problems else head
    elif problems:
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        summary = f"{problems[0][1]}{more}"
        if gpus:
            summary += f"; {len(healthy)} of {len(counted)} GPUs healthy"
    else:
        brief = ", ".join(_brief(gpu) for gpu in counted)
        summary = f"{len(healthy)} of {len(counted)} GPUs healthy: {brief}"
    if excluded & {gpu.index for gpu in gpus}:
        summary += f" ({len(gpus) - len(counted)} excluded)"
    return CheckResult(NAME, status, summary, lines, None, metrics)


def _gpu_line(gpu: GpuReading, excluded: set[int]) -> str:
    parts = [gpu.label, gpu.vendor]
    if gpu.name:
        parts.append(gpu.name)
    if gpu.bus_id:
        parts.append(f"[{gpu.bus_id}]")
    head = " ".join(parts) + (" (excluded)" if gpu.index in excluded else "")
    facts = []
    if gpu.temp_c is not None:
        limits = [f"slowdown {gpu.slowdown_c:.0f}°C"] if gpu.slowdown_c else []
        limits += [f"shutdown {gpu.shutdown_c:.0f}°C"] if gpu.shutdown_c else []
        facts.append(f"{gpu.temp_c:.0f}°C" + (f" ({', '.join(limits)})" if limits else ""))
    if gpu.mem_pct is not None and gpu.mem_total:
        facts.append(f"memory {gpu.mem_pct:.0f}% of {gpu.mem_total / 2**30:.0f} GiB")
    facts.append(f"{len(gpu.processes)} process{'es' * (len(gpu.processes) != 1)}")
    if gpu.unavailable:
        facts.append(f"N/A: {', '.join(gpu.unavailable)}")
    status = gpu.status.name if gpu.findings else "OK"
    return f"{head}: {status}; {'; '.join(facts)}"


def _brief(gpu: GpuReading) -> str:
    parts = [gpu.label]
    if gpu.temp_c is not None:
        parts.append(f"{gpu.temp_c:.0f}°C")
    if gpu.mem_pct is not None:
        parts.append(f"{gpu.mem_pct:.0f}% mem")
    return " ".join(parts)


def _metrics(gpus: list[GpuReading], health: HealthSection, healthy: int) -> list[Metric]:
    metrics = []
    for gpu in gpus:
        label = gpu.label.lower()
        if gpu.temp_c is not None:
            limit = _temp_limit(gpu, health)
            metrics.append(
                Metric("temp_c", gpu.temp_c, "", limit - TEMP_MARGIN_C, limit, label=label)
            )
        if gpu.mem_pct is not None:
            metrics.append(
                Metric(
                    "mem_used_pct",
                    round(gpu.mem_pct, 2),
                    "%",
                    health.gpu_max_mem_pct,
                    None,
                    label=label,
                )
            )
    metrics.append(Metric("gpus_healthy", healthy))
    return metrics


def _by_severity(findings: list[Finding]) -> list[Finding]:
    return sorted(findings, key=lambda f: -_rank(f.status))


def _rank(status: Status) -> int:
    return {Status.OK: 0, Status.WARNING: 1, Status.UNKNOWN: 2, Status.CRITICAL: 3}[status]
