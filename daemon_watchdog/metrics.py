"""Prometheus /metrics served by the watchdog (`[metrics] listen = "127.0.0.1:9464"`).

Values are gathered at scrape time by a collector that reads the state the event loop last
published (a dict swapped whole, so a scrape never sees half an update) plus the live system
(daemon tree RSS/CPU, checkpoints, GPUs). prometheus_client (~10 MiB) is imported only when
metrics are on.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import psutil

from crash_detector.rules import CATEGORIES
from daemon_watchdog.states import State
from trainguard.checkpoints import find_candidates
from trainguard.procs import locate_marked
from trainguard.timestamps import parse_iso_utc
from trainguard.watchdog_status import COUNTED_ACTIONS, WatchdogStatus
from trainguard.workspace import Workspace

log = logging.getLogger("daemon_watchdog")

PREFIX = "trainguard"
NVML_RETRY_S = 300.0  # a host without a usable NVML is asked again this rarely


class WatchdogCollector:
    def __init__(self, ws: Workspace, snapshot: Callable[[], WatchdogStatus | None]) -> None:
        self.ws = ws
        self.snapshot = snapshot
        self._nvml: Any = None
        self._nvml_failed_at: float | None = None

    def describe(self) -> list[Any]:
        return []  # collected on demand only; no duplicate-name checks at registration

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        status = self.snapshot()
        state = GaugeMetricFamily(
            f"{PREFIX}_watchdog_state", "1 for the watchdog's current state", labels=["state"]
        )
        for name in State:
            now = status is not None and status.state == name.value
            state.add_metric([name.value], 1.0 if now else 0.0)
        yield state

        # `_total` is added by the exposition format. Every category is there from the start,
        # at 0, so rate() and alerts see the first restart; the totals never go down (the
        # `restarts` list keeps only the newest 50).
        restarts = CounterMetricFamily(
            f"{PREFIX}_watchdog_restarts", "Daemon restarts by crash category", labels=["category"]
        )
        counts = Counter(status.restart_totals if status is not None else {})
        for category in sorted({*CATEGORIES, *counts}):
            restarts.add_metric([category], float(counts.get(category, 0)))
        yield restarts

        actions = CounterMetricFamily(
            f"{PREFIX}_watchdog_recovery_actions",
            "Recovery actions taken before restarts ([watchdog.recovery]), by kind",
            labels=["action"],
        )
        taken = status.recovery.totals if status is not None else {}
        for action in sorted({*COUNTED_ACTIONS, *taken}):  # at 0 from the start
            actions.add_metric([action], float(taken.get(action, 0)))
        yield actions
        changed = len(status.recovery.knobs) if status is not None else 0
        yield GaugeMetricFamily(
            f"{PREFIX}_watchdog_recovery_knobs_changed",
            "Knobs recovery changed that `restart --reset-recovery` has not put back",
            value=changed,
        )

        progress = status.last_progress if status is not None else None
        if progress is not None:
            yield GaugeMetricFamily(
                f"{PREFIX}_progress_step", "Last training step seen", value=progress.step
            )
        at = parse_iso_utc(progress.at if progress is not None else None)
        if at is not None:
            yield GaugeMetricFamily(
                f"{PREFIX}_progress_age_seconds",
                "Seconds since the last progress",
                value=max(0.0, time.time() - at.timestamp()),
            )
        yield from self._checkpoints()
        if status is not None:
            yield from self._daemon(status)
        yield from self._gpus()

    def _checkpoints(self) -> Iterator[Any]:
        """By name and mtime only: validating on every scrape would read every byte of each
        `.bin`/`.pt`/`.ckpt` checkpoint (zip checksums)."""
        from prometheus_client.core import GaugeMetricFamily

        cfg = self.ws.config.checkpoints
        try:
            found = [
                c for c in find_candidates(self.ws.checkpoints_dir, cfg.pattern) if not c.staged
            ]
        except OSError:
            return
        newest = max((c.mtime for c in found), default=None)
        yield GaugeMetricFamily(
            f"{PREFIX}_checkpoints", "Checkpoints on disk (not validated)", value=len(found)
        )
        if newest is not None:
            yield GaugeMetricFamily(
                f"{PREFIX}_checkpoint_newest_age_seconds",
                "Age of the newest checkpoint (its newest file)",
                value=max(0.0, time.time() - newest),
            )

    def _daemon(self, status: WatchdogStatus) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        root = locate_marked(status.daemon, status.owner_token) if status.daemon else None
        if root is None:
            return
        rss = cpu = 0.0
        try:
            tree = [root, *root.children(recursive=True)]
        except psutil.Error:
            tree = [root]
        for proc in tree:
            try:
                with proc.oneshot():
                    rss += proc.memory_info().rss
                    times = proc.cpu_times()
                    cpu += times.user + times.system
            except psutil.Error:
                continue
        yield GaugeMetricFamily(
            f"{PREFIX}_daemon_rss_bytes", "RSS of the daemon and its workers", value=rss
        )
        yield CounterMetricFamily(
            f"{PREFIX}_daemon_cpu_seconds", "CPU time of the live daemon tree", value=cpu
        )

    def _gpus(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        nvml = self._nvml_module()
        if nvml is None:
            return
        temp = GaugeMetricFamily(
            f"{PREFIX}_gpu_temperature_celsius", "GPU temperature", labels=["gpu"]
        )
        used = GaugeMetricFamily(
            f"{PREFIX}_gpu_memory_used_bytes", "GPU memory in use", labels=["gpu"]
        )
        try:
            for index in range(nvml.nvmlDeviceGetCount()):
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                temp.add_metric(
                    [str(index)], nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU)
                )
                used.add_metric([str(index)], nvml.nvmlDeviceGetMemoryInfo(handle).used)
        except nvml.NVMLError as exc:
            log.warning("GPU metrics unavailable: %s", exc)
        yield temp
        yield used

    def _nvml_module(self) -> Any:
        if self._nvml is not None:
            return self._nvml
        if (
            self._nvml_failed_at is not None
            and time.monotonic() - self._nvml_failed_at < NVML_RETRY_S
        ):
            return None
        try:
            import pynvml

            pynvml.nvmlInit()  # kept initialised for the watchdog's lifetime
        except Exception:  # no library, no driver, no GPU: no GPU metrics, not an error
            self._nvml_failed_at = time.monotonic()
            return None
        self._nvml = pynvml
        return pynvml


def serve(ws: Workspace, snapshot: Callable[[], WatchdogStatus | None]) -> Any:
    """Start the /metrics HTTP server thread; returns the server (call `.shutdown()`)."""
    from prometheus_client import CollectorRegistry, start_http_server

    host, _, port = ws.config.metrics.listen.rpartition(":")
    registry = CollectorRegistry(auto_describe=False)
    registry.register(WatchdogCollector(ws, snapshot))
    server, _thread = start_http_server(int(port), addr=host.strip("[]"), registry=registry)
    log.info("serving Prometheus metrics on http://%s/metrics", ws.config.metrics.listen)
    return server
