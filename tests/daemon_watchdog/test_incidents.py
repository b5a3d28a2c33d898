"""Stack capture against a really hung example trainer, and incident files."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import psutil
import pytest

import daemon_watchdog.incidents
from daemon_watchdog.example.seed import write_example_job
from daemon_watchdog.incidents import (
    MAX_CAPTURE_SECONDS,
    capture_stacks,
    find_py_spy,
    list_incidents,
    write_incident,
)
from tests.polling import wait_until
from trainguard.progress import read_progress

DAEMON = [sys.executable, "-m", "daemon_watchdog.example.daemon"]
CHILDREN = Path(__file__).resolve().parent.parent / "children"
needs_py_spy = pytest.mark.skipif(find_py_spy() is None, reason="py-spy is not installed")


@dataclass
class Hung:
    daemon: subprocess.Popen[bytes]
    worker: psutil.Process
    log: Path


def _blocked(proc: psutil.Process) -> bool:
    """Whether the worker sleeps in the kernel on a lock, as Event.wait() does."""
    try:
        wchan = Path(f"/proc/{proc.pid}/wchan").read_text()
    except OSError:
        wchan = ""
    if wchan in ("", "0"):  # a kernel that hides it: sleeping is the best we can tell
        return bool(proc.status() == psutil.STATUS_SLEEPING)
    return wchan.startswith("futex")


@pytest.fixture
def hung(tmp_path: Path) -> Iterator[Hung]:
    """The example daemon whose worker blocks forever in `_wait_for_allreduce` at step 3."""
    base = tmp_path / "ws"
    write_example_job(base, total_steps=50, save_steps=2, step_seconds=0.01)
    log = base / "logs" / "daemon.log"
    with open(log, "ab") as fh:
        daemon = subprocess.Popen(
            [*DAEMON, "--base-dir", str(base), "--fault", "hang@3"],
            stdout=fh,
            stderr=subprocess.STDOUT,
        )
    worker: psutil.Process | None = None
    try:
        worker = wait_until(
            lambda: next(iter(psutil.Process(daemon.pid).children()), None), message="the worker"
        )
        wait_until(lambda: (base / "status" / "fault-fired-hang@3").exists(), message="the hang")
        wait_until(lambda: _blocked(worker), message="the worker to block")
        progress = read_progress(base / "status" / "progress.json")
        assert progress is not None and progress.step == 2
        yield Hung(daemon, worker, log)
    finally:
        daemon.kill()
        daemon.wait(timeout=10)
        if worker is not None:  # orphaned by the daemon's death, re-parented to pytest
            with contextlib.suppress(psutil.Error):
                worker.kill()
            psutil.wait_procs([worker], timeout=10)


@needs_py_spy
def test_py_spy_shows_where_the_worker_hangs_and_leaves_it_running(hung: Hung) -> None:
    capture = capture_stacks([hung.worker.pid], timeout=10, log_path=hung.log)
    assert capture.method == "py-spy", capture.details
    assert f"=== pid {hung.worker.pid} (" in capture.text
    assert "_wait_for_allreduce" in capture.text
    assert hung.worker.is_running()
    assert hung.worker.status() != psutil.STATUS_ZOMBIE


def test_faulthandler_fallback_reads_the_stacks_from_the_log_and_kills(hung: Hung) -> None:
    pids = [hung.daemon.pid, hung.worker.pid]
    capture = capture_stacks(pids, timeout=10, log_path=hung.log, use_py_spy=False)
    assert capture.method == "faulthandler", capture.details
    # The worker first, in its own section: its parent's death could have taken it along.
    worker_section, _ = capture.text.split(f"=== pid {hung.daemon.pid} (")
    assert worker_section.startswith(f"=== pid {hung.worker.pid} (")
    assert "_wait_for_allreduce" in worker_section
    assert "Fatal Python error: Aborted" in capture.text
    # Only what the abort appended: the training log from before is not repeated.
    assert "step 1/50" not in capture.text
    # The daemon mirrors its worker's death; both are gone.
    assert hung.daemon.wait(timeout=10) < 0


def test_automatic_choice_prefers_py_spy_when_installed(hung: Hung) -> None:
    capture = capture_stacks([hung.worker.pid], timeout=10, log_path=hung.log)
    assert capture.method == ("py-spy" if find_py_spy() else "faulthandler"), capture.details
    assert "_wait_for_allreduce" in capture.text


def test_no_log_means_no_signal_and_no_stacks(hung: Hung) -> None:
    capture = capture_stacks([hung.worker.pid], timeout=10, log_path=None, use_py_spy=False)
    assert capture.method == "none"
    assert capture.text == ""
    assert any("SIGABRT not sent" in line for line in capture.details)
    assert hung.worker.is_running()


def test_forced_py_spy_that_is_missing_reports_none(
    hung: Hung, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(daemon_watchdog.incidents, "find_py_spy", lambda: None)
    capture = capture_stacks([hung.worker.pid], timeout=10, log_path=hung.log, use_py_spy=True)
    assert capture.method == "none"
    assert any("not found" in line for line in capture.details)
    assert hung.worker.is_running()


@pytest.fixture
def sleeper(tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A Python process without faulthandler, allowed to dump core, its output in child.log."""
    ready = tmp_path / "ready"

    def allow_core() -> None:
        resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))

    with open(tmp_path / "child.log", "ab") as fh:
        proc = subprocess.Popen(
            [sys.executable, str(CHILDREN / "sleeper.py"), str(ready)],
            stdout=fh,
            stderr=subprocess.STDOUT,
            preexec_fn=allow_core,
        )
    try:
        wait_until(ready.exists, message="the sleeper")
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_fallback_without_faulthandler_reports_none_and_dumps_no_core(
    tmp_path: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    if resource.getrlimit(resource.RLIMIT_CORE)[1] != resource.RLIM_INFINITY:
        pytest.skip("core dumps cannot be enabled here")
    capture = capture_stacks(
        [sleeper.pid], timeout=10, log_path=tmp_path / "child.log", use_py_spy=False
    )
    assert capture.method == "none"
    assert any("no faulthandler traceback" in line for line in capture.details)
    assert sleeper.wait(timeout=10) == -6  # SIGABRT
    assert not list(tmp_path.glob("core*"))


def test_a_process_that_ignores_sigabrt_costs_at_most_the_timeout(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    code = (
        "import signal, sys, time, pathlib; signal.signal(signal.SIGABRT, signal.SIG_IGN);"
        "pathlib.Path(sys.argv[1]).touch(); signal.pause()"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(ready)])
    try:
        wait_until(ready.exists, message="the child")
        log = tmp_path / "child.log"
        log.touch()
        capture = capture_stacks([proc.pid], timeout=0.5, log_path=log, use_py_spy=False)
        assert capture.method == "none"
        assert any("still running" in line for line in capture.details)
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_capture_takes_at_most_two_seconds_whatever_timeout_it_is_given(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    code = (
        "import signal, sys, time, pathlib; signal.signal(signal.SIGABRT, signal.SIG_IGN);"
        "pathlib.Path(sys.argv[1]).touch(); signal.pause()"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(ready)])
    try:
        wait_until(ready.exists, message="the child")
        log = tmp_path / "child.log"
        log.touch()
        capture = capture_stacks([proc.pid], timeout=60, log_path=log, use_py_spy=False)
        # The only process gets the whole budget, and says how long it waited.
        (waited,) = [line for line in capture.details if "still running" in line]
        seconds = float(waited.split("still running ")[1].split("s after")[0])
        assert 0 < seconds <= MAX_CAPTURE_SECONDS == 2.0
    finally:
        proc.kill()
        proc.wait(timeout=10)


@dataclass
class Pair:
    frozen: subprocess.Popen[bytes]
    running: subprocess.Popen[bytes]
    log: Path


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    """Two Pythons with faulthandler and a SIGTERM handler that exits 0, output in child.log;
    the first SIGSTOPped (a frozen trainer), the second running."""
    log = tmp_path / "child.log"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for name in ("frozen", "running"):
            with open(log, "ab") as fh:
                procs.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            str(CHILDREN / "exits_on_sigterm.py"),
                            str(tmp_path / name),
                        ],
                        stdout=fh,
                        stderr=subprocess.STDOUT,
                    )
                )
            wait_until((tmp_path / name).exists, message=f"the {name} child")
        frozen, running = procs
        frozen.send_signal(signal.SIGSTOP)
        wait_until(lambda: _stopped(frozen), message="the child to stop")
        yield Pair(frozen, running, log)
    finally:
        for proc in procs:  # our own children, unreaped until wait(): their pids are theirs
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
            proc.wait(timeout=10)


def _stopped(proc: subprocess.Popen[bytes]) -> bool:
    return bool(psutil.Process(proc.pid).status() == psutil.STATUS_STOPPED)


def _section(text: str, pid: int) -> str:
    """The body of pid's `=== pid N (...) ===` section."""
    _, rest = text.split(f"=== pid {pid} (", 1)
    _, body = rest.split("\n", 1)
    return body.split("=== pid ", 1)[0]


def _handles_sigterm_first(proc: subprocess.Popen[bytes]) -> bool:
    """Continue `proc` with SIGTERM pending: it exits 0 unless a SIGABRT (a lower number, so
    delivered first) was left pending too, which faulthandler turns into death by SIGABRT."""
    os.kill(proc.pid, signal.SIGTERM)  # our unreaped child: the pid is still its own
    os.kill(proc.pid, signal.SIGCONT)
    return proc.wait(timeout=10) == 0


@pytest.mark.parametrize(
    "use_py_spy",
    [False, pytest.param(True, marks=needs_py_spy), None],
    ids=["faulthandler", "py-spy", "auto"],
)
def test_a_stopped_process_is_recorded_not_waited_for_and_left_alone(
    pair: Pair, use_py_spy: bool | None
) -> None:
    pid = pair.frozen.pid
    capture = capture_stacks([pid], timeout=10, log_path=pair.log, use_py_spy=use_py_spy)
    assert capture.stopped == (pid,)
    assert capture.to_json()["stopped"] == [pid]
    assert capture.method == "none"
    assert f"pid {pid} is stopped (SIGSTOP or a tracer): no stacks" in capture.details
    assert "(stopped: no stacks)" in _section(capture.text, pid)
    assert not any("SIGABRT" in line or "py-spy dump" in line for line in capture.details)
    assert _stopped(pair.frozen)  # neither continued nor killed: stopping the tree does that
    assert _handles_sigterm_first(pair.frozen)  # and no SIGABRT was left pending


def test_a_running_process_beside_a_stopped_one_still_gets_its_faulthandler_stacks(
    pair: Pair,
) -> None:
    pids = [pair.frozen.pid, pair.running.pid]
    capture = capture_stacks(pids, timeout=10, log_path=pair.log, use_py_spy=False)
    assert capture.method == "faulthandler", capture.details
    assert capture.stopped == (pair.frozen.pid,)
    running = _section(capture.text, pair.running.pid)
    assert "(most recent call first)" in running and "in main" in running
    assert "(stopped: no stacks)" in _section(capture.text, pair.frozen.pid)
    assert pair.running.wait(timeout=10) == -signal.SIGABRT
    assert _stopped(pair.frozen)
    assert _handles_sigterm_first(pair.frozen)


@needs_py_spy
def test_a_running_process_beside_a_stopped_one_still_gets_its_py_spy_stacks(
    pair: Pair,
) -> None:
    pids = [pair.frozen.pid, pair.running.pid]
    capture = capture_stacks(pids, timeout=10, log_path=pair.log, use_py_spy=True)
    assert capture.method == "py-spy", capture.details
    assert capture.stopped == (pair.frozen.pid,)
    assert "main (" in _section(capture.text, pair.running.pid)
    assert "(stopped: no stacks)" in _section(capture.text, pair.frozen.pid)
    assert pair.running.poll() is None  # py-spy leaves it running
    assert _stopped(pair.frozen)


@needs_py_spy
def test_py_spy_failure_is_reported_not_raised(tmp_path: Path) -> None:
    proc = subprocess.Popen(["sleep", "60"])
    try:
        capture = capture_stacks([proc.pid], timeout=10, log_path=None, use_py_spy=True)
        assert capture.method == "none"
        assert any(f"--pid {proc.pid}: exit" in line for line in capture.details)
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_incidents_are_written_atomically_and_never_overwritten(tmp_path: Path) -> None:
    directory = tmp_path / "status" / "incidents"
    first = write_incident(directory, kind="hang", payload={"step": 2})
    second = write_incident(directory, kind="hang", payload={"step": 3})
    assert first != second
    assert first.name.endswith("-hang.json")
    data = json.loads(first.read_text())
    assert data["step"] == 2 and data["kind"] == "hang" and data["at"].endswith("Z")
    assert list_incidents(directory) == [first, second]


def test_a_name_collision_gets_a_counter_and_sorts_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class FrozenDatetime(datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=timezone.utc)

    monkeypatch.setattr(daemon_watchdog.incidents, "datetime", FrozenDatetime)
    paths = [write_incident(tmp_path, kind="hang", payload={"n": n}) for n in range(3)]
    assert [p.name for p in paths] == [
        "20260102T030405.000006Z-hang.json",
        "20260102T030405.000006Z-hang.2.json",
        "20260102T030405.000006Z-hang.3.json",
    ]
    (tmp_path / ".20260102T030405.000006Z-hang.json.x.tmp").write_text("{")  # a partial write
    assert list_incidents(tmp_path) == paths
    assert [json.loads(p.read_text())["n"] for p in paths] == [0, 1, 2]


def test_list_incidents_of_a_missing_folder_is_empty(tmp_path: Path) -> None:
    assert list_incidents(tmp_path / "nope") == []


@pytest.mark.parametrize("kind", ["", "../x", "a.b", "a b"])
def test_incident_kind_must_be_a_plain_name(tmp_path: Path, kind: str) -> None:
    with pytest.raises(ValueError, match="kind"):
        write_incident(tmp_path, kind=kind, payload={})


def test_incident_payload_cannot_shadow_at_or_kind(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at"):
        write_incident(tmp_path, kind="hang", payload={"at": "yesterday"})
