"""The blocks a run prints when it stops short: what failed, the exact command that resumes,
and what that resume will skip and re-run (Kedro prints the command; we also say the plan)."""

from __future__ import annotations

import os
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from crash_detector.rules import bundled_catalog
from phase_pipeline.plan import Step

RULE = "=" * 72


@dataclass(frozen=True)
class PhaseFailure:
    phase: str
    error: str  # one line
    category: str | None
    log_file: Path | None


def shown(path: Path) -> str:
    """`path` as the user would type it here: relative below the current folder."""
    try:
        here = Path.cwd()
    except OSError:
        return str(path)
    return os.path.relpath(path, here) if path.is_relative_to(here) else str(path)


def resume_command(pipeline_file: Path, state_file: Path, config: Path | None) -> str:
    words = ["phase-pipeline", "run", shown(pipeline_file), "--resume", shown(state_file)]
    if config is not None:
        words += ["-c", shown(config)]
    return shlex.join(words)


def plan_lines(steps: Sequence[Step]) -> list[str]:
    width = max((len(step.phase) for step in steps), default=0)
    verbs = {"run": "run", "skip": "skip"}
    return [f"  {verbs[step.action]:<5} {step.phase:<{width}}  ({step.why})" for step in steps]


def failure_block(
    failures: Sequence[PhaseFailure],
    blocked: Sequence[tuple[str, str]],  # (phase, the failed phase it waits for)
    *,
    state_file: Path,
    command: str,
    resume_plan: Sequence[Step],
) -> str:
    lines = [RULE, "FAILURE RECOVERY INSTRUCTIONS", RULE]
    for failure in failures:
        kind = f" [{failure.category}]" if failure.category else ""
        lines.append(f"Phase {failure.phase} failed{kind}: {failure.error}")
        if failure.log_file is not None:
            lines.append(f"  its output: {shown(failure.log_file)}")
        suggestion = suggestion_for(failure.category)
        if suggestion:
            lines.append(f"  what to do: {suggestion}")
    for phase, waits_for in blocked:
        lines.append(f"Phase {phase} did not run: it depends on {waits_for}.")
    lines += [
        f"State: {shown(state_file)} (completed phases are kept)",
        "",
        "Fix the cause, then resume with:",
        f"  {command}",
        "",
        "That resume will:",
        *plan_lines(resume_plan),
        "",
        "To run a completed phase again:  "
        f"phase-pipeline mark {shlex.quote(shown(state_file))} PHASE pending",
        "To skip a failed phase:          "
        f"phase-pipeline mark {shlex.quote(shown(state_file))} PHASE completed",
        RULE,
    ]
    return "\n".join(lines)


def stopped_block(why: str, *, state_file: Path, command: str, resume_plan: Sequence[Step]) -> str:
    """After a refusal (preflight) or an interruption: no phase failed, the run is resumable."""
    return "\n".join([
        RULE,
        why,
        f"State: {shown(state_file)} (completed phases are kept)",
        "Resume with:",
        f"  {command}",
        "That resume will:",
        *plan_lines(resume_plan),
        RULE,
    ])  # fmt: skip


# Categories the runner itself decides, with advice of its own.
OWN_SUGGESTIONS = {
    "timeout": "it ran past its `timeout` in PIPELINE.toml: read the end of its output for "
    "where it stopped moving; if it was only slow, raise the phase's timeout",
    "missing_outputs": "it exited 0 without leaving what `outputs` / `provides_checkpoint` "
    "declare: check where it writes (they are relative to the run dir)",
}


def suggestion_for(category: str | None) -> str | None:
    """Advice for a category: the runner's own, else the crash detector's first rule's."""
    if not category:
        return None
    if category in OWN_SUGGESTIONS:
        return OWN_SUGGESTIONS[category]
    for rule in bundled_catalog().rules:
        if rule.category == category:
            return rule.suggestion
    return None
