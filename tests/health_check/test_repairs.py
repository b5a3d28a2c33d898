"""Break one thing for real in an example workspace, see the right status, `--fix`, run again."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from safetensors.numpy import save_file

from tests.health_check.conftest import Example
from tests.polling import wait_until
from trainguard.atomicio import write_json_atomic
from trainguard.procs import OWNER_ENV, ProcessIdentity, identify

CHILDREN = Path(__file__).resolve().parents[1] / "children"


def tree(base: Path) -> dict[str, tuple[int, float]]:
    """Every path under `base` with its size and mtime: proof that nothing changed."""
    found = {}
    for root, dirs, files in os.walk(base):
        for name in dirs + files:
            path = Path(root, name)
            st = path.lstat()
            found[str(path.relative_to(base))] = (st.st_size, st.st_mtime)
    return found


def settle(folder: Path) -> None:
    """Make every checkpoint under `folder` an hour old: done writing, not in flight."""
    old = time.time() - 3600
    for path in [*folder.rglob("*"), folder]:
        os.utime(path, (old, old))


def make_checkpoint(folder: Path, step: int, *, megabytes: float = 0.01) -> Path:
    ckpt = folder / f"checkpoint-{step}"
    ckpt.mkdir(parents=True)
    weights = np.full(int(megabytes * 2**20 / 4), step, dtype=np.float32)
    save_file({"w": weights}, ckpt / "model.safetensors")
    (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return ckpt


def test_fresh_example_workspace_is_ok(
    example: Example, capsys: pytest.CaptureFixture[str]
) -> None:
    run = example.health(capsys, "--json")
    assert run.code == 0, run.out
    assert run.report["status"] == "OK"
    names = [c["name"] for c in run.report["checks"]]
    assert names == [
        "directories",
        "required_files",
        "config",
        "disk_space",
        "memory",
        "daemon",
        "progress",
        "checkpoints",
        "orphans",
    ]


def test_deleted_directory_is_critical_and_fix_recreates_it(
    example: Example, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.rmtree(example.base / "inbox")
    run = example.health(capsys, "--json")
    assert run.code == 2
    assert run.check("directories")["status"] == "CRITICAL"
    assert "inbox" in run.check("directories")["summary"]

    fixed = example.health(capsys, "--fix", "--json")
    assert fixed.check("directories")["fix"]["applied"] is True
    assert fixed.check("directories")["status"] == "OK"
    assert (example.base / "inbox").is_dir()
    assert example.health(capsys).code == 0
    log = (example.base / "logs" / "health-check.log").read_text()
    assert "fix directories: created inbox" in log


def test_dry_run_changes_nothing(example: Example, capsys: pytest.CaptureFixture[str]) -> None:
    shutil.rmtree(example.base / "inbox")
    (example.base / ".daemon.pid").write_text(f"{dead_pid()}\n")
    (example.base / "config.json").write_text("{broken")
    before = tree(example.base)

    run = example.health(capsys, "--fix", "--dry-run", "--json")

    assert tree(example.base) == before
    assert run.code == 2
    directories = run.check("directories")["fix"]
    assert directories["applied"] is False
    assert directories["message"].startswith("would create inbox")
    assert run.check("daemon")["fix"]["applied"] is False


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_pid_file_is_critical_and_fix_removes_it(
    example: Example, capsys: pytest.CaptureFixture[str]
) -> None:
    pid_file = example.base / ".daemon.pid"
    pid_file.write_text(f"{dead_pid()}\n")
    run = example.health(capsys, "--json")
    assert run.check("daemon")["status"] == "CRITICAL"
    assert "not running" in run.check("daemon")["summary"]

    fixed = example.health(capsys, "--fix", "--json")
    assert fixed.check("daemon")["fix"]["applied"] is True
    assert not pid_file.exists()
    assert example.health(capsys).code == 0


def test_reused_pid_is_reported_and_never_signalled(
    example: Example,
    idle: tuple[subprocess.Popen[bytes], ProcessIdentity],
    capsys: pytest.CaptureFixture[str],
) -> None:
    stranger, me = idle
    # The watchdog recorded a daemon with this pid that started long before the stranger
    # (at boot, as the kernel counts it).
    recorded = {**me.to_json(), "create_time": me.create_time - 1000, "start_ticks": 0}
    example.record(daemon=recorded, owner_token="t0ken", watchdog=None)
    (example.base / ".daemon.pid").write_text(f"{stranger.pid}\n")

    run = example.health(capsys, "--json")
    assert run.check("daemon")["status"] == "CRITICAL"
    assert "reused by another process" in run.check("daemon")["summary"]

    fixed = example.health(capsys, "--fix", "--json")
    assert fixed.check("daemon")["fix"]["applied"] is True
    assert stranger.poll() is None  # alive: never signalled
    assert not (example.base / ".daemon.pid").exists()


def test_corrupt_config_is_restored_from_the_last_good_backup(
    example: Example, capsys: pytest.CaptureFixture[str]
) -> None:
    config = example.base / "config.json"
    good = config.read_bytes()
    assert example.health(capsys).code == 0  # an OK run keeps a backup
    assert (example.base / "status" / "config.last-good.json").read_bytes() == good

    config.write_text('{"base_model": "weights/base.safetensors", "total_steps": ')
    run = example.health(capsys, "--json")
    assert run.code == 2
    assert run.check("config")["status"] == "CRITICAL"
    assert "not valid JSON" in run.check("config")["summary"]
    # The broken file must not become the new "last good" one.
    assert (example.base / "status" / "config.last-good.json").read_bytes() == good

    fixed = example.health(capsys, "--fix", "--json")
    assert fixed.check("config")["fix"]["applied"] is True
    assert fixed.check("config")["status"] == "OK"
    assert config.read_bytes() == good
    kept = list(example.base.glob("config.json.broken-*"))
    assert len(kept) == 1 and kept[0].read_text().endswith('"total_steps": ')
    assert example.health(capsys).code == 0


def test_corrupt_config_without_a_backup_offers_no_fix(
    example: Example, capsys: pytest.CaptureFixture[str]
) -> None:
    (example.base / "config.json").write_text("[1, 2]")
    run = example.health(capsys, "--fix", "--json")
    assert run.check("config")["status"] == "CRITICAL"
    assert run.check("config")["fix"] is None
    assert (example.base / "config.json").read_text() == "[1, 2]"


def test_missing_base_model_is_critical(
    example: Example, capsys: pytest.CaptureFixture[str]
) -> None:
    job = json.loads((example.base / "config.json").read_text())
    (example.base / job["base_model"]).unlink()
    run = example.health(capsys, "--fix", "--json")
    assert run.check("config")["status"] == "CRITICAL"
    assert "does not exist" in run.check("config")["summary"]


def test_truncated_and_fifo_checkpoints_are_quarantined_by_fix(
    example: Example, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = example.base / "checkpoints"
    make_checkpoint(folder, 10)
    truncated = make_checkpoint(folder, 20) / "model.safetensors"
    with open(truncated, "r+b") as fh:
        fh.truncate(truncated.stat().st_size // 2)
    fifo_ckpt = make_checkpoint(folder, 30)
    (fifo_ckpt / "model.safetensors").unlink()
    os.mkfifo(fifo_ckpt / "model.safetensors")  # reading it would block forever
    settle(folder)

    run = example.health(capsys, "--json")
    check = run.check("checkpoints")
    assert check["status"] == "WARNING"
    assert "2 invalid" in check["summary"]
    assert check["duration_s"] < 5

    fixed = example.health(capsys, "--fix", "--json")
    assert fixed.check("checkpoints")["fix"]["applied"] is True
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint-10", "quarantine"]
    quarantined = sorted(p.name.split(".")[0] for p in (folder / "quarantine").iterdir())
    assert quarantined == ["checkpoint-20", "checkpoint-30"]  # moved, never deleted
    assert example.health(capsys).code == 0


def test_staged_leftover_and_too_many_checkpoints_are_fixed(
    example: Example, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = example.base / "checkpoints"
    for step in (10, 20, 30, 40, 50):
        make_checkpoint(folder, step)
    staged = folder / "tmp-checkpoint-60"
    staged.mkdir()
    (staged / "model.safetensors").write_bytes(b"\0" * 10)
    settle(folder)

    run = example.health(capsys, "--json")
    summary = run.check("checkpoints")["summary"]
    assert "1 staged leftover" in summary and "2 beyond keep_last=3" in summary

    example.health(capsys, "--fix")
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["checkpoint-30", "checkpoint-40", "checkpoint-50", "quarantine"]
    assert example.health(capsys).code == 0


def test_low_disk_on_a_real_tiny_filesystem_is_critical_until_fix_prunes(
    example: Example,
    small_tmpfs: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TRAINGUARD_CHECKPOINTS__DIR", json.dumps(str(small_tmpfs)))
    monkeypatch.setenv("TRAINGUARD_HEALTH__DISK_MIN_FREE_GB", "0.003")  # 3 MB
    for step in range(1, 7):
        make_checkpoint(small_tmpfs, step * 10, megabytes=1)  # 6 MB of 8
    settle(small_tmpfs)

    run = example.health(capsys, "--json")
    disk = run.check("disk_space")
    assert disk["status"] == "CRITICAL", disk
    assert str(small_tmpfs) in disk["summary"]
    assert "prune" in disk["fix"]["action"]

    fixed = example.health(capsys, "--fix", "--json")
    assert fixed.check("disk_space")["fix"]["applied"] is True
    left = sorted(p.name for p in small_tmpfs.iterdir())
    assert left == ["checkpoint-40", "checkpoint-50", "checkpoint-60"]  # keep_last = 3
    assert fixed.check("disk_space")["status"] == "OK"
    assert example.health(capsys).code == 0


def test_orphaned_worker_is_killed_by_fix_and_a_lookalike_is_not(
    example: Example, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    token = "a1b2c3d4e5f6"
    sleeper = str(CHILDREN / "sleeper.py")
    env = {**os.environ, OWNER_ENV: token}
    orphan = subprocess.Popen([sys.executable, sleeper, str(tmp_path / "o")], env=env)
    lookalike = subprocess.Popen([sys.executable, sleeper, str(tmp_path / "l")])
    try:
        wait_until(lambda: (tmp_path / "o").exists() and (tmp_path / "l").exists())
        # The daemon that started the orphan is gone: its recorded identity matches nothing.
        gone = {"pid": dead_pid(), "create_time": 1.0, "cmdline": ["x"], "uid": os.getuid()}
        write_json_atomic(
            example.base / "status" / "watchdog.json",
            {"state": "FATAL", "daemon": gone, "owner_token": token, "watchdog": None},
        )
        run = example.health(capsys, "--only", "orphans", "--json")
        assert run.code == 2
        assert f"pid {orphan.pid}" in run.check("orphans")["summary"]
        assert str(lookalike.pid) not in run.out

        fixed = example.health(capsys, "--only", "orphans", "--fix", "--json")
        assert fixed.check("orphans")["fix"]["applied"] is True
        assert orphan.wait(timeout=10) == -signal.SIGTERM
        assert lookalike.poll() is None
        assert example.health(capsys, "--only", "orphans").code == 0
    finally:
        for proc in (orphan, lookalike):
            proc.kill()
            proc.wait()


def test_stale_progress_of_a_live_daemon_is_critical(
    example: Example,
    idle: tuple[subprocess.Popen[bytes], ProcessIdentity],
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, me = idle
    example.record(daemon=me.to_json(), owner_token="t")
    progress = example.base / "status" / "progress.json"
    write_json_atomic(progress, {"step": 7, "phase": "train", "total_steps": 40})
    assert example.health(capsys, "--only", "progress").code == 0

    old = progress.stat().st_mtime - 120  # the init template's progress_timeout is 30 s
    os.utime(progress, (old, old))
    run = example.health(capsys, "--only", "progress", "--json")
    assert run.code == 2
    assert "no progress for" in run.check("progress")["summary"]
    assert "step 7/40" in run.check("progress")["summary"]

    write_json_atomic(progress, {"step": 7, "phase": "eval"})  # eval allows 60 s
    os.utime(progress, (old + 100, old + 100))  # 20 s ago
    assert example.health(capsys, "--only", "progress").code == 0

    progress.write_text("{not json")
    assert example.health(capsys, "--only", "progress").code == 2


def test_a_live_watchdogs_learned_threshold_judges_the_progress(
    example: Example,
    idle: tuple[subprocess.Popen[bytes], ProcessIdentity],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """#20: the watchdog acts on the threshold it learned; health-check judges by it too, for
    the phase it was learned in and while that watchdog lives."""
    _, daemon = idle
    watchdog = identify(os.getpid())  # this test stands for the live watchdog
    assert watchdog is not None
    progress = example.base / "status" / "progress.json"
    write_json_atomic(progress, {"step": 7, "phase": "train"})
    ten_ago = progress.stat().st_mtime - 10  # the init template's progress_timeout is 30 s
    os.utime(progress, (ten_ago, ten_ago))

    def judged(phase: str, *, alive: bool = True) -> tuple[int, str]:
        limit = {"phase": phase, "seconds": 5.0, "learned": True, "why": "learned: 5 x 1 s"}
        example.record(daemon=daemon.to_json(), owner_token="t", hang_threshold=limit,
                       watchdog=watchdog.to_json() if alive else None)  # fmt: skip
        run = example.health(capsys, "--only", "progress", "--json")
        return run.code, run.check("progress")["summary"]

    code, summary = judged("train")
    assert code == 2 and "(learned threshold 5 s): hung?" in summary, summary
    assert judged("eval")[0] == 0  # learned for another phase: the configured 30 s
    assert judged("train", alive=False)[0] == 0  # no live watchdog acts on it


@pytest.mark.parametrize(
    ("variable", "check"),
    [
        ("TRAINGUARD_HEALTH__MEM_MIN_AVAILABLE_GB", "memory"),
        ("TRAINGUARD_HEALTH__DISK_MIN_FREE_GB", "disk_space"),
    ],
)
def test_thresholds_beyond_the_machine_are_critical(
    example: Example,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    variable: str,
    check: str,
) -> None:
    monkeypatch.setenv(variable, "1000000")
    run = example.health(capsys, "--only", check, "--json")
    assert run.code == 2
    assert run.check(check)["status"] == "CRITICAL"
    assert psutil.Process().is_running()


def test_a_checkpoint_a_live_trainer_is_writing_is_left_alone(
    example: Example,
    idle: tuple[subprocess.Popen[bytes], ProcessIdentity],
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, me = idle
    example.record(daemon=me.to_json(), owner_token="t")
    folder = example.base / "checkpoints"
    make_checkpoint(folder, 10)
    settle(folder)
    # Written in place (no tmp- staging), half done: invalid, but fresh.
    partial = folder / "checkpoint-20"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"\x10\x00")

    run = example.health(capsys, "--only", "checkpoints", "--fix", "--json")
    assert run.check("checkpoints")["status"] == "OK"
    assert partial.is_dir()  # not quarantined under the trainer's feet

    old = time.time() - 3600  # untouched for an hour: a broken leftover after all
    for path in (partial / "model.safetensors", partial):
        os.utime(path, (old, old))
    fixed = example.health(capsys, "--only", "checkpoints", "--fix", "--json")
    assert fixed.check("checkpoints")["fix"]["applied"] is True
    assert not partial.exists()


def test_a_pid_file_no_watchdog_recorded_is_not_vouched_for(
    example: Example, capsys: pytest.CaptureFixture[str]
) -> None:
    (example.base / ".daemon.pid").write_text("1\n")  # alive, and surely not our daemon
    run = example.health(capsys, "--only", "daemon", "--fix", "--json")
    check = run.check("daemon")
    assert check["status"] == "WARNING" and "cannot prove" in check["summary"]
    assert check["fix"] is None  # a live process's pid file is not ours to remove
    assert (example.base / ".daemon.pid").exists()


def test_the_daemon_check_says_what_recovery_changed(
    example: Example,
    idle: tuple[subprocess.Popen[bytes], ProcessIdentity],
    capsys: pytest.CaptureFixture[str],
) -> None:
    proc, me = idle
    (example.base / ".daemon.pid").write_text(f"{proc.pid}\n")
    knobs = {"config:batch_size": {"original": 64, "value": 32},
             "env:CUDA_VISIBLE_DEVICES": {"original": None, "value": "0"}}  # fmt: skip
    example.record(daemon=me.to_json(), owner_token="t", recovery={"knobs": knobs})
    run = example.health(capsys, "--only", "daemon", "--json")
    details = run.check("daemon")["details"]
    assert (
        "recovery changed: config:batch_size = 32 (was 64); env:CUDA_VISIBLE_DEVICES = 0 "
        "(was unset) (`daemon-watchdog restart --reset-recovery`)"
    ) in details, details
