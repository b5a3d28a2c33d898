"""What a run does with each phase, and in which order: pure, no I/O.

A phase runs when it is wanted (not completed; or named with `--phase`) and everything it
depends on is completed. A phase whose dependency failed in this run is blocked: it stays
pending and runs on the resume after the fix.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from phase_pipeline.pipeline_file import Pipeline
from phase_pipeline.state_file import PhaseStatus
from trainguard.errors import UsageError

Action = Literal["run", "skip"]


@dataclass(frozen=True)
class Step:
    phase: str
    action: Action
    why: str


def statuses_for(pipeline: Pipeline, recorded: Mapping[str, PhaseStatus]) -> dict[str, PhaseStatus]:
    """Every phase of the pipeline, in its order: as recorded, else pending (a new phase)."""
    return {name: recorded.get(name, "pending") for name in pipeline.names}


def with_checkpoint(
    pipeline: Pipeline, statuses: Mapping[str, PhaseStatus]
) -> dict[str, PhaseStatus]:
    """`--checkpoint PATH`: the phases that provide a checkpoint count as completed."""
    return {
        name: "completed" if pipeline.phase(name).provides_checkpoint else status
        for name, status in statuses.items()
    }


def wanted(
    pipeline: Pipeline, statuses: Mapping[str, PhaseStatus], only: Sequence[str]
) -> list[str]:
    """The phases this run should run, in order. With `only` (`--phase`): those, whatever
    their status, and each one's dependencies must be completed or named too."""
    if not only:
        return [name for name in pipeline.names if statuses[name] != "completed"]
    unknown = [name for name in only if name not in statuses]
    if unknown:
        raise UsageError(
            f"--phase {unknown[0]}: no such phase (phases: {', '.join(pipeline.names)})"
        )
    for name in only:
        for need in pipeline.phase(name).depends_on:
            if statuses[need] != "completed" and need not in only:
                raise UsageError(
                    f"--phase {name}: it depends on {need}, which is {statuses[need]}: run "
                    f"{need} first (or name it too: --phase {need} --phase {name})"
                )
    return [name for name in pipeline.names if name in only]


def next_phase(
    pipeline: Pipeline,
    statuses: Mapping[str, PhaseStatus],
    want: Collection[str],
    tried: Collection[str],
) -> str | None:
    """The first wanted phase not tried in this run whose dependencies are all completed."""
    for phase in pipeline.phases:
        if phase.name not in want or phase.name in tried:
            continue
        if all(statuses[need] == "completed" for need in phase.depends_on):
            return phase.name
    return None


def blocked_by(pipeline: Pipeline, statuses: Mapping[str, PhaseStatus], name: str) -> str | None:
    """The phase that keeps `name` from running (a dependency not completed), if any."""
    for need in pipeline.phase(name).depends_on:
        if statuses[need] != "completed":
            return blocked_by(pipeline, statuses, need) or need
    return None


def plan(
    pipeline: Pipeline, statuses: Mapping[str, PhaseStatus], only: Sequence[str] = ()
) -> list[Step]:
    """Each phase, whether this run would run it, and why (`--dry-run`, the recovery block)."""
    want = set(wanted(pipeline, statuses, only))
    steps = []
    for name in pipeline.names:
        status = statuses[name]
        if name not in want:
            why = "completed" if status == "completed" else f"{status}; not named with --phase"
            steps.append(Step(name, "skip", why))
        elif only and status == "completed":
            steps.append(Step(name, "run", "completed; named with --phase: run again"))
        else:
            steps.append(Step(name, "run", _why_run(status)))
    return steps


def _why_run(status: PhaseStatus) -> str:
    return {
        "pending": "pending",
        "in_progress": "in_progress: did not finish (its runner stopped); run again",
        "failed": "failed: run again",
        "completed": "completed",
    }[status]
