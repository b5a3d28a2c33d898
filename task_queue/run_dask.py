"""`task-queue run --backend dask`: connect (or start a local cluster), check, run the manager.

Needs the `dask` extra (`pip install 'trainguard[dask]'`). Without `--scheduler` a cluster of
named workers on this machine is started (one per slot, each with its GPU pinned), as
`dask worker ... --name NAME --nthreads 1` would be by hand.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from crash_detector.rules import load_rules
from crash_detector.scanner import Scanner
from task_queue.backends.dask import DaskBackend
from task_queue.backends.local import plan_slots, this_host, visible_gpus
from task_queue.ledger import Ledger
from task_queue.manager import NO_WORKER, Manager
from task_queue.remote_attempt import no_allowed_failures, trainguard_version
from trainguard import __version__
from trainguard.config import Config
from trainguard.errors import TrainguardError

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
) -> int:
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
            client, Path(ledger.path).parent / "logs", lambda: wakes[0](), gpu_of=gpu_of
        )
        manager = Manager(
            ledger,
            backend,
            host=this_host(),
            scanner=lambda: Scanner(load_rules()),
            until_done=until_done,
            say=tell,
            on_change=on_change,
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
    node = cfg.queue.nodes.get(host)
    excluded = [*cfg.health.excluded_gpus, *(node.excluded_gpus if node else [])]
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
