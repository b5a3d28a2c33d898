"""Run scenarios side by side, each in its own sandbox against its own deadline.

Scenarios mostly wait (for a restart, a timeout, a backoff), so a few run at once. Whatever
ends a scenario (pass, fail, an unexpected exception, Ctrl+C), its sandbox is cleaned up: every
process it started is killed and its folder removed (kept with `keep`).
"""

from __future__ import annotations

import contextlib
import fnmatch
import signal
import threading
import time
import traceback
from collections.abc import Callable, Collection, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

from edge_cases.deadline import Deadline
from edge_cases.sandbox import Sandbox
from edge_cases.scenario import (
    Cancelled,
    Result,
    Scenario,
    ScenarioFailed,
    ScenarioSkipped,
    Status,
)
from edge_cases.scenarios import ALL
from trainguard.errors import UsageError

DEFAULT_JOBS = 4
CLEANUP_GRACE = 20.0  # after Ctrl+C: how long scenarios get to clean up their own sandboxes


def select(patterns: Sequence[str], scenarios: Sequence[Scenario] = ALL) -> list[Scenario]:
    """The scenarios whose names match any of `patterns` (globs), in suite order; all if none."""
    if not patterns:
        return list(scenarios)
    unmatched = [p for p in patterns if not any(fnmatch.fnmatchcase(s.name, p) for s in scenarios)]
    if unmatched:
        raise UsageError(
            f"no scenario matches {', '.join(repr(p) for p in unmatched)} (see --list)"
        )
    return [s for s in scenarios if any(fnmatch.fnmatchcase(s.name, p) for p in patterns)]


class _Live:
    """Sandboxes in use, so that an interrupted run can clean up those whose thread is stuck."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sandboxes: set[Sandbox] = set()

    def add(self, sandbox: Sandbox) -> None:
        with self._lock:
            self._sandboxes.add(sandbox)

    def discard(self, sandbox: Sandbox) -> None:
        with self._lock:
            self._sandboxes.discard(sandbox)

    def snapshot(self) -> list[Sandbox]:
        with self._lock:
            return list(self._sandboxes)


@contextlib.contextmanager
def _uninterruptible() -> Iterator[None]:
    """Ignore further Ctrl+C / SIGTERM while cleaning up: a second one must not leave orphans.

    The cleanup is bounded (CLEANUP_GRACE, then SIGKILL), so this cannot hang the terminal.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_one(
    scenario: Scenario,
    *,
    keep: bool,
    sabotaged: bool,
    cancel: threading.Event,
    live: _Live | None = None,
) -> Result:
    """Run one scenario in a fresh sandbox; never raises, always cleans up."""
    started = time.monotonic()
    seconds = scenario.deadline
    if sabotaged and scenario.sabotage_deadline is not None:
        seconds = scenario.sabotage_deadline
    env = dict(scenario.sabotage) if sabotaged else {}
    sandbox: Sandbox | None = None
    status: Status = "fail"
    try:
        if cancel.is_set():
            raise Cancelled("interrupted before it started")
        sandbox = Sandbox(scenario.name, Deadline(seconds, cancel), env_overrides=env)
        if live is not None:
            live.add(sandbox)
        detail = scenario.run(sandbox)
        status = "pass"
    except ScenarioSkipped as exc:
        status, detail = "skip", str(exc)
    except ScenarioFailed as exc:
        detail = str(exc)
    except Cancelled as exc:
        detail = str(exc)
    except Exception as exc:  # a bug in a scenario is a failed scenario, not a crashed suite
        detail = f"{type(exc).__name__}: {exc}"
        if sandbox is not None:
            (sandbox.root / "edge-case-error.txt").write_text(traceback.format_exc())
    finally:
        if sandbox is not None:
            sandbox.close(keep=keep)
            if live is not None:
                live.discard(sandbox)
    where = str(sandbox.root) if keep and sandbox is not None else None
    return Result(scenario.name, status, time.monotonic() - started, detail, where)


def run_scenarios(
    scenarios: Sequence[Scenario],
    *,
    keep: bool = False,
    jobs: int = DEFAULT_JOBS,
    sabotage: Collection[str] = (),
    on_result: Callable[[Result], None] | None = None,
) -> list[Result]:
    """Run `scenarios` with up to `jobs` at once; results in the order given.

    `sabotage` (test-only) names scenarios to run with the mechanism they guard switched off.
    On KeyboardInterrupt every scenario is cancelled, every sandbox cleaned up, then it re-raises.
    """
    cancel = threading.Event()
    live = _Live()
    results: dict[str, Result] = {}
    executor = ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="edge-case")
    futures: dict[Future[Result], Scenario] = {
        executor.submit(
            run_one,
            scenario,
            keep=keep,
            sabotaged=scenario.name in sabotage,
            cancel=cancel,
            live=live,
        ): scenario
        for scenario in scenarios
    }
    try:
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
            for future in done:
                result = future.result()
                results[result.name] = result
                if on_result is not None:
                    on_result(result)
    except BaseException:
        cancel.set()
        with _uninterruptible():
            executor.shutdown(wait=False, cancel_futures=True)
            wait(set(futures), timeout=CLEANUP_GRACE)
            for sandbox in live.snapshot():
                sandbox.close(keep=keep)  # a thread stuck in a blocking call: clean up for it
        raise
    executor.shutdown(wait=True)
    return [results[s.name] for s in scenarios]
