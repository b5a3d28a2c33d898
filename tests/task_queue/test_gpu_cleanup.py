"""After each attempt no process of ours may hold GPU memory: real processes, listed on a GPU
by FakeNvml (there is no GPU here), found by their owner token and killed; others left alone."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from task_queue.gpu_cleanup import clean_gpus
from task_queue.ledger import Ledger, TaskSpec
from task_queue.run_local import run_local
from tests.fakes import GIB, AmdSmiLibraryException, FakeAmdGpu, FakeAmdsmi, FakeGpu, FakeNvml
from tests.polling import wait_until
from trainguard.config import load_config
from trainguard.procs import OWNER_ENV

SLEEPER = Path(__file__).resolve().parent.parent / "children" / "sleeper.py"
BUS0, BUS1 = "00000000:3B:00.0", "00000000:86:00.0"


class Started:
    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def sleeper(self, name: str, token: str) -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items() if k != OWNER_ENV}
        env[OWNER_ENV] = token
        proc = subprocess.Popen([sys.executable, str(SLEEPER), f"{name}.ready"], env=env)
        self.procs.append(proc)
        wait_until(lambda: Path(f"{name}.ready").exists(), message=f"{name} to start")
        return proc


@pytest.fixture
def started() -> Iterator[Started]:
    made = Started()
    try:
        yield made
    finally:
        for proc in made.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


def gone(proc: subprocess.Popen[bytes]) -> bool:
    try:
        return psutil.Process(proc.pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_a_leftover_of_ours_on_the_attempts_gpu_is_killed_and_others_are_left(
    started: Started,
) -> None:
    ours = started.sleeper("ours", "attempt-token")
    other = started.sleeper("other", "another-attempts-token")
    elsewhere = started.sleeper("elsewhere", "attempt-token")
    nvml = FakeNvml([
        FakeGpu(bus_id=BUS0, compute_procs=[(ours.pid, 2 * GIB), (other.pid, GIB)]),
        FakeGpu(bus_id=BUS1, compute_procs=[(elsewhere.pid, GIB)]),
    ])  # fmt: skip
    killed, others = clean_gpus([0], "attempt-token", nvml=nvml, amdsmi=NO_AMD)
    assert [name.split(" ", 1)[0] for name in killed] == [str(ours.pid)]
    assert others == [f"GPU0: pid {other.pid}, 1.0 GiB (not this attempt's)"]
    assert ours.wait(timeout=10) == -9
    assert other.poll() is None and elsewhere.poll() is None  # not ours, or not its GPU


NO_NVIDIA = FakeNvml(errors={"nvmlInit": 12})  # NVML_ERROR_LIBRARY_NOT_FOUND
NO_AMD = FakeAmdsmi([], init_error=AmdSmiLibraryException(8, "AMDSMI_STATUS_INIT_ERROR"))


def test_no_gpu_means_nothing_to_clean(started: Started) -> None:
    ours = started.sleeper("ours", "attempt-token")
    assert clean_gpus([0], "attempt-token", nvml=NO_NVIDIA, amdsmi=NO_AMD) == ([], [])
    assert ours.poll() is None


def test_a_leftover_of_ours_on_an_amd_gpu_is_killed(started: Started) -> None:
    ours = started.sleeper("ours", "attempt-token")
    other = started.sleeper("other", "another-attempts-token")
    amdsmi = FakeAmdsmi([FakeAmdGpu(), FakeAmdGpu(procs=[(ours.pid, GIB), (other.pid, GIB)])])
    killed, others = clean_gpus([1], "attempt-token", nvml=NO_NVIDIA, amdsmi=amdsmi)
    assert [name.split(" ", 1)[0] for name in killed] == [str(ours.pid)]
    assert others == [f"GPU1: pid {other.pid}, 1.0 GiB (not this attempt's)"]
    assert ours.wait(timeout=10) == -9 and other.poll() is None
    assert amdsmi.live == 0  # shut down again


WRITE_TOKEN = "import os, pathlib; pathlib.Path('token').write_text(os.environ['TRAINGUARD_OWNER'])"


class EscapedLeftover(list[tuple[int, int | None]]):
    """GPU0's NVML process list after the attempt: a process carrying the attempt's token that
    left its process tree (started through `ssh localhost`, say), so that no tree kill or
    orphan sweep finds it; it is started when NVML is first asked after the attempt ran."""

    def __init__(self, folder: Path, started: Started) -> None:
        super().__init__()
        self.folder, self.started = folder, started

    def __iter__(self) -> Iterator[Any]:
        token = self.folder / "token"
        if token.exists() and not self.started.procs:
            self.started.sleeper("escaped", token.read_text())
        return iter([(p.pid, 3 * GIB) for p in self.started.procs])


def test_the_runner_kills_a_leftover_holding_gpu_memory_and_records_it(
    tmp_path: Path, started: Started, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    config = tmp_path / "trainguard.toml"
    config.write_text('[health]\ndisk_min_free_gb = 0\nrocm_smi_command = ["/nonexistent"]\n')
    cfg = load_config(config, env={})
    nvml = FakeNvml([FakeGpu(bus_id=BUS0, compute_procs=EscapedLeftover(tmp_path, started))])
    lines: list[str] = []
    with Ledger.open(tmp_path / "queue" / "ledger.db", create=True) as ledger:
        [task_id] = ledger.submit([TaskSpec(argv=(sys.executable, "-c", WRITE_TOKEN),
                                            cwd=str(tmp_path))])  # fmt: skip
        code = run_local(ledger, cfg, slots="auto", until_done=True, say=lines.append, nvml=nvml)
        (attempt,) = ledger.attempts(task_id)
    assert code == 0, lines
    (escaped,) = started.procs
    wait_until(lambda: gone(escaped), message="the leftover to be killed")
    assert attempt.outcome == "ok"
    (killed,) = attempt.gpu_state["gpu_leftovers_killed"]
    assert killed.startswith(f"{escaped.pid} (")
    assert any("killed processes of ours still holding GPU memory" in line for line in lines)
