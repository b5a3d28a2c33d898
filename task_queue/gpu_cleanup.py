"""After each attempt: no process of ours may still hold memory on its GPUs, and the
`[queue] post_task` hook runs.

A leftover is a process NVML lists on one of the attempt's GPUs that is proven ours: our user,
and the attempt's owner token in its environment (a pid recycled since the listing carries no
token; the kill pins the process by pidfd, so it can never reach a newcomer). Leftovers are
SIGKILLed (headless: what they held is lost with the attempt anyway) and recorded. Processes of
anyone else on that GPU are reported, never touched. AMD process lists come from amdsmi; with
rocm-smi alone there is none, and the token sweep that follows every attempt finds ours.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil

from health_check.checks.amd import read_amd_processes
from health_check.checks.nvidia import read_nvidia_processes
from trainguard.orphan_sweep import kill_orphans
from trainguard.procs import has_owner_mark

KILL_TIMEOUT = 5.0


def clean_after_attempt(
    gpus: Sequence[int] | None,
    token: str,
    *,
    post_task: Sequence[str],
    post_task_timeout: float,
    log_file: Path,
    nvml: Any | None = None,
) -> dict[str, Any]:
    """Everything after an attempt, where it ran (the local backend, a Dask worker): its
    leftovers on `gpus` killed (None: every GPU; empty: no GPU, nothing to read), then the
    post_task hook. What happened, for the ledger's `gpu_state`."""
    record: dict[str, Any] = {}
    if gpus is None or gpus:
        killed, others = clean_gpus(gpus, token, nvml=nvml)
        if killed:
            record["gpu_leftovers_killed"] = killed
        if others:
            record["gpu_held_by_others"] = others
    if post_task:
        record["post_task"] = run_post_task(
            post_task, gpus, timeout=post_task_timeout, log_file=log_file
        )
    return record


def clean_gpus(
    gpus: Sequence[int] | None,
    token: str,
    *,
    nvml: Any | None = None,
    amdsmi: Any | None = None,
) -> tuple[list[str], list[str]]:
    """Kill what the attempt marked `token` left on `gpus` (None: every GPU): (killed, others
    still there). NVIDIA through NVML, AMD through amdsmi (`nvml`, `amdsmi`: the modules, None
    to import them)."""
    listed = [(gpu.label, gpu.index, gpu.processes) for gpu in read_nvidia_processes(nvml).gpus]
    listed += [(f"GPU{i}", i, procs) for i, procs in read_amd_processes(amdsmi).items()]
    ours: dict[int, psutil.Process] = {}
    others: list[str] = []
    for label, index, processes in listed:
        if gpus is not None and index not in gpus:
            continue
        for pid, used in processes:
            size = f", {used / 2**30:.1f} GiB" if used else ""
            try:
                proc = psutil.Process(pid)
                mine = proc.uids().real == os.getuid() and has_owner_mark(proc, token)
            except psutil.Error:
                continue  # gone since the listing: it holds nothing now
            if mine:
                ours[pid] = proc
            else:
                others.append(f"{label}: pid {pid}{size} (not this attempt's)")
    if not ours:
        return [], others
    swept = kill_orphans(list(ours.values()), timeout=KILL_TIMEOUT)
    return list(swept.names), others


def run_post_task(
    template: Sequence[str], gpus: Sequence[int] | None, *, timeout: float, log_file: Path
) -> dict[str, Any]:
    """Run the hook (argv; `{gpus}` becomes "0,1", "" for every GPU), its output appended to
    the attempt's log; killed with its process group after `timeout` s. What happened, for the
    ledger."""
    visible = ",".join(map(str, gpus or ()))
    argv = [arg.replace("{gpus}", visible) for arg in template]
    record: dict[str, Any] = {"argv": argv}
    try:
        with open(log_file, "ab") as log:
            log.write(f"=== post_task: {argv}\n".encode())
            log.flush()
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own group: a timeout kills what it started too
            )
    except OSError as exc:
        record["error"] = f"cannot run: {exc.strerror or exc}"
        return record
    try:
        record["exit_code"] = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # not reaped yet: the group id is still its own
        proc.wait()
        record["error"] = f"timed out after {timeout:g} s and was killed"
    return record
