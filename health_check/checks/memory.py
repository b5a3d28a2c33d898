"""Available RAM and swap use: a host OOM kill ends a run with nothing in its log."""

from __future__ import annotations

import psutil

from health_check.context import Context
from health_check.result import CheckResult, Metric, Status

GB = 1e9


def probe(ctx: Context) -> CheckResult:
    health = ctx.ws.config.health
    vm = psutil.virtual_memory()
    swap = psutil.swap_memory()
    available = vm.available / GB
    metrics = [
        Metric("mem_available_gb", round(available, 2), "GB", None, health.mem_min_available_gb),
        Metric("swap_used_pct", round(swap.percent, 1), "%", health.swap_max_used_pct, None),
    ]
    text = f"{available:.1f} of {vm.total / GB:.1f} GB available"
    swap_text = (
        f"swap {swap.percent:.0f}% used of {swap.total / GB:.1f} GB" if swap.total else "no swap"
    )
    details = [text, swap_text]
    if available < health.mem_min_available_gb:
        return CheckResult(
            "memory",
            Status.CRITICAL,
            f"{text} (< {health.mem_min_available_gb:g} GB)",
            details,
            metrics=metrics,
        )
    if swap.total and swap.percent > health.swap_max_used_pct:
        return CheckResult(
            "memory",
            Status.WARNING,
            f"{swap_text} (> {health.swap_max_used_pct:g}%): the host is short of RAM",
            details,
            metrics=metrics,
        )
    return CheckResult("memory", Status.OK, f"{text}; {swap_text}", details, metrics=metrics)
