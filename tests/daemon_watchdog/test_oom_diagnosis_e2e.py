"""A SIGKILLed daemon is host_oom only with evidence, end to end: a real watchdog, real kills,
a real shell saying "Killed", and (where the test may make one) a real kernel OOM kill."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.daemon_watchdog.test_supervisor_e2e import Run, _restarted, _running_past, run
from tests.polling import wait_until

pytestmark = pytest.mark.e2e
__all__ = ["run"]  # the fixture, imported for its name

CRASH_DETECTOR = Path(sys.executable).parent / "crash-detector"
EATS_MEMORY = Path(__file__).parents[1] / "children" / "eats_memory.py"
EXAMPLE = ["{python}", "-m", "daemon_watchdog.example.daemon", "--base-dir", "{base_dir}"]
# The example daemon behind a shell, as many sites start their trainer: the shell reports a
# child's SIGKILL ("Killed") and exits 137.
BEHIND_A_SHELL = [
    "sh", "-c", '"$0" -m daemon_watchdog.example.daemon --base-dir "$@"; exit $?',
    "{python}", "{base_dir}",
]  # fmt: skip
MEMORY_LIMIT = 64 * 1024 * 1024


def _set_command(run: Run, argv: list[str]) -> None:
    text = run.config.read_text()
    old = f"command = {json.dumps(EXAMPLE)}"
    assert old in text, text
    run.config.write_text(text.replace(old, f"command = {json.dumps(argv)}"))


def _crashed(status: dict[str, Any]) -> bool:
    return bool(status.get("last_crash")) and status.get("daemon_pid") is not None


def _crash_detector(run: Run, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CRASH_DETECTOR), "-c", str(run.config), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_bare_sigkill_with_a_silent_log_is_unknown_not_host_oom(run: Run) -> None:
    run.start()
    run.wait_for(_running_past(5), "training past step 5")
    daemon_pid = run.status()["daemon_pid"]
    os.kill(daemon_pid, signal.SIGKILL)
    status = run.wait_for(_restarted(1), "one restart")
    crash = status["last_crash"]
    assert crash["category"] == "unknown" and crash["exit_code"] == -9
    assert crash["reason"] == "daemon terminated by SIGKILL: unknown, no OOM evidence"
    assert "no OOM evidence" in crash["evidence"]
    [record] = run.history()
    assert (record["category"], record["reason"]) == ("unknown", crash["reason"])

    # crash-detector on the same workspace: the recorded crash next to what the log says, and
    # the two agree (the log alone shows no crash; with the exit status, unknown as well).
    shown = _crash_detector(run, "--json", "--exit-code", "-9")
    out = json.loads(shown.stdout)
    assert [(r["category"], r["reason"], r["exit_code"]) for r in out["recorded"]] == [
        ("unknown", crash["reason"], -9)
    ]
    assert out["primary"]["category"] == "unknown"
    assert {"crashes", "primary", "counts"} <= set(out)
    text = _crash_detector(run).stdout
    assert "recorded by the watchdog" in text
    assert "unknown  exit -9  daemon terminated by SIGKILL: unknown, no OOM evidence" in text


def test_a_shell_saying_killed_makes_the_sigkill_host_oom(run: Run) -> None:
    _set_command(run, BEHIND_A_SHELL)
    run.start()
    run.wait_for(_running_past(5), "training past step 5")
    shell = psutil.Process(run.status()["daemon_pid"])
    [daemon] = [p for p in shell.children() if "daemon_watchdog.example.daemon" in p.cmdline()]
    daemon.send_signal(signal.SIGKILL)
    status = run.wait_for(_restarted(1), "one restart")
    crash = status["last_crash"]
    assert crash["category"] == "host_oom" and crash["exit_code"] == 137
    assert crash["evidence"] == "Killed"
    assert [r["category"] for r in run.history()] == ["host_oom"]
    out = json.loads(_crash_detector(run, "--json").stdout)
    assert out["primary"]["category"] == "host_oom"  # what the log says: the same
    assert [r["category"] for r in out["recorded"]] == ["host_oom"]


@pytest.fixture
def memory_cgroup() -> Iterator[Path]:
    """A child of this process's memory cgroup with a 64 MiB limit; removed afterwards."""
    made = _make_memory_cgroup()
    if made is None:
        pytest.skip("cannot create a memory cgroup here (needs root and a writable cgroupfs)")
    try:
        yield made
    finally:

        def removed() -> bool:
            with contextlib.suppress(OSError):
                made.rmdir()  # only once the daemons in it are gone
            return not made.exists()

        wait_until(removed, timeout=30, message=f"{made} to be removable")


def _make_memory_cgroup() -> Path | None:
    if os.geteuid() != 0:
        return None
    lines = Path("/proc/self/cgroup").read_text().splitlines()
    v1 = [line.split(":", 2)[2] for line in lines if "memory" in line.split(":")[1].split(",")]
    v2 = [line.split(":", 2)[2] for line in lines if line.startswith("0::")]
    if v1:
        parent, limit = Path("/sys/fs/cgroup/memory" + v1[0]), "memory.limit_in_bytes"
    elif v2:
        parent, limit = Path("/sys/fs/cgroup" + v2[0]), "memory.max"
    else:
        return None
    made = parent / f"trainguard-test-{os.getpid()}"
    try:
        made.mkdir()
    except OSError:
        return None
    try:
        (made / limit).write_text(str(MEMORY_LIMIT))
        if (made / "memory.swap.max").exists():
            (made / "memory.swap.max").write_text("0")
    except OSError:
        made.rmdir()
        return None
    return made


def test_a_real_oom_kill_is_host_oom_with_the_kernels_line(
    memory_cgroup: Path, run: Run, tmp_path: Path
) -> None:
    _set_command(run, ["{python}", str(EATS_MEMORY), str(memory_cgroup), str(tmp_path / "ate")])
    run.start()
    status = run.wait_for(_crashed, "the OOM kill and a restart")
    crash = status["last_crash"]
    victim = int((tmp_path / "ate").read_text())
    assert crash["category"] == "host_oom" and crash["exit_code"] == -9, crash
    assert crash["evidence"].startswith("kernel log: ")
    assert f"Killed process {victim} " in crash["evidence"]
    assert crash["reason"] == "daemon terminated by SIGKILL: host_oom"
