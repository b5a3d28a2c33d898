"""`daemon-watchdog run` with one thing simulated: the GPU survey says GPU1 has fallen off the
bus (Xid 79). No GPU can be made to fail for real; the rest is the real watchdog: the crash, its
diagnosis, the `[watchdog.recovery] gpu_hardware` action, the restarted daemon's environment.

usage: python -m edge_cases.children.gpu_watchdog CONFIG
"""

from __future__ import annotations

import sys

from daemon_watchdog.lock import WorkspaceLock
from daemon_watchdog.logsetup import setup_logging
from daemon_watchdog.supervisor import Supervisor
from edge_cases.children import LOST_GPU_FINDING
from health_check.checks.gpu_model import GpuReading
from health_check.result import Status
from trainguard.config import load_config
from trainguard.workspace import Workspace


def two_gpus_one_lost() -> list[GpuReading]:
    healthy = GpuReading(0, "nvidia", name="SIMULATED GPU", bus_id="00000000:3B:00.0")
    lost = GpuReading(1, "nvidia", name="SIMULATED GPU", bus_id="00000000:86:00.0")
    lost.add(Status.CRITICAL, LOST_GPU_FINDING)
    return [healthy, lost]


def main() -> int:
    ws = Workspace(load_config(sys.argv[1]))
    lock = WorkspaceLock(ws.lock_file)
    lock.acquire()
    try:
        setup_logging(ws.path("logs/watchdog.log"), as_json=False)
        return Supervisor(ws, gpu_survey=two_gpus_one_lost).run()
    finally:
        lock.release()


if __name__ == "__main__":
    raise SystemExit(main())
