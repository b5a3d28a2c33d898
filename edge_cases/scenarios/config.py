"""Broken configuration: trainguard.toml, the job's config.json, a base model that vanished."""

from __future__ import annotations

import shutil

from edge_cases.sandbox import Sandbox
from edge_cases.scenario import Scenario, expect

EX_CONFIG = 78
NAGIOS_CRITICAL = 2
NAGIOS_UNKNOWN = 3


def config_corruption(sb: Sandbox) -> str:
    sb.create()
    good = sb.config.read_text()
    sb.configure("watchdog", max_restarts=-1, bogus_key=1)
    run = sb.tool("daemon_watchdog", "run", "--exit-when-done", timeout=15)
    expect(run.returncode == EX_CONFIG, f"invalid values: run exited {run.returncode}, not 78")
    for key in ("watchdog.max_restarts", "watchdog.bogus_key"):
        expect(key in run.stderr, f"the refusal does not name {key}: {run.stderr.strip()!r}")
    sb.config.write_bytes(good.encode()[: len(good) // 2] + b"\n[daemon\n\xff\xfe")
    run = sb.tool("daemon_watchdog", "run", "--exit-when-done", timeout=15)
    expect(run.returncode == EX_CONFIG, f"truncated TOML: run exited {run.returncode}, not 78")
    expect(
        not sb.path(".daemon.pid").exists() and not sb.path("status/watchdog.json").exists(),
        "a refused config still started something (pid file or state file written)",
    )
    expect(not sb.daemons(), "a daemon runs although the config was refused")
    health = sb.tool("health_check", "--quiet")
    expect(
        health.returncode == NAGIOS_UNKNOWN,
        f"health-check on a broken config exited {health.returncode}, not 3",
    )
    sb.config.write_text(good)
    sb.start_watchdog()
    sb.wait_running(past_step=5)
    return "exit 78 naming each bad key, nothing started; repaired file runs"


def job_config_corruption(sb: Sandbox) -> str:
    sb.create()
    code, report = sb.tool_json("health_check", "--only", "config")
    expect(code == 0, f"health-check --only config on a good workspace: exit {code}")
    job = sb.path("config.json")
    text = job.read_bytes()
    job.write_bytes(text[: len(text) // 2])  # a save cut short by a full disk or a crash
    sb.start_watchdog()
    status = sb.wait_state("FATAL")
    category = status.last_crash.category if status.last_crash is not None else None
    expect(category == "config_error", f"classified {category!r}")
    expect(status.restart_count == 0, f"restarted {status.restart_count} times")
    code, report = sb.tool_json("health_check", "--only", "config")
    summary = report.get("checks", [{}])[0].get("summary")
    expect(code == NAGIOS_CRITICAL, f"health-check on the broken config.json: {code}, {summary!r}")
    fixed = sb.tool("health_check", "--only", "config", "--fix", "--quiet")
    expect(fixed.returncode == 0, f"health-check --fix exit {fixed.returncode}: {fixed.stdout}")
    expect(job.read_bytes() == text, "config.json was not restored from the last good backup")
    expect(list(sb.base.glob("config.json.broken-*")), "the broken config.json was not kept aside")
    restart = sb.tool("daemon_watchdog", "restart")
    expect(restart.returncode == 0, f"daemon-watchdog restart exit {restart.returncode}")
    sb.wait_running(past_step=5)
    return "FATAL config_error, no restart; --fix restored config.json; restart runs"


def missing_base_model(sb: Sandbox) -> str:
    sb.create()
    sb.configure("watchdog", max_restarts=2)
    model = sb.path("models/base.safetensors")
    aside = sb.root / "base.safetensors"
    shutil.move(model, aside)
    code, report = sb.tool_json("health_check", "--only", "config")
    summary = str(report.get("checks", [{}])[0].get("summary"))
    expect(code == NAGIOS_CRITICAL, f"health-check missed the missing base model (exit {code})")
    expect("base_model" in summary, f"health-check's summary does not say why: {summary!r}")
    sb.start_watchdog()
    status = sb.wait_state("FATAL")
    category = status.last_crash.category if status.last_crash is not None else None
    expect(category == "file_not_found", f"classified {category!r}")
    expect(status.restart_count <= 2, f"{status.restart_count} restarts with max_restarts = 2")
    categories = {r.get("category") for r in sb.history()}
    expect(categories == {"file_not_found"}, f"crash history categories: {categories}")
    shutil.move(aside, model)
    restart = sb.tool("daemon_watchdog", "restart")
    expect(restart.returncode == 0, f"daemon-watchdog restart exit {restart.returncode}")
    sb.wait_running(past_step=5)
    return (
        f"health-check CRITICAL; FATAL after {status.restart_count} restarts "
        "(file_not_found); restored model runs"
    )


SCENARIOS = (
    Scenario(
        name="config_corruption",
        summary="an invalid or truncated trainguard.toml is refused before anything starts",
        fault="trainguard.toml with a negative max_restarts and an unknown key, then truncated",
        expected="`run` exits 78 naming each bad key, no pid/state file, no daemon; "
        "health-check exits 3; the repaired file runs",
        deadline=45,
        run=config_corruption,
    ),
    Scenario(
        name="job_config_corruption",
        summary="a truncated config.json is a non-retryable crash that health-check --fix repairs",
        fault="config.json cut in half after health-check saved a last-good backup",
        expected="FATAL at once (config_error, 0 restarts); health-check CRITICAL; "
        "--fix restores the backup and keeps the broken file; `restart` runs again",
        deadline=45,
        run=job_config_corruption,
    ),
    Scenario(
        name="missing_base_model",
        summary="a missing base model is reported by health-check and ends in FATAL, not a loop",
        fault="models/base.safetensors removed before the start",
        expected="health-check config CRITICAL naming base_model; file_not_found crashes, FATAL "
        "within max_restarts; after restoring the file, `restart` runs",
        deadline=45,
        run=missing_base_model,
    ),
)
