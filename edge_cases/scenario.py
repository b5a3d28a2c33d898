"""What a scenario is, how it ends, and the two ways a scenario stops early (fail, skip)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from edge_cases.sandbox import Sandbox

Status = Literal["pass", "fail", "skip"]


class ScenarioFailed(Exception):
    """The guarded behaviour was not seen: the message says what was expected and what was."""


class ScenarioSkipped(Exception):
    """The scenario cannot run here (no GPU, not root): the message is the reason."""


class Cancelled(Exception):
    """The run was interrupted (Ctrl+C, SIGTERM): stop waiting and clean up."""


@dataclass(frozen=True)
class Scenario:
    """One real fault against a throwaway workspace, and the outcome that proves recovery.

    `run` drives the sandbox and returns a one-line detail on success. `sabotage` is test-only:
    `TRAINGUARD_<SECTION>__<KEY>` overrides that switch off the mechanism the scenario guards,
    so a test can show the scenario then fails (with `sabotage_deadline`, it fails quickly).
    """

    name: str
    summary: str
    fault: str
    expected: str
    deadline: float
    run: Callable[[Sandbox], str]
    sabotage: Mapping[str, str] = field(default_factory=dict)
    sabotage_deadline: float | None = None
    requires: str = ""  # what the host needs, said in the plan (e.g. "root", "an NVIDIA GPU")


@dataclass(frozen=True)
class Result:
    name: str
    status: Status
    duration_s: float
    detail: str
    workspace: str | None = None  # kept with --keep, for inspection

    def to_json(self) -> dict[str, object]:
        data: dict[str, object] = {
            "name": self.name,
            "status": self.status,
            "duration_s": round(self.duration_s, 2),
            "detail": self.detail,
        }
        if self.workspace is not None:
            data["workspace"] = self.workspace
        return data


def expect(condition: object, message: str) -> None:
    """Fail the scenario with `message` unless `condition` holds."""
    if not condition:
        raise ScenarioFailed(message)
