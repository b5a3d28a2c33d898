"""daemon-watchdog as a user runs it: a real console script in a subprocess."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from trainguard.checkpoints import list_checkpoints
from trainguard.config import CheckpointsSection, load_config

SCRIPT = shutil.which("daemon-watchdog", path=str(Path(sys.executable).parent))


def _run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    assert SCRIPT, "daemon-watchdog console script is not installed in this venv"
    return subprocess.run([SCRIPT, *args], capture_output=True, text=True, timeout=timeout)


def test_version_and_help() -> None:
    assert "trainguard" in _run("--version").stdout
    out = _run("--help")
    assert out.returncode == 0
    assert "init" in out.stdout and "demo" in out.stdout


def test_init_creates_a_workspace_that_validates(tmp_path: Path) -> None:
    result = _run("init", str(tmp_path / "ws"))
    assert result.returncode == 0, result.stderr
    ws = tmp_path / "ws"
    for name in ("trainguard.toml", "config.json", "train.py", "models/base.safetensors"):
        assert (ws / name).is_file(), name
    for name in ("inbox", "logs", "status", "checkpoints"):
        assert (ws / name).is_dir(), name
    config = load_config(ws / "trainguard.toml", env={})
    assert config.base_dir == str(ws.resolve())
    assert config.watchdog.orphan_patterns == [r"train\.py"]
    job = json.loads((ws / "config.json").read_text())
    assert job["base_model"] == "models/base.safetensors"


def test_init_refuses_to_overwrite_unless_forced(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    assert _run("init", str(ws)).returncode == 0
    (ws / "config.json").write_text('{"mine": true}')
    again = _run("init", str(ws))
    assert again.returncode == 1
    assert again.stderr.startswith("daemon-watchdog: ") and "already exists" in again.stderr
    assert "Traceback" not in again.stderr
    assert json.loads((ws / "config.json").read_text()) == {"mine": True}
    assert _run("init", str(ws), "--force").returncode == 0
    assert "base_model" in json.loads((ws / "config.json").read_text())


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ('[watchdog]\ncheck_interval = "fast"\n', "watchdog.check_interval: "),
        ("[watchdog]\nfrobnicate = 1\n", "watchdog.frobnicate: unknown key"),
        ("[watchdog]\ncheck_interval = -5\n", "watchdog.check_interval: must be > 0"),
        ("[watchdog\n", "invalid TOML"),
    ],
)
def test_bad_config_is_one_line_per_problem_and_exit_78(
    tmp_path: Path, toml: str, expected: str
) -> None:
    cfg = tmp_path / "trainguard.toml"
    cfg.write_text(toml)
    for command in ("config", "run"):  # `run` validates in a child: the same line and code
        result = _run(command, "-c", str(cfg))
        assert result.returncode == 78
        assert "Traceback" not in result.stderr
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and expected in lines[0], result.stderr
        assert lines[0].startswith(f"daemon-watchdog: {cfg}: ")


def test_run_without_any_config_refuses_to_train_the_example_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    here = tmp_path / "some-folder"
    here.mkdir()
    monkeypatch.chdir(here)
    monkeypatch.delenv("TRAINGUARD_CONFIG", raising=False)
    result = _run("run")
    assert result.returncode == 78
    assert result.stderr.startswith(
        "daemon-watchdog: no trainguard.toml here and TRAINGUARD_CONFIG is not set: give -c PATH"
    )
    assert len(result.stderr.splitlines()) == 1
    assert list(here.iterdir()) == []  # no logs/, status/ or checkpoints/ made here
    monkeypatch.setenv("TRAINGUARD_CONFIG", str(tmp_path / "elsewhere.toml"))
    assert "elsewhere.toml: config file not found" in _run("run").stderr


def test_run_with_a_missing_base_dir_says_so(tmp_path: Path) -> None:
    cfg = tmp_path / "trainguard.toml"
    cfg.write_text('base_dir = "not-made-yet"\n')
    result = _run("run", "-c", str(cfg))
    assert result.returncode == 1
    missing = tmp_path.resolve() / "not-made-yet"
    assert (
        result.stderr
        == f"daemon-watchdog: base_dir {missing} is not a folder: create it or fix base_dir\n"
    )
    assert not missing.exists()


def test_missing_config_file_is_exit_78(tmp_path: Path) -> None:
    result = _run("config", "-c", str(tmp_path / "nope.toml"))
    assert result.returncode == 78
    assert (
        result.stderr.strip() == f"daemon-watchdog: {tmp_path / 'nope.toml'}: config file not found"
    )


def test_config_shows_environment_overrides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "trainguard.toml").write_text("")
    monkeypatch.setenv("TRAINGUARD_WATCHDOG__MAX_RESTARTS", "9")
    result = _run("config", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["watchdog"]["max_restarts"] == 9


@pytest.mark.e2e
def test_demo_recovers_a_sigkilled_daemon_with_identical_weights() -> None:
    result = _run("demo", timeout=110)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "daemon terminated by SIGKILL: unknown, no OOM evidence" in out
    assert "stopped: yes" in out
    crashed_at = int(re.search(r"at step (\d+)", out).group(1))  # type: ignore[union-attr]
    resumed, lost = re.search(r"from checkpoint-(\d+); steps lost: (\d+)", out).groups()  # type: ignore[union-attr]
    # The orphan may finish one more step (and checkpoint) in the ms before the watchdog kills it.
    assert int(resumed) in (crashed_at // 10 * 10, (crashed_at + 1) // 10 * 10)
    assert int(lost) == max(0, crashed_at - int(resumed))
    assert "identical to an uninterrupted run: yes" in out and out.rstrip().endswith("demo: OK")
    stopped = _planned_stop(out)
    assert f"7. a new watchdog resumed from checkpoint-{stopped}" in out


def _planned_stop(out: str) -> int:
    """The step of the demo's planned stop, which must have lost nothing."""
    saved = r"at step (\d+): the trainer saved checkpoint-(\d+) first; steps lost: 0\n"
    match = re.search(saved, out)
    assert match is not None, out
    assert match[1] == match[2]
    return int(match[1])


@pytest.mark.e2e
def test_demo_oom_act_halves_the_batch_size_and_finishes() -> None:
    result = _run("demo", "--oom", timeout=110)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "torch.OutOfMemoryError: CUDA out of memory" in out
    assert "3. recovery: cuda_oom after step 14: config:batch_size 64 -> 32" in out
    assert "4. restarted from checkpoint-10" in out
    assert "config.json batch_size now 32 (was 64" in out and out.rstrip().endswith("demo: OK")


@pytest.mark.e2e
def test_demo_keep_leaves_valid_checkpoints_behind(tmp_path: Path) -> None:
    result = _run("demo", "--keep", timeout=110)
    assert result.returncode == 0, result.stdout + result.stderr
    kept = Path(result.stdout.strip().splitlines()[-1].removeprefix("workspaces kept in "))
    try:
        infos = list_checkpoints(kept / "supervised" / "checkpoints", CheckpointsSection())
        assert [i.step for i in infos] == sorted({10, 20, 30, _planned_stop(result.stdout), 40})
        assert all(i.valid for i in infos)
    finally:
        shutil.rmtree(kept)


def test_init_into_a_file_or_an_impossible_path_is_one_line(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    for target, expected in ((afile, "is not a folder"), (Path("/proc/no/such"), "cannot create")):
        result = _run("init", str(target))
        assert result.returncode == 1
        assert expected in result.stderr and "Traceback" not in result.stderr
