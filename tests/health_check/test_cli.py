"""The command line: contract JSON, Nagios line and exit codes, Prometheus textfile, errors."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from health_check.cli import main
from tests.health_check.conftest import Example
from tests.trainguard.test_alerts import Receiver


def test_json_follows_the_contract(example: Example, capsys: pytest.CaptureFixture[str]) -> None:
    (example.base / "inbox").rmdir()
    run = example.health(capsys, "--json")
    report = run.report
    assert report["status"] == "CRITICAL" and run.code == 2
    for check in report["checks"]:
        assert {"name", "status", "summary", "duration_s", "fix"} <= set(check)
        assert check["status"] in ("OK", "WARNING", "CRITICAL", "UNKNOWN")
        assert isinstance(check["duration_s"], float)
    fix = run.check("directories")["fix"]
    assert fix["action"] == "create inbox" and fix["applied"] is False


def test_first_line_is_a_nagios_status_with_perfdata(
    example: Example, capsys: pytest.CaptureFixture[str]
) -> None:
    run = example.health(capsys, "--quiet")
    assert run.code == 0
    lines = run.out.splitlines()
    assert len(lines) == 1
    status, perfdata = lines[0].split(" | ")
    assert status == "HEALTH OK - all 9 checks OK"
    for item in perfdata.split():
        assert re.fullmatch(r"'[^'=]+'=[-\d.e+]+[A-Za-z%]*;[\d.e+]*;[\d.e+]*", item), item


def test_human_output_starts_with_the_nagios_line_then_a_table(
    example: Example, capsys: pytest.CaptureFixture[str]
) -> None:
    (example.base / "config.json").write_text("{")
    run = example.health(capsys)
    assert run.code == 2
    first, *rest = run.out.splitlines()
    assert first.startswith("HEALTH CRITICAL - config: config.json: not valid JSON")
    assert any(line.split()[:2] == ["config", "CRITICAL"] for line in rest)
    assert rest[-1] == "overall: CRITICAL"


def test_prometheus_textfile_parses_and_is_replaced_atomically(
    example: Example, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "textfile" / "trainguard.prom"
    out.parent.mkdir()
    example.health(capsys, "--prometheus", str(out))
    (example.base / "logs").rmdir()
    run = example.health(capsys, "--prometheus", str(out))
    assert run.code == 2
    families = {f.name: f for f in text_string_to_metric_families(out.read_text())}
    status = {
        s.labels["check"]: s.value for s in families["trainguard_health_check_status"].samples
    }
    assert status["directories"] == 2 and status["memory"] == 0
    assert families["trainguard_health_status"].samples[0].value == 2
    assert "trainguard_health_mem_available_gb" in families
    assert sorted(p.name for p in out.parent.iterdir()) == ["trainguard.prom"]


@pytest.mark.parametrize(
    "argv",
    [["--only", "nonsense"], ["--dry-run"], ["--skip", "directories,daemon", "--only", "daemon"]],
)
def test_bad_flags_exit_unknown_with_one_line(
    example: Example, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        code = main(["-c", str(example.config), *argv])
        raise SystemExit(code)
    assert exited.value.code == 3
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "health-check" in err


def test_bad_config_is_unknown_not_ex_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "trainguard.toml"
    config.write_text("[health]\ncheck_timeout = -1\nbogus = 1\n")
    assert main(["-c", str(config)]) == 3
    out, err = capsys.readouterr()
    assert err.splitlines() == [
        f"health-check: {config}: health.check_timeout: must be > 0.0 (got -1)",
        f"health-check: {config}: health.bogus: unknown key",
    ]
    # Nagios reads stdout's first line.
    assert (
        out == f"HEALTH UNKNOWN - config: {config}: health.check_timeout: must be > 0.0 (got -1)\n"
    )


def test_a_broken_config_replaces_a_stale_ok_prometheus_file_with_unknown(
    example: Example, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "health.prom"
    example.health(capsys, "--prometheus", str(out))  # a good run first
    example.config.write_text(example.config.read_text() + "\n[healht]\n")
    assert main(["-c", str(example.config), "--prometheus", str(out), "--json"]) == 3
    printed = json.loads(capsys.readouterr().out)
    assert printed["exit_code"] == 3
    assert printed["error"].endswith("healht: unknown key; did you mean health?")
    families = {f.name: f for f in text_string_to_metric_families(out.read_text())}
    (overall,) = families["trainguard_health_status"].samples
    assert overall.value == 3
    assert [s.labels["check"] for s in families["trainguard_health_check_status"].samples] == [
        "config"
    ]


def test_console_script_runs_as_a_module(example: Example) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "health_check",
            "-c",
            str(example.config),
            "--quiet",
            "--skip",
            "gpu",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("HEALTH OK - ")


def test_a_critical_check_alerts_once_per_cooldown(
    example: Example, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    receiver = Receiver()
    try:
        monkeypatch.setenv("TRAINGUARD_ALERTS__URLS", f'["{receiver.url}"]')
        (example.base / "logs").rmdir()
        assert example.health(capsys).code == 2
        assert [p["title"].split(": ")[-1] for p in receiver.posts] == ["directories"]
        assert "logs" in receiver.posts[0]["message"]
        assert example.health(capsys).code == 2  # still broken, but already reported
        assert len(receiver.posts) == 1
    finally:
        receiver.server.shutdown()
        receiver.server.server_close()


def test_an_unwritable_prometheus_file_never_hides_the_verdict(
    example: Example, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "x.prom").mkdir()  # a folder where the file should go: it cannot be written
    target = str(tmp_path / "x.prom")
    (example.base / "inbox").rmdir()
    broken = example.health(capsys, "--quiet", "--prometheus", target)
    assert broken.code == 2  # still CRITICAL, not masked by the metrics failure
    assert broken.out.startswith("HEALTH CRITICAL - directories")
    assert f"cannot write {target}" in broken.err
    (example.base / "inbox").mkdir()
    assert example.health(capsys, "--quiet", "--prometheus", target).code == 3


def test_an_alert_urls_file_readable_by_others_is_a_warning(
    example: Example, capsys: pytest.CaptureFixture[str]
) -> None:
    secrets = example.base / "alerts.urls"
    secrets.write_text("json://localhost:9/hook\n")
    secrets.chmod(0o644)
    example.config.write_text(
        example.config.read_text() + '\n[alerts]\nurls_file = "alerts.urls"\n'
    )
    check = example.health(capsys, "--only", "config", "--json").check("config")
    assert check["status"] == "WARNING"
    assert check["summary"] == (
        f"alerts.urls_file {secrets} (alert tokens) can be read by other users (mode 644): "
        f"chmod 600 {secrets}"
    )
    secrets.chmod(0o600)
    assert example.health(capsys, "--only", "config", "--json").check("config")["status"] == "OK"


def test_a_prometheus_folder_that_does_not_exist_is_a_hint_not_a_failure(
    example: Example, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "no-such-folder" / "trainguard.prom"
    run = example.health(capsys, "--quiet", "--prometheus", str(target))
    assert run.code == example.health(capsys, "--quiet").code  # the verdict is the checks'
    assert run.err == (
        f"health-check: not writing {target}: its folder does not exist (create it, or drop "
        "--prometheus)\n"
    )
    assert not target.parent.exists()


def test_a_config_with_alert_urls_readable_by_others_is_a_warning(
    example: Example, capsys: pytest.CaptureFixture[str]
) -> None:
    with example.config.open("a") as fh:
        fh.write('\n[alerts]\nurls = ["json://localhost:9/hook"]\n')
    example.config.chmod(0o644)
    check = example.health(capsys, "--only", "config", "--json").check("config")
    assert check["status"] == "WARNING"
    assert check["summary"].startswith(f"the config (its [alerts] urls) {example.config} (alert")
    example.config.chmod(0o600)
    assert example.health(capsys, "--only", "config", "--json").check("config")["status"] == "OK"
