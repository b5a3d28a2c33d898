"""The watchdog's Prometheus collector, read through prometheus_client's own text parser."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from crash_detector.rules import CATEGORIES
from daemon_watchdog.metrics import WatchdogCollector
from daemon_watchdog.workspace_init import init_workspace
from tests.polling import wait_until
from tests.trainguard.test_checkpoints import make_checkpoint
from trainguard.config import load_config
from trainguard.procs import identify
from trainguard.watchdog_status import WatchdogStatus
from trainguard.workspace import Workspace

CHILDREN = Path(__file__).resolve().parents[1] / "children"


def scrape(ws: Workspace, status: dict[str, Any]) -> dict[str, list[Any]]:
    registry = CollectorRegistry(auto_describe=False)
    # The state as the watchdog publishes it: read through the same typed record.
    registry.register(WatchdogCollector(ws, lambda: WatchdogStatus.from_json(status)))
    text = generate_latest(registry).decode()
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def test_state_restarts_progress_checkpoints_and_daemon_tree(tmp_path: Path) -> None:
    ws = Workspace(load_config(init_workspace(tmp_path / "ws")))
    make_checkpoint(ws.checkpoints_dir, 10)
    make_checkpoint(ws.checkpoints_dir, 20)
    ready = tmp_path / "ready"
    daemon = subprocess.Popen([sys.executable, str(CHILDREN / "sleeper.py"), str(ready)])
    try:
        wait_until(ready.exists)
        me = identify(daemon.pid)
        assert me is not None
        status = {
            "state": "RUNNING",
            "daemon": me.to_json(),
            # the list keeps only the newest restarts; the totals count every one
            "restarts": [{"category": "cuda_oom"}],
            "restart_totals": {"cuda_oom": 70, "unknown": 1},
            "last_progress": {"step": 17, "phase": "train", "at": "2026-01-01T00:00:00Z"},
        }
        metrics = scrape(ws, status)
    finally:
        daemon.kill()
        daemon.wait()
    states = {s.labels["state"]: s.value for s in metrics["trainguard_watchdog_state"]}
    assert states["RUNNING"] == 1 and states["FATAL"] == 0 and len(states) == 7
    restarts = {
        s.labels["category"]: s.value
        for s in metrics["trainguard_watchdog_restarts"]
        if s.name.endswith("_total")
    }
    assert restarts == {c: {"cuda_oom": 70.0, "unknown": 1.0}.get(c, 0.0) for c in CATEGORIES}
    assert metrics["trainguard_progress_step"][0].value == 17
    assert metrics["trainguard_progress_age_seconds"][0].value > 3600
    assert metrics["trainguard_checkpoints"][0].value == 2
    assert metrics["trainguard_daemon_rss_bytes"][0].value > 1_000_000


def test_nothing_published_yet_still_scrapes(tmp_path: Path) -> None:
    ws = Workspace(load_config(init_workspace(tmp_path / "ws")))
    metrics = scrape(ws, {})
    assert all(s.value == 0 for s in metrics["trainguard_watchdog_state"])
    assert "trainguard_daemon_rss_bytes" not in metrics


def test_recovery_actions_are_counted_and_changed_knobs_shown(tmp_path: Path) -> None:
    ws = Workspace(load_config(init_workspace(tmp_path / "ws")))
    recovery = {
        "knobs": {"config:batch_size": {"original": 64, "value": 16}},
        "events": [],
        "totals": {"halve": 2, "rewind": 1},
    }
    metrics = scrape(ws, {"state": "RUNNING", "recovery": recovery})
    actions = {
        s.labels["action"]: s.value
        for s in metrics["trainguard_watchdog_recovery_actions"]
        if s.name.endswith("_total")
    }
    assert actions == {
        "halve": 2, "double": 0, "exclude_gpu": 0, "rewind": 1, "scale": 0, "prune": 0, "reset": 0
    }  # fmt: skip
    assert metrics["trainguard_watchdog_recovery_knobs_changed"][0].value == 1
    empty = scrape(ws, {})
    assert empty["trainguard_watchdog_recovery_knobs_changed"][0].value == 0
