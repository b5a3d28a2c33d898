"""Preflight before every step (a task, an experiment, a phase): health-check's checks, asked
again right before a process would start, so that a run never starts work it cannot finish.

- `ssh`: each of `[preflight] nodes` answers `ssh -o BatchMode=yes NODE true`, all at once,
  within `[health] ssh_timeout`. A failure refuses the run (exit 69).
- `disk_space`: the filesystems of the ledger and the step's folder, against the `[health]`
  disk thresholds; CRITICAL refuses the run (exit 69), WARNING is logged.
- `gpu`: the GPUs the step would get. A CRITICAL finding (SMU not answering, fallen off the
  bus, an Xid that needs a reset, uncorrectable ECC, at its shutdown temperature) takes that
  GPU out of the run; the step waits for another worker (none left: exit 69).
- `inputs`, `ramdisk`: the step's own files (a phase's `inputs`, a study's
  `[preflight] inputs`); a missing one refuses that step.

A refusal is one line saying which node, GPU or file, and what to do. Passing ssh and disk
results, and the GPU reading, are reused for `[preflight] cache_seconds` (default 5) by the
steps that follow: a study of 400 short experiments pays for one ssh round and one NVML read
every few seconds, not 400. Every result, passing or not, is one line in the preflight log.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from health_check.checks import disk as disk_check
from health_check.checks import ssh as ssh_check
from health_check.checks.gpu import Survey, survey
from health_check.result import Status
from task_queue.gpu_state import findings_of
from task_queue.step_preflight import check_step_files
from trainguard.config import Config
from trainguard.timestamps import utc_now_iso

Scope = Literal["run", "gpu", "step"]
PREFLIGHT_LOG = "preflight.log"
GPU_BUDGET = 10.0  # seconds a GPU reading may take (a hung rocm-smi is killed within it)


@dataclass(frozen=True)
class Refusal:
    check: str  # ssh | disk_space | gpu | inputs | ramdisk
    line: str  # which node / GPU / file, and what to do
    scope: Scope  # what it stops: the whole run, one GPU, or this step
    gpus: tuple[int, ...] = ()  # scope "gpu": the GPUs taken out


@dataclass(frozen=True)
class StepFiles:
    """The files a step needs, relative to `folder` unless absolute."""

    folder: Path
    inputs: tuple[str, ...] = ()
    ramdisk: tuple[str, ...] = ()


@dataclass(frozen=True)
class Verdict:
    refusals: tuple[Refusal, ...] = ()
    warnings: tuple[str, ...] = ()
    checked: tuple[str, ...] = ()  # what was looked at, e.g. "ssh 2 nodes (cached)"
    seconds: float = 0.0
    # Findings on the step's GPUs at start ("GPU1: Xid 79 ..."): what is new at its end
    # appeared while it ran.
    gpu_findings: frozenset[str] = frozenset()

    @property
    def passed(self) -> bool:
        return not self.refusals

    def summary(self) -> str:
        if self.refusals:
            return "refused: " + "; ".join(r.line for r in self.refusals)
        looked = ", ".join(self.checked) or "nothing to check"
        warned = f"; warnings: {'; '.join(self.warnings)}" if self.warnings else ""
        return f"passed in {self.seconds:.3f} s ({looked}){warned}"


@dataclass
class _Cached:
    until: float
    value: Any


@dataclass
class Preflight:
    """The checks of one run; `check` before each step. Not thread-safe (the manager's loop)."""

    cfg: Config
    disk_paths: Sequence[Path]  # the ledger's folder and the like; a step's folder is added
    log_file: Path | None = None
    nvml: Any | None = None  # a pynvml-like module; None: import pynvml
    kernel_log: Callable[[], str] | None = None  # None: dmesg
    clock: Callable[[], float] = time.monotonic
    checks: tuple[str, ...] = ()  # default: [preflight] checks
    nodes: tuple[str, ...] = ()  # added to [preflight] nodes (a study's own)
    _cache: dict[str, _Cached] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.checks:
            self.checks = tuple(self.cfg.preflight.checks)
        self.nodes = tuple(dict.fromkeys([*self.cfg.ssh_nodes(), *self.nodes]))

    def check(
        self,
        *,
        step: str,
        worker: str,
        gpus: Sequence[int] = (),
        files: StepFiles | None = None,
        folder: Path | None = None,
        ours: Callable[[int], bool] = lambda _pid: False,
    ) -> Verdict:
        """Everything the step needs, in order of cost; what refuses the run stops the rest.
        `folder`: where the step runs (its filesystem is checked too)."""
        started = self.clock()
        refusals: list[Refusal] = []
        warnings: list[str] = []
        checked: list[str] = []
        findings: frozenset[str] = frozenset()
        if "ssh" in self.checks and self.nodes:
            refusals += self._ssh(checked)
        if "disk_space" in self.checks and not refusals:
            extra = [p.folder for p in (files,) if p is not None] + [f for f in (folder,) if f]
            refusals += self._disk([*self.disk_paths, *extra], checked, warnings)
        if "gpu" in self.checks and gpus and not refusals:
            refused, findings = self._gpu(gpus, ours, checked, warnings)
            refusals += refused
        if files is not None and not refusals:
            refusals += self._files(files, checked, warnings)
        verdict = Verdict(
            tuple(refusals), tuple(warnings), tuple(checked), self.clock() - started, findings
        )
        self._log(f"{step} on {worker}: {verdict.summary()}")
        return verdict

    # --- the checks ----------------------------------------------------------------------

    def _ssh(self, checked: list[str]) -> list[Refusal]:
        cached = self._fresh("ssh")
        if cached is not None:
            checked.append(f"ssh {len(self.nodes)} nodes (cached)")
            return []
        health = self.cfg.health
        answers = ssh_check.ask_all(self.nodes, health.ssh_command, health.ssh_timeout)
        bad = [a for a in answers if a.outcome != ssh_check.REACHABLE]
        if not bad:
            self._keep("ssh", True)
            checked.append(f"ssh {len(self.nodes)} nodes")
            return []
        return [
            Refusal(
                "ssh",
                f"ssh: {ssh_check.describe(a)}: bring the node back (check that "
                f"`ssh -o BatchMode=yes {a.node} true` works) or remove it from "
                "[preflight] nodes, then run again",
                "run",
            )
            for a in bad
        ]

    def _disk(self, paths: list[Path], checked: list[str], warnings: list[str]) -> list[Refusal]:
        key = "disk:" + "\0".join(map(str, paths))
        if self._fresh(key) is not None:
            checked.append("disk_space (cached)")
            return []
        health = self.cfg.health
        refusals: list[Refusal] = []
        try:
            usages = disk_check.measure(paths)
        except OSError as exc:
            return [Refusal("disk_space", f"disk_space: cannot measure: {exc}", "run")]
        for usage in usages:
            where = f"{usage.path} has {usage.free_gb:.1f} GB free"
            if usage.free_gb < health.disk_min_free_gb:
                refusals.append(Refusal(
                    "disk_space",
                    f"disk_space: {where} (< [health] disk_min_free_gb = "
                    f"{health.disk_min_free_gb:g}): free space there (old checkpoints, "
                    "outputs) or lower disk_min_free_gb, then run again",
                    "run",
                ))  # fmt: skip
            elif (
                usage.inodes_free_pct is not None
                and usage.inodes_free_pct < health.inodes_min_free_pct
            ):
                refusals.append(Refusal(
                    "disk_space",
                    f"disk_space: {usage.path} has {usage.inodes_free_pct:.1f}% inodes free "
                    f"(< [health] inodes_min_free_pct = {health.inodes_min_free_pct:g}): "
                    "delete small files there, then run again",
                    "run",
                ))  # fmt: skip
            elif usage.free_pct < health.disk_min_free_pct:
                warnings.append(f"disk_space: {where} ({usage.free_pct:.1f}%)")
        if not refusals:
            self._keep(key, True)
            checked.append(f"disk_space {len(usages)} filesystems")
        return refusals

    def _gpu(
        self,
        gpus: Sequence[int],
        ours: Callable[[int], bool],
        checked: list[str],
        warnings: list[str],
    ) -> tuple[list[Refusal], frozenset[str]]:
        cached = self._fresh("gpu")
        if cached is None:
            found = self.read_gpus(ours)
            self._keep("gpu", found)
            checked.append(f"gpu {','.join(map(str, gpus))}")
        else:
            found = cached.value
            checked.append(f"gpu {','.join(map(str, gpus))} (cached)")
        return judge_gpus(found, gpus, warnings)

    def read_gpus(self, ours: Callable[[int], bool] = lambda _pid: False) -> Survey:
        """Every GPU of this machine, read now (NVML, rocm-smi / amdsmi, the kernel log)."""
        return survey(
            self.cfg.health,
            budget=GPU_BUDGET,
            ours=ours,
            nvml=self.nvml,
            kernel_log=self.kernel_log,
        )

    def _files(self, files: StepFiles, checked: list[str], warnings: list[str]) -> list[Refusal]:
        inputs = files.inputs if "inputs" in self.checks else ()
        ramdisk = files.ramdisk if "ramdisk" in self.checks else ()
        if not inputs and not ramdisk:
            return []
        result = check_step_files(files.folder, inputs, ramdisk)
        warnings += result.warnings
        checked.append(f"{result.checked} files")
        return [Refusal(line.split(":", 1)[0], line, "step") for line in result.refusals]

    # --- cache and log -------------------------------------------------------------------

    def _fresh(self, key: str) -> _Cached | None:
        entry = self._cache.get(key)
        if entry is None or self.clock() >= entry.until:
            return None
        return entry

    def _keep(self, key: str, value: Any) -> None:
        seconds = self.cfg.preflight.cache_seconds
        if seconds > 0:
            self._cache[key] = _Cached(self.clock() + seconds, value)

    def _log(self, line: str) -> None:
        if self.log_file is None:
            return
        try:
            self.log_file.parent.mkdir(parents=True, exist_ok=True)
            with open(self.log_file, "a", encoding="utf-8") as fh:
                fh.write(f"{utc_now_iso()} {line}\n")
        except OSError:
            pass  # a full disk is the disk check's to report; the log never stops a step


def judge_gpus(
    found: Survey, gpus: Sequence[int], warnings: list[str]
) -> tuple[list[Refusal], frozenset[str]]:
    """Refusals for the CRITICAL ones of `gpus`; all their findings (for what appears later)."""
    wanted = set(gpus)
    mine = [gpu for gpu in found.gpus if gpu.index in wanted]
    findings = findings_of(mine)
    refusals: list[Refusal] = []
    for gpu in mine:
        critical = [f.text for f in gpu.findings if f.status == Status.CRITICAL]
        if critical:
            refusals.append(Refusal(
                "gpu",
                f"gpu: {gpu.label} ({gpu.vendor}{' ' + gpu.bus_id if gpu.bus_id else ''}): "
                f"{'; '.join(critical)}: taken out of this run; reset the GPU or reboot, or add "
                f"{gpu.index} to [health] excluded_gpus",
                "gpu",
                (gpu.index,),
            ))  # fmt: skip
        else:
            warnings += [
                f"gpu: {gpu.label}: {f.text}" for f in gpu.findings if f.status == Status.WARNING
            ]
    if found.gpus:
        seen = {gpu.index for gpu in found.gpus}
        for index in sorted(wanted - seen):
            refusals.append(Refusal(
                "gpu",
                f"gpu: GPU{index} is not among the GPUs the driver lists (fallen off the bus?): "
                f"taken out of this run; check `nvidia-smi` / `rocm-smi`, or add {index} to "
                "[health] excluded_gpus",
                "gpu",
                (index,),
            ))  # fmt: skip
    else:
        warnings.append("gpu: no NVML or rocm-smi answered here: GPU health not checked")
    # A vendor tool that does not answer at all (rocm-smi hung on its SMU, NVML that cannot
    # start) speaks for every GPU of that machine.
    machine = [f.text for scan in found.scans for f in scan.findings if f.status == Status.CRITICAL]
    if machine and not refusals:
        refusals.append(Refusal(
            "gpu",
            f"gpu: {'; '.join(machine)}: GPUs {','.join(map(str, gpus))} taken out of this run",
            "gpu",
            tuple(gpus),
        ))  # fmt: skip
    return refusals, findings


def runner_preflight(
    cfg: Config, ledger: Path, *, nodes: Sequence[str] = (), nvml: Any | None = None
) -> Preflight:
    """The preflight of a runner on `ledger`: its filesystem checked, results logged in
    `logs/preflight.log` beside it; `nodes` (a study's own) added to [preflight] nodes."""
    folder = ledger.parent
    return Preflight(
        cfg, [folder], log_file=folder / "logs" / PREFLIGHT_LOG, nodes=tuple(nodes), nvml=nvml
    )
