"""The watchdog's config comes from a child process: the same Config, the same problems."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from trainguard.config import Config, config_as_dict, config_from_dict, load_config
from trainguard.config_child import load_config_in_child
from trainguard.errors import ConfigError, TrainguardError
from trainguard.exitcodes import CONFIG

NON_DEFAULT = """\
base_dir = "run"
[daemon]
command = ["{python}", "train.py", "--out", "{base_dir}"]
stop_signal = "int"
stop_timeout = 12.5
[watchdog]
max_restarts = 7
orphan_patterns = ["worker\\\\.py"]
[watchdog.phase_timeouts]
eval = 1800
[health]
excluded_gpus = [1, 3]
check_timeouts = { gpu = 2 }
[alerts]
urls = ["json://127.0.0.1:9"]
kinds = ["fatal"]
[metrics]
listen = "127.0.0.1:9464"
"""


def test_the_child_gives_the_config_load_config_gives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tmp_path / "trainguard.toml"
    cfg.write_text(NON_DEFAULT)
    monkeypatch.setenv("TRAINGUARD_CHECKPOINTS__KEEP_LAST", "9")  # the child sees overrides
    expected = load_config(cfg)
    got = load_config_in_child(cfg)
    assert got == expected
    assert got.daemon.stop_signal == "SIGINT"  # normalised by the validator, in the child
    assert got.checkpoints.keep_last == 9
    assert got.base_dir == str((tmp_path / "run").resolve())
    assert isinstance(got.watchdog.phase_timeouts["eval"], float)


def test_without_a_path_the_child_searches_as_load_config_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TRAINGUARD_CONFIG", raising=False)
    assert load_config_in_child(None) == load_config(None) == Config(base_dir=str(tmp_path))
    (tmp_path / "trainguard.toml").write_text("[watchdog]\nmax_restarts = 1\n")
    assert load_config_in_child(None).watchdog.max_restarts == 1


def test_the_childs_problems_are_the_same_lines_and_exit_code(tmp_path: Path) -> None:
    cfg = tmp_path / "trainguard.toml"
    cfg.write_text('[watchdog]\nmax_restarts = -1\nbogus = 1\n[daemon]\ncommand = ["{x}"]\n')
    with pytest.raises(ConfigError) as in_process:
        load_config(cfg)
    with pytest.raises(ConfigError) as in_child:
        load_config_in_child(cfg)
    assert in_child.value.lines() == in_process.value.lines()
    assert len(in_child.value.lines()) == 3
    assert in_child.value.exit_code == CONFIG
    with pytest.raises(ConfigError, match="config file not found"):
        load_config_in_child(tmp_path / "absent.toml")


def test_a_child_that_cannot_answer_is_a_one_line_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tmp_path / "trainguard.toml"
    cfg.write_text("")
    with pytest.raises(TrainguardError, match="cannot validate the config in a child process"):
        load_config_in_child(cfg, timeout=0.001)
    # A child that dies without answering: its last stderr line is the reason.
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    (tmp_path / "trainguard").mkdir()
    (tmp_path / "trainguard" / "__init__.py").write_text("raise SystemExit('broken install')\n")
    with pytest.raises(TrainguardError) as info:
        load_config_in_child(cfg)
    assert not isinstance(info.value, ConfigError)
    assert str(info.value).endswith("(exit 1): broken install")


def test_a_module_in_the_current_folder_does_not_replace_the_childs_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A training folder may hold a json.py: `python -m` would import it first."""
    cfg = tmp_path / "trainguard.toml"
    cfg.write_text("")
    for name in ("json", "pydantic"):
        (tmp_path / f"{name}.py").write_text(f"raise SystemExit('the folder\\'s {name}.py')\n")
    monkeypatch.chdir(tmp_path)
    assert load_config_in_child(cfg) == load_config(cfg)


def test_config_survives_the_trip_through_json(tmp_path: Path) -> None:
    cfg = tmp_path / "trainguard.toml"
    cfg.write_text(NON_DEFAULT)
    config = load_config(cfg, env={})
    assert config_from_dict(config_as_dict(config)) == config
    assert config_from_dict(config_as_dict(Config())) == Config()


def test_the_config_module_does_not_import_pydantic() -> None:
    """Only validating imports it (and annotated_types, the bounds it reads): the watchdog
    builds its Config without them."""
    import subprocess

    code = (
        "import sys\n"
        "from trainguard.config import Config, config_as_dict, config_from_dict\n"
        "config_from_dict(config_as_dict(Config()))\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0].startswith(\n"
        "    ('pydantic', 'annotated_types'))))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "[]"
