"""Every command's `--help` explains each subcommand and option and lists the exit codes."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator

import pytest

from crash_detector.cli import build_parser as crash_detector
from daemon_watchdog.cli import build_parser as daemon_watchdog
from edge_cases.cli import build_parser as edge_cases
from health_check.cli import build_parser as health_check
from phase_pipeline.cli import build_parser as phase_pipeline
from study_runner.cli import build_parser as study_runner
from task_queue.cli import build_parser as task_queue

PARSERS: dict[str, Callable[[], argparse.ArgumentParser]] = {
    "daemon-watchdog": daemon_watchdog,
    "crash-detector": crash_detector,
    "health-check": health_check,
    "edge-cases": edge_cases,
    "task-queue": task_queue,
    "study-runner": study_runner,
    "phase-pipeline": phase_pipeline,
}


def _walk(parser: argparse.ArgumentParser) -> Iterator[tuple[str, argparse.Action]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helped = {choice.dest for choice in action._choices_actions if choice.help}
            for name, sub in action.choices.items():
                yield (
                    f"{parser.prog} {name} (subcommand)",
                    argparse.Action([name], name, help="x" if name in helped else None),
                )
                yield from _walk(sub)
        elif not isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            yield f"{parser.prog} {'/'.join(action.option_strings) or action.dest}", action


@pytest.mark.parametrize("tool", sorted(PARSERS))
def test_every_subcommand_and_option_has_help_and_exit_codes_are_listed(tool: str) -> None:
    parser = PARSERS[tool]()
    missing = [
        where
        for where, action in _walk(parser)
        if (not action.help and action.help != argparse.SUPPRESS and action.option_strings)
        or (where.endswith("(subcommand)") and not action.help)
    ]
    assert missing == []
    assert "exit codes:" in parser.format_help()
