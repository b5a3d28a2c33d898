"""What a Dask worker runs for one attempt, and how the manager stops attempts there.

The worker process runs `run_attempt` in its thread: the attempt is a child in its own session
with the owner token, exactly as the local backend starts it, and what it left is swept on
that machine before the result goes back. Only plain data crosses the wire.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from health_check.checks.gpu import Survey, survey
from task_queue.gpu_cleanup import clean_after_attempt
from task_queue.gpu_state import read_gpu_state, visible_indexes
from task_queue.preflight import GPU_BUDGET, judge_gpus
from trainguard.child_process import SpawnError, spawn_child
from trainguard.config import HealthSection
from trainguard.host import this_host
from trainguard.process_tree import kill_tree
from trainguard.procs import find_any_marked
from trainguard.timestamps import utc_now_iso

TAIL_BYTES = 256 * 1024  # of its own output, sent back for the manager to classify
STOP_GRACE = 5.0


@dataclass(frozen=True)
class WorkerChecks:
    """What a worker checks before and does after each attempt (plain data, sent with it)."""

    gpu: bool = False  # preflight of the worker's GPUs ([preflight] checks has "gpu")
    # GPUs never used: [health] excluded_gpus, and per host (by its short name, which only
    # the worker's machine knows: the scheduler lists workers by address).
    excluded: tuple[int, ...] = ()
    excluded_by_host: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    post_task: tuple[str, ...] = ()
    post_task_timeout: float = 60.0
    rocm_smi: tuple[str, ...] = ("rocm-smi",)
    cache_seconds: float = 5.0  # a GPU reading is reused this long by the next attempt


_last_reading: list[tuple[float, Survey]] = []  # this worker's latest GPU reading


def run_attempt(
    argv: Sequence[str],
    *,
    cwd: str,
    env: Mapping[str, str],
    token: str,
    log_file: str,
    header: bytes,
    checks: WorkerChecks | None = None,
) -> dict[str, Any]:
    """Run the attempt to its end on this worker: {"code", "pid", "log_offset", "tail",
    "gpu_state", "after"}; {"spawn_error": reason} when its program cannot be started here;
    {"refused": line, "gpus": [...]} when its GPU is excluded or unhealthy (nothing ran)."""
    import distributed

    checks = checks or WorkerChecks()
    worker = distributed.get_worker()
    full_env = {**env, "TRAINGUARD_WORKER": str(worker.name)}
    pinned = full_env.get("CUDA_VISIBLE_DEVICES", os.environ.get("CUDA_VISIBLE_DEVICES"))
    indexes = visible_indexes(pinned)
    here = checks.excluded_by_host.get(this_host(), checks.excluded)
    excluded = sorted(set(indexes or ()) & set(here))
    if excluded:
        return {
            "refused": f"gpu: worker {worker.name} is pinned to excluded GPU "
            f"{','.join(map(str, excluded))} ([health] / [queue.nodes] excluded_gpus of "
            f"{socket.gethostname()}): start it on another GPU",
            "gpus": excluded,
        }
    baseline: frozenset[str] = frozenset()
    if checks.gpu and indexes:
        refusals, baseline = judge_gpus(_reading(checks), indexes, [])
        if refusals:
            return {"refused": refusals[0].line, "gpus": list(refusals[0].gpus)}
    try:
        child = spawn_child(
            list(argv),
            cwd=Path(cwd),
            log_file=Path(log_file),
            token=token,
            started_at=utc_now_iso(),
            env=full_env,
            what="the task",
            header=header,
            wait_for_exec=False,
        )
    except SpawnError as exc:
        return {"spawn_error": str(exc)}
    assert child.proc is not None
    code = child.proc.wait()
    # What it left in its process group (its own session's): gone in one call, no scan. The
    # group's id cannot name anyone else while a member is left. What changed group is found
    # by the manager's later token sweep (`kill_tokens`).
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.pid, signal.SIGKILL)
    # The GPUs this worker is pinned to (every GPU if it is not pinned; none if pinned to "").
    after = clean_after_attempt(
        indexes,
        token,
        post_task=checks.post_task,
        post_task_timeout=checks.post_task_timeout,
        log_file=Path(log_file),
    )
    gpu_state = None
    if code != 0:
        health = HealthSection(rocm_smi_command=list(checks.rocm_smi))
        gpu_state = read_gpu_state(indexes, before=baseline, health=health)
    return {
        "code": code,
        "pid": child.pid,
        "log_offset": child.log_offset,
        "tail": _tail(Path(log_file), child.log_offset),
        "gpu_state": gpu_state,
        "after": after,
    }


def _reading(checks: WorkerChecks) -> Survey:
    """This machine's GPUs, read at most once per `cache_seconds` (one thread per worker)."""
    now = time.monotonic()
    if _last_reading and now - _last_reading[0][0] < checks.cache_seconds:
        return _last_reading[0][1]
    health = HealthSection(rocm_smi_command=list(checks.rocm_smi))
    found = survey(health, budget=GPU_BUDGET, ours=lambda _pid: True)
    _last_reading[:] = [(now, found)]
    return found


def kill_tokens(tokens: Sequence[str], *, polite: bool = True) -> list[str]:
    """On a worker's machine: stop every process of ours carrying one of `tokens`. `polite`
    (a cancel, a timeout): SIGTERM, then SIGKILL after STOP_GRACE. Otherwise (the leftovers of
    an ended attempt, or of one whose worker died: headless, nothing to save) SIGKILL at once,
    which never keeps the caller waiting. For `Client.run`, and the runner's own machine."""
    procs = find_any_marked(tokens)
    if not procs:
        return []
    sig, grace = (signal.SIGTERM, STOP_GRACE) if polite else (signal.SIGKILL, 1.0)
    report = kill_tree(procs, sig=sig, timeout=grace)
    return [str(pid) for pid in (*report.exited, *report.killed)]


def trainguard_version() -> str:
    from trainguard import __version__

    return __version__


def no_allowed_failures(dask_scheduler: Any) -> int:
    """For `Client.run_on_scheduler`: a task whose worker dies fails at once (KilledWorker),
    so that only the ledger decides where it runs again."""
    dask_scheduler.allowed_failures = 0
    return int(dask_scheduler.allowed_failures)


def _tail(path: Path, since: int) -> bytes:
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            start = max(since, size - TAIL_BYTES)
            fh.seek(start)
            return fh.read(size - start)
    except OSError:
        return b""
