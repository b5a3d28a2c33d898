"""Checks run at once, each against its own deadline; a hung probe costs only its timeout."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from health_check.result import CheckResult, Status, worst
from health_check.runner import run_in_threads


@pytest.fixture
def fifo(tmp_path: Path) -> Iterator[Path]:
    """A FIFO nobody writes to: opening it for reading blocks in the kernel, like a dead NFS
    server. The finalizer opens the write end, so the abandoned thread ends with the test."""
    path = tmp_path / "stuck"
    os.mkfifo(path)
    yield path
    fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK) if _has_reader(path) else None
    if fd is not None:
        os.close(fd)


def _has_reader(path: Path) -> bool:
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:  # ENXIO: no reader is waiting
        return False
    return True


def test_a_hung_probe_is_unknown_and_the_others_still_report(fifo: Path) -> None:
    started = threading.Event()

    def hangs() -> CheckResult:
        started.set()
        with open(fifo, "rb"):  # blocks until someone opens the write end
            pass
        return CheckResult("stuck", Status.OK, "never")

    def quick() -> CheckResult:
        return CheckResult("quick", Status.WARNING, "fine-ish")

    t0 = time.monotonic()
    results = run_in_threads([("stuck", hangs, 0.5), ("quick", quick, 5.0)])
    took = time.monotonic() - t0

    assert started.is_set()
    assert results["stuck"] is None  # the runner reports it UNKNOWN by name
    quick_result = results["quick"]
    assert quick_result is not None and quick_result.status == Status.WARNING
    assert 0.5 <= took < 3.0


def test_checks_run_concurrently_not_one_after_another() -> None:
    barrier = threading.Barrier(3, timeout=5)

    def meets(name: str) -> CheckResult:
        barrier.wait()  # only returns once all three run at the same time
        return CheckResult(name, Status.OK, "met")

    jobs = [(n, (lambda n=n: meets(n)), 10.0) for n in ("a", "b", "c")]
    results = run_in_threads(jobs)
    assert all(r is not None and r.status == Status.OK for r in results.values())


def test_critical_outranks_unknown_in_the_overall_status() -> None:
    assert worst([Status.OK, Status.UNKNOWN, Status.CRITICAL]) == Status.CRITICAL
    assert worst([Status.WARNING, Status.UNKNOWN]) == Status.UNKNOWN
    assert worst([]) == Status.OK
