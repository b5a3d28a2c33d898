"""Renderers of one run's results: human table, contract JSON, Nagios line, Prometheus textfile."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from health_check.result import CheckResult, Metric, Status, worst

PROMETHEUS_PREFIX = "trainguard_health"


def overall(results: Sequence[CheckResult]) -> Status:
    return worst(r.status for r in results)


def fix_json(result: CheckResult) -> dict[str, Any] | None:
    if result.fix_outcome is not None:
        return {
            "action": result.fix_outcome.action,
            "applied": result.fix_outcome.applied,
            "message": result.fix_outcome.message,
        }
    if result.fix is not None:
        return {"action": result.fix.action, "applied": False, "message": None}
    return None


def to_json(results: Sequence[CheckResult]) -> dict[str, Any]:
    return {
        "status": overall(results).name,
        "checks": [
            {
                "name": r.name,
                "status": r.status.name,
                "summary": r.summary,
                "duration_s": r.duration_s,
                "fix": fix_json(r),
                "details": r.details,
                "metrics": [_metric_json(m) for m in r.metrics],
            }
            for r in results
        ],
    }


def _metric_json(metric: Metric) -> dict[str, Any]:
    return {
        "name": metric.name,
        "value": metric.value,
        "unit": metric.unit,
        "label": metric.label,
        "warn": metric.warn,
        "crit": metric.crit,
    }


# --- Nagios ---------------------------------------------------------------------------------

_UNITS = {"s", "%", "B", "KB", "MB", "GB", "TB", "c"}  # the plugin guidelines' UOMs


def nagios_line(results: Sequence[CheckResult]) -> str:
    """`HEALTH WARNING - check: summary; ... | 'label'=value[UOM];warn;crit ...` (one line)."""
    status = overall(results)
    bad = [r for r in results if r.status != Status.OK]
    if bad:
        text = "; ".join(f"{r.name}: {r.summary}" for r in bad)
    else:
        text = f"all {len(results)} checks OK"
    perf = " ".join(_perfdata(r.name, m) for r in results for m in r.metrics)
    line = f"HEALTH {status.name} - {text}".replace("|", "/").replace("\n", " ")
    return f"{line} | {perf}" if perf else line


def _perfdata(check: str, metric: Metric) -> str:
    label = metric.name if not metric.label else f"{metric.name}[{metric.label}]"
    label = label.replace("'", "").replace("=", "_")
    unit = metric.unit if metric.unit in _UNITS else ""
    warn = "" if metric.warn is None else f"{metric.warn:g}"
    crit = "" if metric.crit is None else f"{metric.crit:g}"
    return f"'{label}'={metric.value:g}{unit};{warn};{crit}"


# --- human ----------------------------------------------------------------------------------

_STYLE = {
    Status.OK: "green",
    Status.WARNING: "yellow",
    Status.CRITICAL: "bold red",
    Status.UNKNOWN: "magenta",
}


def print_human(results: Sequence[CheckResult], *, verbose: bool = False) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False, soft_wrap=False)
    table = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
    # Names and statuses never wrap; summary and fix share the rest, wrapped between words
    # (a word longer than its column, a long path, is the only thing folded).
    table.add_column("check", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("summary", ratio=3, overflow="fold")
    table.add_column("fix", ratio=2, overflow="fold")
    for r in results:
        fix = ""
        if r.fix_outcome is not None:
            mark = "done" if r.fix_outcome.applied else "not applied"
            fix = f"{r.fix_outcome.message} ({mark})"
        elif r.fix is not None:
            fix = f"--fix would {r.fix.action}"
        table.add_row(r.name, f"[{_STYLE[r.status]}]{r.status.name}[/]", r.summary, fix)
    console.print(table)
    if verbose:  # each detail on its own line, the whole width: paths stay whole
        for r in results:
            if r.details:
                console.print(f"{r.name}:", soft_wrap=True)
            for line in r.details:
                console.print(f"  {line}", soft_wrap=True, markup=False)
    status = overall(results)
    console.print(f"overall: [{_STYLE[status]}]{status.name}[/]")


# --- Prometheus textfile --------------------------------------------------------------------


def write_prometheus(results: Sequence[CheckResult], path: Path, *, now: float) -> None:
    """node_exporter textfile collector format, written atomically (temp file + rename)."""
    from prometheus_client import CollectorRegistry, Gauge, write_to_textfile

    registry = CollectorRegistry()
    status = Gauge(
        f"{PROMETHEUS_PREFIX}_check_status",
        "Check status: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN",
        ["check"],
        registry=registry,
    )
    duration = Gauge(
        f"{PROMETHEUS_PREFIX}_check_duration_seconds",
        "Time the check took",
        ["check"],
        registry=registry,
    )
    gauges: dict[str, Gauge] = {}
    for r in results:
        status.labels(r.name).set(int(r.status))
        duration.labels(r.name).set(r.duration_s)
        for m in r.metrics:
            name = f"{PROMETHEUS_PREFIX}_{_prom_name(m.name)}"
            if name not in gauges:
                unit = f" ({m.unit})" if m.unit else ""
                gauges[name] = Gauge(
                    name, f"{m.name}{unit}", ["check", "target"], registry=registry
                )
            gauges[name].labels(r.name, m.label).set(m.value)
    Gauge(
        f"{PROMETHEUS_PREFIX}_status",
        "Worst check status: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN",
        registry=registry,
    ).set(int(overall(results)))
    Gauge(
        f"{PROMETHEUS_PREFIX}_last_run_timestamp_seconds",
        "When health-check last ran",
        registry=registry,
    ).set(now)
    write_to_textfile(str(path), registry)


def _prom_name(name: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)
