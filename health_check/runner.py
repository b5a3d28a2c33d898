"""Run checks concurrently, each with its own deadline, and apply their fixes.

A probe can hang for good (a stuck NFS mount, a wedged GPU driver): each runs in a daemon
thread, and a check that misses its deadline is reported UNKNOWN while its thread is left
behind. The run as a whole therefore ends about one timeout after it started.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from importlib import import_module

from health_check.context import Context
from health_check.result import CheckResult, Fix, FixOutcome, Status
from trainguard.checkpoints import Cancelled

Probe = Callable[[Context], CheckResult]

# name -> module in health_check.checks with a `probe(ctx) -> CheckResult`; imported on use,
# so that `--only disk_space` loads no GPU library.
MODULES = {
    "directories": "directories",
    "required_files": "required_files",
    "config": "job_config",
    "disk_space": "disk",
    "memory": "memory",
    "gpu": "gpu",
    "daemon": "daemon",
    "progress": "progress",
    "checkpoints": "checkpoints",
    "orphans": "orphans",
    "ssh": "ssh",
    "inputs": "inputs",
    "ramdisk": "ramdisk",
}


def load_probe(name: str) -> Probe:
    module = import_module(f"health_check.checks.{MODULES[name]}")
    probe: Probe = module.probe
    return probe


def _guarded(name: str, probe: Probe, ctx: Context) -> CheckResult:
    try:
        result = probe(ctx)
    except Exception as exc:  # a probe bug or an odd system must not sink the whole run
        detail = str(exc).splitlines()[0] if str(exc) else ""
        return CheckResult(
            name, Status.UNKNOWN, f"probe failed: {type(exc).__name__}: {detail}".rstrip(": ")
        )
    result.name = name
    return result


STOP_GRACE_S = 10.0  # how long a fix told to stop may take to reach its next step


def run_in_threads(
    jobs: Sequence[tuple[str, Callable[[], CheckResult], float]],
) -> dict[str, CheckResult | None]:
    """Run `(name, job, timeout)` jobs at once; None for each that missed its deadline."""
    done: queue.SimpleQueue[tuple[str, CheckResult, float]] = queue.SimpleQueue()
    started = time.monotonic()
    deadlines = {name: started + timeout for name, _, timeout in jobs}

    def work(name: str, job: Callable[[], CheckResult]) -> None:
        t0 = time.monotonic()
        result = job()
        done.put((name, result, time.monotonic() - t0))

    for name, job, _ in jobs:
        threading.Thread(target=work, args=(name, job), name=f"check-{name}", daemon=True).start()
    results: dict[str, CheckResult | None] = dict.fromkeys(deadlines)
    pending = set(deadlines)
    while pending:
        wait = min(deadlines[name] for name in pending) - time.monotonic()
        if wait <= 0:
            pending -= {name for name in pending if deadlines[name] <= time.monotonic()}
            continue
        try:
            name, result, took = done.get(timeout=wait)
        except queue.Empty:
            continue
        if name in pending:
            result.duration_s = round(took, 4)
            results[name] = result
            pending.discard(name)
    return results


def timeout_of(ctx: Context, name: str) -> float:
    health = ctx.ws.config.health
    timeout = health.check_timeouts.get(name, health.check_timeout)
    if name == "ssh":
        # The ssh probe kills its own clients after ssh_timeout + 1 s: let it say which failed.
        timeout = max(timeout, health.ssh_timeout + 2)
    return timeout


def run_checks(ctx: Context, names: Sequence[str]) -> list[CheckResult]:
    """Every named check, concurrently; the result list is in the order of `names`."""
    timeouts = {name: timeout_of(ctx, name) for name in names}
    probes = {name: load_probe(name) for name in names}
    jobs = [(name, _bind(name, probes[name], ctx), timeouts[name]) for name in names]
    results = run_in_threads(jobs)
    return [
        results[name]
        or CheckResult(
            name,
            Status.UNKNOWN,
            f"no answer within {timeouts[name]:g} s (a hung probe: stuck filesystem or driver?)",
            duration_s=timeouts[name],
        )
        for name in names
    ]


def _bind(name: str, probe: Probe, ctx: Context) -> Callable[[], CheckResult]:
    return lambda: _guarded(name, probe, ctx)


def apply_fixes(
    ctx: Context,
    results: list[CheckResult],
    *,
    dry_run: bool,
    log: Callable[[str], None],
) -> list[CheckResult]:
    """Apply (or, with `dry_run`, only describe) each proposed fix, one at a time, in check
    order; then check again what was fixed, so the report shows the state after the repair."""
    applied_keys: set[str] = set()
    fixed: list[str] = []
    outcomes: dict[str, FixOutcome] = {}
    for result in results:
        fix = result.fix
        if fix is None:
            continue
        if dry_run:
            outcomes[result.name] = FixOutcome(fix.action, False, f"would {fix.action}")
            continue
        if fix.key and fix.key in applied_keys:
            outcomes[result.name] = FixOutcome(fix.action, True, "done by an earlier fix")
            fixed.append(result.name)
            continue
        timeout = timeout_of(ctx, result.name)
        outcome = _apply_one(result.name, fix, timeout)
        outcomes[result.name] = outcome
        log(f"fix {result.name}: {outcome.message}" + ("" if outcome.applied else " (failed)"))
        if outcome.applied:
            applied_keys.add(fix.key)
            fixed.append(result.name)
    again = dict(zip(fixed, run_checks(ctx, fixed), strict=True)) if fixed else {}
    final = []
    for result in results:
        current = again.get(result.name, result)
        current.fix_outcome = outcomes.get(result.name)
        final.append(current)
    return final


def _apply_one(name: str, fix: Fix, timeout: float) -> FixOutcome:
    messages: list[str] = []
    applied: list[bool] = []
    finished = threading.Event()
    action = fix.action

    def job() -> CheckResult:
        try:
            messages.append(fix.apply())
            applied.append(True)
            return CheckResult(name, Status.OK, "")
        except Cancelled:
            messages.append(f"stopped at its {timeout:g} s deadline, part done; run --fix again")
            return CheckResult(name, Status.CRITICAL, "")
        except Exception as exc:  # OSError, FixError: report, never crash the run
            messages.append(f"could not {action}: {exc}")
            return CheckResult(name, Status.CRITICAL, "")
        finally:
            finished.set()

    result = run_in_threads([(name, job, timeout)])[name]
    if result is None and fix.stop is not None:
        # Past its deadline: tell it to stop, and wait for it to reach its next step.
        fix.stop.set()
        if finished.wait(STOP_GRACE_S):  # stopped, or it finished just then after all
            return FixOutcome(action, bool(applied), messages[0])
    if result is None:
        return FixOutcome(action, False, f"could not {action}: no answer within {timeout:g} s")
    return FixOutcome(action, result.status == Status.OK, messages[0])
