"""Preflight before a step: a real unreachable ssh target, real filesystems and files, GPUs
through FakeNvml and a fake rocm-smi (there is no GPU here), and the cache between steps."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pynvml
import pytest

from task_queue.preflight import Preflight, StepFiles, runner_preflight
from tests.fakes import FakeGpu, FakeNvml
from tests.ssh_targets import needs_ssh, refusing_node
from trainguard.config import Config, load_config

CHILDREN = Path(__file__).resolve().parent.parent / "children"
FAKE_SSH = CHILDREN / "fake_ssh.py"
FAKE_ROCM_SMI = CHILDREN / "fake_rocm_smi.py"
NO_ROCM_SMI = ["/nonexistent/rocm-smi"]
NO_NVIDIA = FakeNvml(errors={"nvmlInit": pynvml.NVML_ERROR_LIBRARY_NOT_FOUND})
BUS0, BUS1 = "00000000:3B:00.0", "00000000:86:00.0"


def config(tmp_path: Path, text: str = "") -> Config:
    path = tmp_path / "trainguard.toml"
    path.write_text(f"[health]\nrocm_smi_command = {json.dumps(NO_ROCM_SMI)}\n{text}")
    return load_config(path, env={})


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def preflight(cfg: Config, tmp_path: Path, **kw: Any) -> Preflight:
    return Preflight(cfg, [tmp_path], log_file=tmp_path / "logs" / "preflight.log", **kw)


# --- ssh ------------------------------------------------------------------------------------


@needs_ssh
def test_an_unreachable_node_refuses_the_run_naming_the_node(tmp_path: Path) -> None:
    with refusing_node() as node:
        cfg = config(tmp_path, f"ssh_timeout = 3\n[preflight]\nnodes = [{json.dumps(node)}]\n")
        verdict = preflight(cfg, tmp_path).check(step="task 1 (a)", worker="h/slot0")
    assert not verdict.passed
    (refusal,) = verdict.refusals
    assert (refusal.check, refusal.scope) == ("ssh", "run")
    assert refusal.line.startswith(f"ssh: {node}: refused after ")
    assert "remove it from [preflight] nodes" in refusal.line
    logged = (tmp_path / "logs" / "preflight.log").read_text()
    assert f"task 1 (a) on h/slot0: refused: ssh: {node}: refused" in logged


def fake_ssh_config(tmp_path: Path, nodes: list[str], cache: float = 5) -> Config:
    command = json.dumps([sys.executable, str(FAKE_SSH)])
    return config(
        tmp_path,
        f"ssh_command = {command}\n[preflight]\nnodes = {json.dumps(nodes)}\n"
        f"cache_seconds = {cache}\n",
    )


def test_health_nodes_still_count_and_a_passing_answer_is_reused_for_cache_seconds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "ssh.log"
    monkeypatch.setenv("FAKE_SSH_LOG", str(log))
    fake_ssh_config(tmp_path, ["reachable-a"])
    cfg = load_config(
        tmp_path / "trainguard.toml", env={"TRAINGUARD_HEALTH__NODES": '["reachable-b"]'}
    )
    clock = Clock()
    checks = preflight(cfg, tmp_path, clock=clock)
    first = checks.check(step="task 1", worker="w")
    assert first.passed and first.checked[0] == "ssh 2 nodes"
    clock.now += 4.9
    second = checks.check(step="task 2", worker="w")
    assert second.passed and second.checked[0] == "ssh 2 nodes (cached)"
    assert sorted(json.loads(line)[-2] for line in log.read_text().splitlines()) == [
        "reachable-a",
        "reachable-b",
    ]  # asked once each: the second step reused the answer
    clock.now += 0.2
    assert checks.check(step="task 3", worker="w").checked[0] == "ssh 2 nodes"
    assert len(log.read_text().splitlines()) == 4


def test_a_refusal_is_not_cached(tmp_path: Path) -> None:
    cfg = fake_ssh_config(tmp_path, ["denied-node"])
    checks = preflight(cfg, tmp_path, clock=Clock())
    assert "auth failed" in checks.check(step="t", worker="w").refusals[0].line
    assert not checks.check(step="t", worker="w").passed  # asked again, refused again


# --- disk -----------------------------------------------------------------------------------


def test_a_disk_below_the_health_threshold_refuses_the_run(tmp_path: Path) -> None:
    cfg = config(tmp_path, "disk_min_free_gb = 1000000000\n")  # an exabyte: below on any disk
    verdict = preflight(cfg, tmp_path).check(step="t", worker="w", files=StepFiles(tmp_path))
    (refusal,) = verdict.refusals
    assert (refusal.check, refusal.scope) == ("disk_space", "run")
    assert "(< [health] disk_min_free_gb = 1e+09)" in refusal.line
    assert "free space there" in refusal.line


def test_a_disk_below_the_warning_share_passes_with_a_warning(tmp_path: Path) -> None:
    cfg = config(tmp_path, "disk_min_free_gb = 0\ndisk_min_free_pct = 100\n")
    verdict = preflight(cfg, tmp_path).check(step="t", worker="w")
    assert verdict.passed
    assert [w.split(":")[0] for w in verdict.warnings] == ["disk_space"]


def test_checks_not_listed_are_not_run(tmp_path: Path) -> None:
    cfg = config(tmp_path, 'disk_min_free_gb = 1000000000\n[preflight]\nchecks = ["ssh"]\n')
    assert preflight(cfg, tmp_path).check(step="t", worker="w").passed


# --- the step's files -----------------------------------------------------------------------


def test_a_missing_input_refuses_only_that_step(tmp_path: Path) -> None:
    cfg = config(tmp_path, "disk_min_free_gb = 0\n")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.jsonl").write_text("{}\n")
    checks = preflight(cfg, tmp_path)
    good = checks.check(step="a", worker="w", files=StepFiles(tmp_path, ("data/a.jsonl",)))
    assert good.passed
    bad = checks.check(step="b", worker="w", files=StepFiles(tmp_path, ("data/b.jsonl",)))
    (refusal,) = bad.refusals
    assert (refusal.check, refusal.scope) == ("inputs", "step")
    assert str(tmp_path / "data" / "b.jsonl") in refusal.line


# --- GPUs -----------------------------------------------------------------------------------


def gpu_preflight(tmp_path: Path, nvml: Any, text: str = "", **kw: Any) -> Preflight:
    cfg = config(tmp_path, "disk_min_free_gb = 0\n" + text)
    return preflight(cfg, tmp_path, nvml=nvml, kernel_log=kw.pop("kernel_log", lambda: ""), **kw)


def test_a_lost_gpu_is_taken_out_and_a_healthy_one_passes(tmp_path: Path) -> None:
    lost = {"nvmlDeviceGetMemoryInfo": pynvml.NVML_ERROR_GPU_IS_LOST}
    nvml = FakeNvml([FakeGpu(bus_id=BUS0), FakeGpu(bus_id=BUS1, errors=lost)])
    checks = gpu_preflight(tmp_path, nvml)
    assert checks.check(step="t", worker="w0", gpus=[0]).passed
    verdict = checks.check(step="t", worker="w1", gpus=[1])
    (refusal,) = verdict.refusals
    assert (refusal.check, refusal.scope, refusal.gpus) == ("gpu", "gpu", (1,))
    assert refusal.line.startswith(f"gpu: GPU1 (nvidia {BUS1}): GPU lost: ")
    assert "add 1 to [health] excluded_gpus" in refusal.line


def test_an_xid_in_the_kernel_log_takes_its_gpu_out(tmp_path: Path) -> None:
    nvml = FakeNvml([FakeGpu(bus_id=BUS0), FakeGpu(bus_id=BUS1)])
    dmesg = "[ 12.3] NVRM: Xid (PCI:0000:86:00): 79, pid=1234, GPU has fallen off the bus.\n"
    checks = gpu_preflight(tmp_path, nvml, kernel_log=lambda: dmesg)
    (refusal,) = checks.check(step="t", worker="w1", gpus=[1]).refusals
    assert "Xid 79" in refusal.line and refusal.gpus == (1,)
    assert checks.check(step="t", worker="w0", gpus=[0]).passed


def test_a_gpu_the_driver_no_longer_lists_is_taken_out(tmp_path: Path) -> None:
    checks = gpu_preflight(tmp_path, FakeNvml([FakeGpu(bus_id=BUS0)]))
    (refusal,) = checks.check(step="t", worker="w2", gpus=[2]).refusals
    assert refusal.line.startswith("gpu: GPU2 is not among the GPUs the driver lists")


def test_an_amd_smu_that_does_not_answer_takes_the_gpu_out(tmp_path: Path) -> None:
    (tmp_path / "out.txt").write_text(json.dumps({"card0": {}, "card1": {}}))
    (tmp_path / "err.txt").write_text("ERROR: GPU[1]\t: SMU is not responding (timed out)\n")
    command = [sys.executable, str(FAKE_ROCM_SMI), "print", str(tmp_path / "out.txt"),
               str(tmp_path / "err.txt"), "0"]  # fmt: skip
    text = f"[health]\ndisk_min_free_gb = 0\nrocm_smi_command = {json.dumps(command)}\n"
    cfg = load_config(_write(tmp_path, text), env={})
    checks = preflight(cfg, tmp_path, nvml=NO_NVIDIA, kernel_log=lambda: "")
    (refusal,) = checks.check(step="t", worker="w1", gpus=[1]).refusals
    assert refusal.line.startswith("gpu: GPU1 (amd): SMU error")
    assert checks.check(step="t", worker="w0", gpus=[0]).passed


def test_no_gpu_reader_here_passes_with_a_warning(tmp_path: Path) -> None:
    verdict = gpu_preflight(tmp_path, NO_NVIDIA).check(step="t", worker="w", gpus=[0])
    assert verdict.passed
    assert verdict.warnings == ("gpu: no NVML or rocm-smi answered here: GPU health not checked",)


def test_a_worker_without_gpus_reads_no_gpu(tmp_path: Path) -> None:
    nvml = FakeNvml([FakeGpu(bus_id=BUS0)])
    gpu_preflight(tmp_path, nvml).check(step="t", worker="w", gpus=[])
    assert nvml.inits == 0


def test_the_gpu_reading_is_reused_within_cache_seconds(tmp_path: Path) -> None:
    nvml = FakeNvml([FakeGpu(bus_id=BUS0), FakeGpu(bus_id=BUS1)])
    clock = Clock()
    checks = gpu_preflight(tmp_path, nvml, clock=clock)
    checks.check(step="a", worker="w0", gpus=[0])
    assert checks.check(step="b", worker="w1", gpus=[1]).checked[-1] == "gpu 1 (cached)"
    assert nvml.inits == 1
    clock.now += 5
    checks.check(step="c", worker="w0", gpus=[0])
    assert nvml.inits == 2


def test_runner_preflight_logs_beside_the_ledger(tmp_path: Path) -> None:
    cfg = config(tmp_path, "disk_min_free_gb = 0\n")
    ledger = tmp_path / "queue" / "ledger.db"
    runner_preflight(cfg, ledger).check(step="task 7 (x)", worker="h/slot0")
    (line,) = (tmp_path / "queue" / "logs" / "preflight.log").read_text().splitlines()
    assert line.split(" ", 1)[1].startswith("task 7 (x) on h/slot0: passed in ")


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "trainguard.toml"
    path.write_text(text)
    return path
