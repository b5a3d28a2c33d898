"""`watchdog.orphan_patterns`: processes that look like our workers but are not provably ours are
reported (pid, user, GPU memory) and never stopped; our own orphans are stopped as before."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pynvml
import pytest

from daemon_watchdog.workspace_init import init_workspace
from health_check.checks import orphans
from health_check.context import Context
from health_check.result import CheckResult, Status
from tests.fakes import GIB, FakeGpu, FakeNvml
from tests.health_check.conftest import Example
from tests.polling import DeadlineExceeded, wait_until
from trainguard.atomicio import write_json_atomic
from trainguard.config import load_config
from trainguard.procs import OWNER_ENV
from trainguard.workspace import Workspace

CHILDREN = Path(__file__).resolve().parents[1] / "children"
PATTERNS_ENV = "TRAINGUARD_WATCHDOG__ORPHAN_PATTERNS"


@dataclass
class Procs:
    """Starts processes and kills every one of them (and recorded grandchildren) afterwards."""

    tmp_path: Path
    popens: list[subprocess.Popen[bytes]] = field(default_factory=list)
    extra: list[int] = field(default_factory=list)

    def start(self, argv: list[str], *, token: str | None = None, **kwargs: Any) -> int:
        env = {k: v for k, v in os.environ.items() if k != OWNER_ENV}
        if token is not None:
            env[OWNER_ENV] = token
        kwargs.setdefault("env", env)
        self.popens.append(subprocess.Popen(argv, **kwargs))
        return self.popens[-1].pid

    def sleeper(self, name: str, *, token: str | None = None) -> subprocess.Popen[bytes]:
        """tests/children/sleeper.py, ready once it wrote TMP/NAME."""
        ready = self.tmp_path / name
        self.start([sys.executable, str(CHILDREN / "sleeper.py"), str(ready)], token=token)
        wait_until(ready.exists, message=name)
        return self.popens[-1]

    def train_py(self, *, token: str | None = None) -> subprocess.Popen[bytes]:
        """A `train.py` of someone else's run (sleeper.py under that name), once running."""
        # A long path, as on CI machines: the report must still show the script's name.
        folder = self.tmp_path / f"someone-elses-run-{len(self.popens)}-{'deep' * 30}"
        folder.mkdir()
        script = folder / "train.py"
        shutil.copy(CHILDREN / "sleeper.py", script)
        self.start([sys.executable, str(script), str(folder / "ready")], token=token)
        wait_until((folder / "ready").exists, message=str(script))
        return self.popens[-1]

    def cleanup(self) -> None:
        for pid in self.extra:
            with contextlib.suppress(psutil.Error):
                psutil.Process(pid).kill()
        for popen in self.popens:
            popen.kill()
            popen.wait()


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    started = Procs(tmp_path)
    try:
        yield started
    finally:
        started.cleanup()


def user_of(pid: int) -> str:
    return psutil.Process(pid).username()


def running(popen: subprocess.Popen[bytes]) -> bool:
    try:
        return popen.poll() is None and psutil.Process(popen.pid).status() != "zombie"
    except psutil.Error:
        return False


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def record_dead_daemon(example: Example, token: str) -> None:
    """The state a watchdog leaves when its daemon is gone: its token names the orphans."""
    gone = {"pid": dead_pid(), "create_time": 1.0, "cmdline": ["x"], "uid": os.getuid()}
    write_json_atomic(
        example.base / "status" / "watchdog.json",
        {"state": "FATAL", "daemon": gone, "owner_token": token, "watchdog": None},
    )


# --- through the command line; the example's `train\.py`, scoped to the test's folder ----------


def test_a_train_py_that_is_not_ours_is_a_warning_naming_its_pid_and_user(
    example: Example, procs: Procs, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stranger = procs.train_py()
    zombie = procs.start([sys.executable, "-c", "pass", str(tmp_path / "train.py")])
    wait_until(lambda: psutil.Process(zombie).status() == psutil.STATUS_ZOMBIE, message="zombie")

    run = example.health(capsys, "--only", "orphans", "--json")

    check = run.check("orphans")
    assert run.code == 1, check
    assert check["status"] == "WARNING"
    assert f"pid {zombie} " not in run.out  # exited, not yet reaped: holds nothing
    assert "not ours (left alone)" in check["summary"]
    assert f"pid {stranger.pid} ({user_of(stranger.pid)}" in check["summary"]
    line = next(d for d in check["details"] if d.startswith(f"pid {stranger.pid} ("))
    assert "train.py" in line and line.endswith("not ours: left alone")
    assert check["fix"] is None
    assert running(stranger)


def test_fix_stops_our_orphan_and_leaves_the_train_py_that_is_not_ours_running(
    example: Example, procs: Procs, capsys: pytest.CaptureFixture[str]
) -> None:
    token = uuid.uuid4().hex
    orphan = procs.sleeper("orphan.ready", token=token)
    stranger = procs.train_py()
    record_dead_daemon(example, token)

    run = example.health(capsys, "--only", "orphans", "--json")
    check = run.check("orphans")
    assert run.code == 2, check
    assert f"pid {orphan.pid} (" in check["summary"]
    assert "also 1 process not ours (left alone): " in check["summary"]
    assert f"pid {stranger.pid} ({user_of(stranger.pid)}" in check["summary"]
    assert check["fix"]["action"] == (
        f"stop orphans {orphan.pid} (not ours, left alone: {stranger.pid})"
    )

    fixed = example.health(capsys, "--only", "orphans", "--fix", "--json")
    after = fixed.check("orphans")
    assert after["fix"]["applied"] is True
    assert after["fix"]["message"].endswith(f"not ours, left alone: {stranger.pid}")
    assert orphan.wait(timeout=10) == -signal.SIGTERM
    # The fix has finished: the stranger is still there, and still reported.
    assert running(stranger)
    assert fixed.code == 1 and after["status"] == "WARNING", after
    assert f"pid {stranger.pid} (" in after["summary"]


def test_another_runs_worker_is_a_suspect_unless_its_daemon_still_runs(
    example: Example,
    procs: Procs,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Only this test's sleepers match (their ready files are in tmp_path).
    monkeypatch.setenv(PATTERNS_ENV, json.dumps([rf"sleeper\.py {re.escape(str(tmp_path))}/"]))
    daemon_ready, worker_ready = tmp_path / "daemon.ready", tmp_path / "worker.ready"
    argv = [sys.executable, str(CHILDREN / "spawns_worker.py"), str(daemon_ready)]
    procs.start([*argv, str(worker_ready)], token="another-run")
    worker = int(wait_until(lambda: worker_ready.exists() and worker_ready.read_text()))
    procs.extra.append(worker)
    stray = procs.sleeper("stray.ready", token="another-run")

    run = example.health(capsys, "--only", "orphans", "--json")

    check = run.check("orphans")
    assert run.code == 1, check
    assert f"pid {stray.pid} (" in check["summary"]
    line = next(d for d in check["details"] if d.startswith(f"pid {stray.pid} ("))
    assert "not ours (another run's): left alone" in line
    assert f"pid {worker} " not in run.out  # under its live daemon: that run's business


def test_health_check_never_reports_itself_or_the_command_that_started_it(
    procs: Procs, tmp_path: Path
) -> None:
    marker = f"marker-{uuid.uuid4().hex}"
    config = Path(init_workspace(tmp_path / marker / "ws"))
    stranger = procs.sleeper(f"{marker}.ready")
    wrapper = "import subprocess, sys; sys.exit(subprocess.call(sys.argv[2:]))"
    health = [sys.executable, "-m", "health_check", "-c", str(config), "--only", "orphans"]
    env = {**os.environ, PATTERNS_ENV: json.dumps([marker])}
    # The wrapper's and health-check's command lines both name the marker, like a
    # `bash -c "health-check -c /runs/train.py-test/trainguard.toml"` would.
    result = subprocess.run(
        [sys.executable, "-c", wrapper, marker, *health, "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )

    check = json.loads(result.stdout)["checks"][0]
    assert result.returncode == 1, check
    assert check["summary"].startswith("1 process matching orphan_patterns"), check
    assert f"pid {stranger.pid} (" in check["summary"]


# --- GPU memory, through FakeNvml -------------------------------------------------------------


def probe(example: Example, nvml: Any, env: Mapping[str, str] | None = None) -> CheckResult:
    ws = Workspace(load_config(example.config, env=env or {}))
    return orphans.probe(Context(ws, nvml=nvml))


def test_the_gpu_memory_a_suspect_holds_is_summed_over_gpus(example: Example, procs: Procs) -> None:
    on_gpus, idle = procs.train_py(), procs.train_py()
    fake = FakeNvml(
        [
            FakeGpu(compute_procs=[(on_gpus.pid, 2 * GIB)]),
            # One process with a compute and a graphics context: its memory counts once.
            FakeGpu(compute_procs=[(on_gpus.pid, GIB)], graphics_procs=[(on_gpus.pid, GIB)]),
        ]
    )

    result = probe(example, fake)

    assert result.status == Status.WARNING
    assert f"pid {on_gpus.pid} ({user_of(on_gpus.pid)}, 3.0 GiB GPU memory)" in result.summary
    assert f"pid {idle.pid} ({user_of(idle.pid)}, no GPU memory)" in result.summary
    assert fake.inits == fake.shutdowns == 1


def test_gpu_memory_is_unknown_when_a_gpu_cannot_list_its_processes(
    example: Example, procs: Procs
) -> None:
    stranger = procs.train_py()
    broken = {"nvmlDeviceGetComputeRunningProcesses": pynvml.NVML_ERROR_UNKNOWN}
    fake = FakeNvml([FakeGpu(), FakeGpu(errors=broken)])

    result = probe(example, fake)

    assert result.status == Status.WARNING
    assert f"pid {stranger.pid} ({user_of(stranger.pid)}, GPU memory unknown)" in result.summary


def test_without_an_nvidia_gpu_the_suspect_is_reported_without_gpu_memory(
    example: Example, procs: Procs
) -> None:
    stranger = procs.train_py()
    fake = FakeNvml(errors={"nvmlInit": pynvml.NVML_ERROR_LIBRARY_NOT_FOUND})

    result = probe(example, fake)

    assert result.status == Status.WARNING
    assert f"pid {stranger.pid} ({user_of(stranger.pid)})" in result.summary


def test_nvml_is_asked_once_and_only_when_there_are_suspects(
    example: Example, procs: Procs
) -> None:
    first, second = procs.train_py(), procs.train_py()
    fake = FakeNvml([FakeGpu()])
    nothing = {PATTERNS_ENV: json.dumps([f"nothing-{uuid.uuid4().hex}"])}

    assert probe(example, fake, nothing).status == Status.OK
    assert fake.inits == 0

    result = probe(example, fake)
    assert fake.inits == fake.shutdowns == 1
    for stranger in (first, second):
        assert f"pid {stranger.pid} ({user_of(stranger.pid)}, no GPU memory)" in result.summary


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to start a process as another user")
def test_another_users_process_with_our_token_is_reported_and_never_stopped(
    example: Example,
    procs: Procs,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sleep = shutil.which("sleep")
    assert sleep is not None
    token = uuid.uuid4().hex
    seconds = f"86400.{uuid.uuid4().int % 10**9}"  # a command line only this test has
    nobody = procs.start(
        [sleep, seconds], env={OWNER_ENV: token}, user=65534, group=65534, extra_groups=[]
    )
    record_dead_daemon(example, token)
    monkeypatch.setenv(PATTERNS_ENV, json.dumps([re.escape(seconds)]))

    fixed = example.health(capsys, "--only", "orphans", "--fix", "--json")

    check = fixed.check("orphans")
    assert fixed.code == 1 and check["fix"] is None, check
    assert f"pid {nobody} ({user_of(nobody)})" in check["summary"]
    assert "not ours (our run's token, another user): left alone" in check["details"][0]
    assert running(procs.popens[-1])


# --- the real pynvml --------------------------------------------------------------------------


def _nvml_pids() -> set[int]:
    pynvml.nvmlInit()
    try:
        pids: set[int] = set()
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            pids |= {p.pid for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle)}
        return pids
    finally:
        pynvml.nvmlShutdown()


@pytest.mark.gpu
def test_the_real_gpu_memory_of_a_suspect_is_reported(
    example: Example, procs: Procs, tmp_path: Path
) -> None:
    try:
        pynvml.nvmlInit()
        pynvml.nvmlShutdown()
    except pynvml.NVMLError:
        pytest.skip("no NVIDIA GPU (NVML does not start)")
    ready = tmp_path / "holder.ready"
    holder = procs.start(
        [sys.executable, str(CHILDREN / "holds_gpu_memory.py"), str(ready), "1024"]
    )
    popen = procs.popens[-1]
    wait_until(lambda: ready.exists() or popen.poll() is not None, timeout=60, message="holder")
    if popen.poll() == 3:
        pytest.skip("no CUDA driver library (libcuda.so.1) to allocate GPU memory with")
    assert ready.exists(), f"the holder could not allocate GPU memory (exit {popen.poll()})"
    try:
        wait_until(lambda: holder in _nvml_pids(), timeout=5, message="NVML listing the holder")
    except DeadlineExceeded:
        pytest.skip("NVML lists GPU processes by pids of another pid namespace (a container)")
    pattern = {PATTERNS_ENV: json.dumps([r"holds_gpu_memory\.py"])}

    result = probe(example, None, pattern)

    assert result.status == Status.WARNING, result.summary
    found = re.search(rf"pid {holder} \([^,]+, (\d+\.\d) GiB GPU memory\)", result.summary)
    assert found is not None, result.summary
    assert float(found.group(1)) >= 1.0  # the 1 GiB it allocated, plus its CUDA context
