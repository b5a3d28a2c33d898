"""Human and JSON renderings of the list, the plan, each result and the summary."""

from __future__ import annotations

import json
from collections.abc import Sequence

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from edge_cases.scenario import Result, Scenario

STYLES = {"pass": "green", "fail": "bold red", "skip": "yellow"}


def list_text(console: Console, scenarios: Sequence[Scenario]) -> None:
    width = max(len(s.name) for s in scenarios)
    for scenario in scenarios:
        console.print(f"{scenario.name:<{width}}  {escape(scenario.summary)}", highlight=False)


def list_json(scenarios: Sequence[Scenario]) -> str:
    return json.dumps(
        {"scenarios": [{"name": s.name, "summary": s.summary} for s in scenarios]}, indent=2
    )


def plan_text(console: Console, scenarios: Sequence[Scenario]) -> None:
    console.print(
        f"[bold]dry run[/]: {len(scenarios)} scenario(s); each would run in its own throwaway "
        "workspace under the temp folder. Nothing was started or written.",
        highlight=False,
    )
    for scenario in scenarios:
        console.print(f"\n[bold]{scenario.name}[/] (deadline {scenario.deadline:.0f} s)")
        console.print(f"  fault:    {escape(scenario.fault)}", highlight=False)
        console.print(f"  expected: {escape(scenario.expected)}", highlight=False)
        if scenario.requires:
            console.print(f"  needs:    {escape(scenario.requires)}", highlight=False)


def plan_json(scenarios: Sequence[Scenario]) -> str:
    plan = [
        {
            "name": s.name,
            "summary": s.summary,
            "fault": s.fault,
            "expected": s.expected,
            "deadline_s": s.deadline,
            "requires": s.requires or None,
        }
        for s in scenarios
    ]
    return json.dumps({"dry_run": True, "plan": plan}, indent=2)


def progress_line(console: Console, result: Result, width: int) -> None:
    style = STYLES[result.status]
    line = (
        f"[{style}]{result.status.upper():<4}[/] {result.name:<{width}} "
        f"{result.duration_s:5.1f} s  {escape(result.detail)}"
    )
    if result.workspace:
        line += f"  [dim](kept: {escape(result.workspace)})[/]"
    console.print(line, highlight=False)


def summary_text(console: Console, results: Sequence[Result], wall_s: float) -> None:
    table = Table(title="edge-cases summary", show_lines=False)
    table.add_column("scenario")
    table.add_column("status")
    table.add_column("time", justify="right")
    table.add_column("detail", overflow="fold")
    for result in results:
        style = STYLES[result.status]
        table.add_row(
            result.name,
            f"[{style}]{result.status}[/]",
            f"{result.duration_s:.1f} s",
            escape(result.detail),
        )
    console.print(table)
    counts = {status: sum(r.status == status for r in results) for status in STYLES}
    console.print(
        f"{counts['pass']} passed, {counts['fail']} failed, {counts['skip']} skipped "
        f"in {wall_s:.1f} s",
        style="bold red" if counts["fail"] else "bold green",
        highlight=False,
    )


def results_json(results: Sequence[Result]) -> str:
    return json.dumps(
        {
            "results": [r.to_json() for r in results],
            "passed": sum(r.status == "pass" for r in results),
            "failed": sum(r.status == "fail" for r in results),
            "skipped": sum(r.status == "skip" for r in results),
        },
        indent=2,
    )
