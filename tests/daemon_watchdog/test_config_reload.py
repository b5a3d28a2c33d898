"""SIGHUP's config reload, planned purely: what applies live, at the next start, or not at all."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from daemon_watchdog.config_reload import plan_reload
from trainguard.config import Config, load_config


def _config(tmp_path: Path, text: str) -> Config:
    path = tmp_path / "trainguard.toml"
    path.write_text(text)
    return load_config(path, env={})


def test_no_change_says_so(tmp_path: Path) -> None:
    old = _config(tmp_path, "[watchdog]\nprogress_timeout = 60\n")
    plan = plan_reload(old, old)
    assert plan.summary() == "config reloaded: no changes"
    assert plan.config == old


def test_timeouts_apply_the_command_at_next_start_and_paths_are_kept(tmp_path: Path) -> None:
    old = _config(tmp_path, "[watchdog]\nprogress_timeout = 60\n")
    new = _config(
        tmp_path,
        '[watchdog]\nprogress_timeout = 30\nstate_file = "elsewhere.json"\n'
        "[watchdog.phase_timeouts]\neval = 900\n"
        '[daemon]\ncommand = ["python3", "train.py"]\nlog_file = "other.log"\n'
        '[metrics]\nlisten = "127.0.0.1:9999"\n',
    )
    plan = plan_reload(old, new)
    assert plan.config.watchdog.progress_timeout == 30
    assert plan.config.watchdog.phase_timeouts == {"eval": 900}
    assert plan.config.daemon.command == ["python3", "train.py"]
    # What the watchdog holds open or has handed out stays until the watchdog restarts.
    assert plan.config.watchdog.state_file == old.watchdog.state_file
    assert plan.config.daemon.log_file == old.daemon.log_file
    assert plan.config.metrics == old.metrics
    assert plan.applied == (
        "watchdog.progress_timeout: 60.0 -> 30.0",
        "watchdog.phase_timeouts: {} -> {'eval': 900.0}",
    )
    assert plan.next_start == ("daemon.command: " + repr(old.daemon.command) + " -> "
                               "['python3', 'train.py']",)  # fmt: skip
    assert {k.split(":")[0] for k in plan.kept} == {
        "daemon.log_file",
        "watchdog.state_file",
        "metrics.listen",
    }
    assert "NOT applied" in plan.summary()


def test_a_base_dir_change_is_never_applied(tmp_path: Path) -> None:
    old = _config(tmp_path, "")
    new = replace(old, base_dir="/somewhere/else")
    plan = plan_reload(old, new)
    assert plan.config.base_dir == old.base_dir
    assert len(plan.kept) == 1 and plan.kept[0].startswith("base_dir: ")
    assert plan.kept[0].endswith(" -> '/somewhere/else'")


def test_a_recovery_table_applies_from_the_next_crash(tmp_path: Path) -> None:
    old = _config(tmp_path, "[watchdog]\nprogress_timeout = 60\n")
    new = _config(
        tmp_path,
        "[watchdog]\nprogress_timeout = 60\n"
        '[watchdog.recovery]\ncuda_oom = { halve = "config:batch_size", floor = 2 }\n',
    )
    plan = plan_reload(old, new)
    assert plan.config == new
    rule = plan.config.watchdog.recovery.cuda_oom
    assert rule is not None and (rule.halve, rule.floor) == ("config:batch_size", 2)
    assert plan.applied == (
        "watchdog.recovery: {} -> {'cuda_oom': {'halve': 'config:batch_size', 'floor': 2.0, "
        "'double': ''}}",
    )
