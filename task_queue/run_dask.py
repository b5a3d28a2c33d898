"""`task-queue run --backend dask`: connect (or start a local cluster), check, run the manager.

Needs the `dask` extra (`pip install 'trainguard[dask]'`). Without `--scheduler` a cluster of
named workers on this machine is started (one per slot, each with its GPU pinned), as
`dask worker ... --name NAME --nthreads 1` would be by hand.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from crash_detector.rules import load_rules
from crash_detector.scanner import Scanner
from task_queue.backends.dask import DaskBackend
from task_queue.backends.local import plan_slots, visible_gpus
from task_queue.ledger import Ledger, Task
from task_queue.manager import NO_WORKER, Manager
from task_queue.preflight import StepFiles, runner_preflight
from task_queue.remote_attempt import WorkerChecks, no_allowed_failures, trainguard_version
from trainguard import __version__
from trainguard.config import Config
from trainguard.errors import TrainguardError
from trainguard.host import this_host

CONNECT_TIMEOUT = 10.0  # seconds to reach the scheduler
WORKER_WAIT = 30.0  # seconds to wait for a first worker


class NoWorker(TrainguardError):
    exit_code = NO_WORKER


def run_dask(
    ledger: Ledger,
    cfg: Config,
    *,
    scheduler: str,
    slots: str | int,
    until_done: bool,
    on_change: Callable[[int], None] | None = None,
    say: Callable[[str], None] | None = None,
    step_files: Callable[[Task], StepFiles | None] | None = None,
    nodes: Sequence[str] = (),
) -> int:
    """Run the ledger's tasks on Dask workers. Preflight: ssh, disk and the step's files here,
    before each task; each worker checks its own GPU before, and cleans it after, each one."""
    try:
        import distributed
    except ImportError:
        raise NoWorker(
            "--backend dask needs Dask distributed: pip install 'trainguard[dask]'"
        ) from None
    # Dask's own ERROR lines (a task "marked as failed because 1 workers died") repeat what the
    # runner says itself, in the ledger's words.
    logging.getLogger("distributed").setLevel(logging.CRITICAL)
    with _cluster(distributed, cfg, scheduler, slots) as (client, gpu_of):
        _check_versions(client)
        client.run_on_scheduler(no_allowed_failures)
        names = sorted(
            str(w["name"]) for w in client.scheduler_info(n_workers=-1)["workers"].values()
        )
        where = scheduler or "a local cluster"
        tell = say or (lambda line: print(line, flush=True))
        tell(f"task-queue: ledger {ledger.path}; Dask at {where}; workers: {', '.join(names)}")
        wakes: list[Any] = []
        backend = DaskBackend(
            client,
            Path(ledger.path).parent / "logs",
            lambda: wakes[0](),
            gpu_of=gpu_of,
            checks=worker_checks(cfg),
        )
        manager = Manager(
            ledger,
            backend,
            host=this_host(),
            scanner=lambda: Scanner(load_rules()),
            until_done=until_done,
            say=tell,
            on_change=on_change,
            preflight=runner_preflight(cfg, Path(ledger.path), nodes=nodes),
            step_files=step_files,
            exclude_gpu_on=cfg.queue.exclude_gpu_on,
        )
        wakes.append(manager.wake)
        return manager.run()


@contextlib.contextmanager
def _cluster(
    distributed: Any, cfg: Config, scheduler: str, slots: str | int
) -> Iterator[tuple[Any, Any]]:
    import dask

    dask.config.set({"distributed.scheduler.allowed-failures": 0})
    if scheduler:
        try:
            client = distributed.Client(scheduler, timeout=CONNECT_TIMEOUT)
        except (OSError, TimeoutError) as exc:
            raise NoWorker(f"cannot reach the Dask scheduler at {scheduler}: {exc}") from None
        try:
            _wait_for_a_worker(client, scheduler)
            yield client, lambda _name: None
        finally:
            client.close()
        return
    host = this_host()
    excluded = cfg.excluded_gpus(host)
    planned = plan_slots(
        slots, host=host, visible=visible_gpus(os.environ, None), excluded=excluded
    )
    workers = {
        slot.name: {
            "cls": distributed.Nanny,
            "options": {"nthreads": 1, "name": slot.name, "silence_logs": logging.CRITICAL},
        }
        for slot in planned
    }
    gpus = {slot.name: slot.visible for slot in planned}
    scheduler_spec = {
        "cls": distributed.Scheduler,
        "options": {"dashboard_address": None, "host": "127.0.0.1"},
    }
    cluster = distributed.SpecCluster(
        workers=workers, scheduler=scheduler_spec, silence_logs=logging.CRITICAL
    )
    try:
        client = distributed.Client(cluster)
        try:
            client.wait_for_workers(len(workers), timeout=WORKER_WAIT)
            yield client, lambda name: gpus.get(name) or ""
        finally:
            client.close()
    finally:
        cluster.close()


def _wait_for_a_worker(client: Any, scheduler: str) -> None:
    try:
        client.wait_for_workers(1, timeout=WORKER_WAIT)
    except (OSError, TimeoutError):
        raise NoWorker(
            f"no Dask worker joined the scheduler at {scheduler} within {WORKER_WAIT:g} s"
        ) from None


def worker_checks(cfg: Config) -> WorkerChecks:
    """What each worker checks before, and does after, every attempt."""
    return WorkerChecks(
        gpu="gpu" in cfg.preflight.checks,
        excluded=tuple(cfg.health.excluded_gpus),
        excluded_by_host={host: tuple(cfg.excluded_gpus(host)) for host in cfg.queue.nodes},
        post_task=tuple(cfg.queue.post_task),
        post_task_timeout=cfg.queue.post_task_timeout,
        rocm_smi=tuple(cfg.health.rocm_smi_command),
        cache_seconds=cfg.preflight.cache_seconds,
    )


def _check_versions(client: Any) -> None:
    """Dask's own check (Python, dask, distributed...), then trainguard's on every worker."""
    try:
        client.get_versions(check=True)
    except ValueError as exc:
        raise NoWorker(f"Dask versions differ between this client and the cluster: {exc}") from None
    theirs = client.run(trainguard_version)
    wrong = {worker: v for worker, v in theirs.items() if v != __version__}
    if wrong:
        listed = ", ".join(f"{w} has {v}" for w, v in sorted(wrong.items()))
        raise NoWorker(f"trainguard {__version__} here, but {listed}: install the same version")
