from __future__ import annotations

from pathlib import Path

import pytest

from trainguard.config import (
    EXAMPLE_COMMAND,
    expand_argv,
    find_config_path,
    load_config,
    mask_url,
)
from trainguard.errors import ConfigError
from trainguard.exitcodes import CONFIG


def _problems(path: Path, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path, env=env or {})
    assert info.value.exit_code == CONFIG
    return info.value.lines()


def test_defaults_match_the_contract(tmp_path: Path) -> None:
    (tmp_path / "trainguard.toml").write_text("")
    config = load_config(tmp_path / "trainguard.toml", env={})
    assert config.base_dir == str(tmp_path.resolve())
    assert config.daemon.resume_args == ["--resume-from", "{checkpoint}"]
    assert config.daemon.stop_timeout == 30
    assert config.watchdog.check_interval == 30
    assert config.watchdog.progress_timeout == 600
    assert config.watchdog.startup_grace == 300
    assert (config.watchdog.max_restarts, config.watchdog.restart_window) == (3, 300)
    assert config.watchdog.orphan_patterns == ["train.py"]
    assert config.checkpoints.keep_last == 5
    assert config.health.disk_min_free_gb == 50
    assert config.health.required_dirs == ["inbox", "logs", "status", "checkpoints"]
    assert config.crash_detector.history_file == ".crash_history.jsonl"


def test_hang_dump_timeout_defaults_to_two_seconds_and_an_old_larger_value_stays_valid(
    tmp_path: Path,
) -> None:
    (tmp_path / "trainguard.toml").write_text("")
    assert load_config(tmp_path / "trainguard.toml", env={}).watchdog.hang_dump_timeout == 2
    # 10 was the default: configs that spell it out still load (the capture caps it at 2 s).
    (tmp_path / "trainguard.toml").write_text("[watchdog]\nhang_dump_timeout = 10\n")
    assert load_config(tmp_path / "trainguard.toml", env={}).watchdog.hang_dump_timeout == 10


def test_relative_base_dir_hangs_off_the_config_files_folder(tmp_path: Path) -> None:
    sub = tmp_path / "etc"
    sub.mkdir()
    (sub / "tg.toml").write_text('base_dir = "../run"\n')
    assert load_config(sub / "tg.toml", env={}).base_dir == str((tmp_path / "run").resolve())


def test_each_problem_gets_one_line_with_its_key_path(tmp_path: Path) -> None:
    cfg = tmp_path / "trainguard.toml"
    cfg.write_text(
        "[watchdog]\n"
        "max_restarts = -1\n"
        'check_interval = "often"\n'
        "progress_timeout = 0\n"
        "bogus = 1\n"
        "[checkpoints]\n"
        "keep_last = 0\n"
    )
    lines = _problems(cfg)
    assert f"{cfg}: watchdog.max_restarts: must be >= 0 (got -1)" in lines
    assert any(line.startswith(f"{cfg}: watchdog.check_interval: ") for line in lines)
    assert any("watchdog.progress_timeout: must be > 0" in line for line in lines)
    assert f"{cfg}: watchdog.bogus: unknown key" in lines
    assert any("checkpoints.keep_last: must be >= 1" in line for line in lines)
    assert len(lines) == 5
    assert all("\n" not in line for line in lines)


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ("[watchdog\n", "invalid TOML"),
        ("[daemon]\ncommand = []\n", "daemon.command"),
        ('[daemon]\ncommand = ["python3", "{nope}"]\n', "unknown placeholder {nope}"),
        ('[daemon]\nstop_signal = "SIGKILL"\n', "daemon.stop_signal"),
        ('[watchdog]\norphan_patterns = ["("]\n', "invalid regex"),
        ("[watchdog.phase_timeouts]\neval = -1\n", "watchdog.phase_timeouts"),
        ("[watchdog]\nmax_restarts = true\n", "watchdog.max_restarts"),
        ('[watchdog]\nmax_restarts = "3"\n', "watchdog.max_restarts"),
        ("[health]\ngpu_max_mem_pct = 120\n", "health.gpu_max_mem_pct: must be <= 100"),
        ("unknown_section = 1\n", "unknown_section: unknown key"),
        (
            '[checkpoints]\nrequired_files = ["../state.json"]\n',
            "checkpoints.required_files: item 0: '../state.json' must be a path inside",
        ),
        ("[checkpoints]\nsettle_seconds = -1\n", "checkpoints.settle_seconds: must be >= 0"),
        ('[checkpoints]\nallow_fresh_start = "yes"\n', "checkpoints.allow_fresh_start"),
    ],
)
def test_bad_configs_are_refused_with_a_readable_reason(
    tmp_path: Path, toml: str, expected: str
) -> None:
    cfg = tmp_path / "trainguard.toml"
    cfg.write_text(toml)
    assert any(expected in line for line in _problems(cfg))


def test_missing_file_and_directory_and_binary_are_config_errors(tmp_path: Path) -> None:
    assert _problems(tmp_path / "absent.toml") == [
        f"{tmp_path / 'absent.toml'}: config file not found"
    ]
    assert "is a directory" in _problems(tmp_path)[0]
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    assert "not UTF-8" in _problems(binary)[0]


def test_environment_overrides_keys_with_typed_values(tmp_path: Path) -> None:
    cfg = tmp_path / "trainguard.toml"
    cfg.write_text("[watchdog]\nmax_restarts = 3\n")
    env = {
        "TRAINGUARD_WATCHDOG__MAX_RESTARTS": "7",
        "TRAINGUARD_WATCHDOG__ORPHAN_PATTERNS": '["worker.py", "train.py"]',
        "TRAINGUARD_WATCHDOG__PHASE_TIMEOUTS__EVAL": "1800",
        "TRAINGUARD_DAEMON__LOG_FILE": "logs/other.log",
        "TRAINGUARD_OWNER": "not-an-override",
    }
    config = load_config(cfg, env=env)
    assert config.watchdog.max_restarts == 7
    assert config.watchdog.orphan_patterns == ["worker.py", "train.py"]
    assert config.watchdog.phase_timeouts == {"eval": 1800}
    assert config.daemon.log_file == "logs/other.log"


def test_a_bad_environment_override_names_the_variable(tmp_path: Path) -> None:
    cfg = tmp_path / "trainguard.toml"
    cfg.write_text("")
    lines = _problems(cfg, {"TRAINGUARD_WATCHDOG__MAX_RESTARTS": "-2"})
    env_name = "TRAINGUARD_WATCHDOG__MAX_RESTARTS"
    assert lines == [f"{env_name} (environment): watchdog.max_restarts: must be >= 0 (got -2)"]
    lines = _problems(cfg, {"TRAINGUARD_WATCHDOG__NO_SUCH_KEY": "1"})
    assert "watchdog.no_such_key: unknown key" in lines[0]


def test_config_is_found_in_cwd_then_in_the_environment(tmp_path: Path) -> None:
    assert find_config_path(None, {}) is None
    assert find_config_path(None, {"TRAINGUARD_CONFIG": "/etc/tg.toml"}) == Path("/etc/tg.toml")
    (tmp_path / "trainguard.toml").write_text("")
    assert find_config_path(None, {"TRAINGUARD_CONFIG": "/etc/tg.toml"}) == Path("trainguard.toml")
    assert find_config_path("x.toml", {}) == Path("x.toml")


def test_argv_placeholders_are_filled_without_a_shell() -> None:
    argv = expand_argv(list(EXAMPLE_COMMAND), base_dir="/w s;rm -rf /", python="/venv/bin/python")
    assert argv == [
        "/venv/bin/python",
        "-m",
        "daemon_watchdog.example.daemon",
        "--base-dir",
        "/w s;rm -rf /",
    ]
    assert expand_argv(["--resume-from", "{checkpoint}"], checkpoint="/c/checkpoint-10") == [
        "--resume-from",
        "/c/checkpoint-10",
    ]


def test_infinite_or_nan_numbers_are_refused(tmp_path: Path) -> None:
    cfg = tmp_path / "trainguard.toml"
    cfg.write_text("[daemon]\nstop_timeout = inf\n[watchdog]\ncheck_interval = nan\n")
    lines = _problems(cfg)
    assert any("daemon.stop_timeout: input should be a finite number" in line for line in lines)
    assert any("watchdog.check_interval" in line for line in lines)


def test_an_override_inventing_a_section_is_blamed_on_the_variable(tmp_path: Path) -> None:
    cfg = tmp_path / "trainguard.toml"
    cfg.write_text("")
    assert _problems(cfg, {"TRAINGUARD_FOO__BAR": "1"}) == [
        "TRAINGUARD_FOO__BAR (environment): foo: unknown key"
    ]


@pytest.mark.parametrize("arg", ["{base_dir!r}", "{base_dir:>10}"])
def test_placeholders_with_conversions_or_specs_are_refused(tmp_path: Path, arg: str) -> None:
    cfg = tmp_path / "trainguard.toml"
    cfg.write_text(f'[daemon]\ncommand = ["python3", "{arg}"]\n')
    assert any("write placeholders plainly" in line for line in _problems(cfg))


def test_a_misspelled_key_or_section_gets_a_suggestion(tmp_path: Path) -> None:
    cfg = tmp_path / "trainguard.toml"
    cfg.write_text("[watchdog]\nmax_restart = 3\n[helth]\n[queue]\nzzz = 1\n")
    lines = _problems(cfg)
    assert f"{cfg}: watchdog.max_restart: unknown key; did you mean max_restarts?" in lines
    assert f"{cfg}: helth: unknown key; did you mean health?" in lines
    assert f"{cfg}: queue.zzz: unknown key" in lines  # nothing close: no guess


def test_alert_urls_from_a_file_join_the_configs_and_a_bad_line_is_not_echoed(
    tmp_path: Path,
) -> None:
    secrets = tmp_path / "alerts.urls"
    secrets.write_text("# the team's channels\nslack://T000/B000/tok3n\n\nntfy://ntfy.sh/run1\n")
    cfg = tmp_path / "trainguard.toml"
    cfg.write_text('[alerts]\nurls = ["json://localhost:9"]\nurls_file = "alerts.urls"\n')
    loaded = load_config(cfg, env={})
    assert loaded.alerts.urls == [
        "json://localhost:9",
        "slack://T000/B000/tok3n",
        "ntfy://ntfy.sh/run1",
    ]
    secrets.write_text("slack://T000/B000/tok3n\nxoxb-s3cret-token\n")
    with pytest.raises(ConfigError) as bad:
        load_config(cfg, env={})
    assert str(bad.value) == (
        f"{cfg}: alerts.urls_file: {secrets}: line 2 is not an apprise URL (scheme://...)"
    )
    secrets.unlink()
    with pytest.raises(ConfigError, match=r"alerts.urls_file: .*: cannot read: No such file"):
        load_config(cfg, env={})


def test_mask_url_keeps_the_scheme_only() -> None:
    assert mask_url("slack://T000/B000/tok3n") == "slack://***"
    assert mask_url("no-scheme-token") == "***"


def test_the_defaults_without_a_file_are_what_validation_makes_of_an_empty_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "trainguard.toml"
    empty.write_text('base_dir = "elsewhere"\n')
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # no trainguard.toml here: the defaults
    assert load_config(None, env={}) == load_config(empty, env={})
