"""Checks run at once, each against its own deadline; a hung probe costs only its timeout."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from health_check.context import Context
from health_check.result import CheckResult, Status, worst
from health_check.runner import run_checks, run_in_threads
from tests.fakes import FakeGpu, FakeNvml
from tests.health_check.conftest import Example
from trainguard.config import load_config
from trainguard.workspace import Workspace


@pytest.fixture
def fifo(tmp_path: Path) -> Iterator[Path]:
    """A FIFO nobody writes to: opening it for reading blocks in the kernel, like a dead NFS
    server. The finalizer opens the write end, so the abandoned thread ends with the test."""
    path = tmp_path / "stuck"
    os.mkfifo(path)
    yield path
    # Opening the write end releases the reader blocked in open(); ENXIO: none is waiting.
    with contextlib.suppress(OSError):
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))


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


class WedgedNvml(FakeNvml):
    """A GPU library stuck inside nvmlInit (a wedged driver), until the test lets it go."""

    def __init__(self) -> None:
        super().__init__([FakeGpu()])
        self.entered = threading.Event()
        self.release = threading.Event()

    def nvmlInit(self) -> None:
        self.entered.set()
        self.release.wait()


def test_a_wedged_gpu_library_makes_gpu_unknown_and_the_run_ends_on_time(
    example: Example, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRAINGUARD_HEALTH__CHECK_TIMEOUTS", "{gpu = 1}")
    wedged = WedgedNvml()
    ctx = Context(Workspace(load_config(example.config)), nvml=wedged, kernel_log=lambda: "")
    try:
        t0 = time.monotonic()
        results = run_checks(ctx, ["gpu", "memory", "directories"])
        took = time.monotonic() - t0
    finally:
        wedged.release.set()
    gpu, memory, directories = results
    assert wedged.entered.is_set()
    assert gpu.status == Status.UNKNOWN and "no answer within 1 s" in gpu.summary
    assert memory.status == Status.OK and directories.status == Status.OK
    assert 1.0 <= took < 3.0
