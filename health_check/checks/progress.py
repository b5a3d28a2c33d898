"""Training progress: while a daemon runs, progress.json must move within progress_timeout,
or within the threshold the live watchdog learned for the current phase (#20)."""

from __future__ import annotations

import os
from pathlib import Path

from health_check.context import Context
from health_check.result import CheckResult, Fix, FixError, Metric, Status
from health_check.supervision import Supervision, read_supervision
from trainguard.progress import ProgressError, read_progress
from trainguard.timestamps import parse_iso_utc, utc_now_iso
from trainguard.watchdog_status import WatchdogStatus

DONE_PHASE = "done"


def probe(ctx: Context) -> CheckResult:
    ws = ctx.ws
    w = ws.config.watchdog
    sup = read_supervision(ws)
    path = ws.progress_file
    training = sup.daemon is not None
    try:
        progress = read_progress(path)
        mtime = os.stat(path).st_mtime if progress is not None else None
    except ProgressError as exc:
        if training:
            return CheckResult(
                "progress", Status.CRITICAL, f"{path.name} is not valid progress: {exc}"
            )
        # Nothing writes it now: the next start overwrites it. Not an emergency, and a way
        # out: --fix moves it aside.
        return CheckResult(
            "progress",
            Status.WARNING,
            f"{path.name} is not valid progress and no daemon runs: {exc}",
            fix=_set_aside_fix(ctx, path),
        )
    except OSError as exc:
        return CheckResult("progress", Status.UNKNOWN, f"cannot read {path}: {exc.strerror or exc}")
    if progress is not None and progress.updated_at is not None:
        mtime = progress.updated_at.timestamp()  # the trainer's own clock; mtime only without
    if progress is None or mtime is None:
        if not training:
            return CheckResult("progress", Status.OK, "no progress yet; no daemon running")
        return _no_progress_yet(ctx, sup.state)
    age = max(0.0, ctx.wall_clock() - mtime)
    total = f"/{progress.total_steps}" if progress.total_steps else ""
    where = f"step {progress.step}{total}, phase {progress.phase}"
    metrics = [Metric("progress_step", progress.step), Metric("progress_age_s", round(age, 1), "s")]
    if progress.phase == DONE_PHASE:
        return CheckResult("progress", Status.OK, f"finished: {where}", metrics=metrics)
    if not training:
        return CheckResult(
            "progress", Status.OK, f"not training; last {where}, {age:.0f} s ago", metrics=metrics
        )
    timeout = w.phase_timeouts.get(progress.phase, w.progress_timeout)
    basis = "timeout"
    learned = _learned_threshold(sup, progress.phase)
    if learned is not None and timeout != 0:
        timeout, basis = learned, "learned threshold"
    if timeout == 0:
        return CheckResult(
            "progress",
            Status.OK,
            f"{where}, {age:.0f} s ago (no timeout in this phase)",
            metrics=metrics,
        )
    metrics[-1] = Metric("progress_age_s", round(age, 1), "s", timeout / 2, timeout)
    if age > timeout:
        return CheckResult(
            "progress",
            Status.CRITICAL,
            f"no progress for {age:.0f} s at {where} ({basis} {timeout:g} s): hung?",
            metrics=metrics,
        )
    if age > timeout / 2:
        return CheckResult(
            "progress",
            Status.WARNING,
            f"slow: {age:.0f} s since the last step at {where} ({basis} {timeout:g} s)",
            metrics=metrics,
        )
    return CheckResult("progress", Status.OK, f"{where}, {age:.0f} s ago", metrics=metrics)


def _learned_threshold(sup: Supervision, phase: str) -> float | None:
    """The hang threshold a live watchdog learned for `phase`, which it acts on; None when it
    has none (learning off or warming up, another phase, no live watchdog)."""
    limit = sup.state.hang_threshold if sup.state is not None else None
    if sup.watchdog is None or limit is None or not limit.learned or limit.phase != phase:
        return None
    return limit.seconds


def _no_progress_yet(ctx: Context, state: WatchdogStatus | None) -> CheckResult:
    grace = ctx.ws.config.watchdog.startup_grace
    at = parse_iso_utc(state.daemon_started_at if state else None)
    since = ctx.wall_clock() - at.timestamp() if at is not None else None
    if since is not None and since <= grace:
        return CheckResult("progress", Status.OK, f"starting: no progress yet ({since:.0f} s in)")
    return CheckResult(
        "progress",
        Status.WARNING,
        f"daemon runs but has written no progress (startup_grace {grace:g} s)",
    )


def _set_aside_fix(ctx: Context, path: Path) -> Fix:
    def apply() -> str:
        if read_supervision(ctx.ws).daemon is not None:
            raise FixError("a daemon runs now: it writes the progress file; left alone")
        aside = path.with_name(f"{path.name}.broken-{utc_now_iso('seconds').replace(':', '')}")
        os.replace(path, aside)
        return f"moved the broken {path.name} aside to {aside.name}"

    return Fix(f"move the broken {path.name} aside (the next start writes a new one)", apply)
