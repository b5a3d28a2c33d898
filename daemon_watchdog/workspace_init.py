"""`daemon-watchdog init DIR`: a workspace wired to the bundled example training daemon."""

from __future__ import annotations

import errno
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from daemon_watchdog.example.seed import write_example_job
from trainguard.atomicio import write_text_atomic
from trainguard.config import CONFIG_FILENAME, load_config
from trainguard.errors import TrainguardError

# Tuned for the example daemon (about 0.5 s a step): a hang shows within a minute, not ten.
TEMPLATE = """\
# trainguard.toml - written by `daemon-watchdog init`. Every key is optional; the README's
# configuration reference lists them all. Relative paths hang off base_dir.
base_dir = "."

[daemon]
# argv list, never a shell. {python} is trainguard's interpreter, {base_dir} this folder.
command = ["{python}", "-m", "daemon_watchdog.example.daemon", "--base-dir", "{base_dir}"]
resume_args = ["--resume-from", "{checkpoint}"]
pid_file = ".daemon.pid"
progress_file = "status/progress.json"
log_file = "logs/daemon.log"
stop_signal = "SIGTERM"
stop_timeout = 10

[watchdog]
check_interval = 5
progress_timeout = 30
startup_grace = 30
max_restarts = 3
restart_window = 300
backoff_base = 1
backoff_max = 30
orphan_patterns = ["train\\\\.py"]
state_file = "status/watchdog.json"

[watchdog.phase_timeouts]
eval = 60
done = 0
idle = 0  # the example daemon waiting on an empty inbox (--watch-inbox) is not hung

[checkpoints]
dir = "checkpoints"
# Folders or files: Lightning writes "*.ckpt", a plain torch.save loop e.g. "ckpt_*.pt".
pattern = "checkpoint-*"
keep_last = 3
# What a complete checkpoint folder holds (Hugging Face writes it last); [] for other trainers.
required_files = ["trainer_state.json"]
# Checkpoints that exist but none valid are FATAL; true quarantines them and starts over.
# allow_fresh_start = false

[health]
disk_min_free_gb = 1
mem_min_available_gb = 1
gpu_max_temp_c = 85
gpu_max_mem_pct = 95
gpus_expected = 0
required_dirs = ["inbox", "logs", "status", "checkpoints"]
required_files = ["config.json"]

[crash_detector]
logs = ["logs/daemon.log"]
history_file = ".crash_history.jsonl"
"""


def init_workspace(
    directory: Path, *, force: bool = False, job: Mapping[str, Any] | None = None
) -> Path:
    """Create DIR with trainguard.toml, config.json, weights and train.py; return the toml path.

    `job` overrides config.json knobs (total_steps, save_steps, step_seconds, ...). Existing
    files are never overwritten unless `force` is given.
    """
    config_path = directory / CONFIG_FILENAME
    try:
        directory.mkdir(parents=True, exist_ok=True)
        if config_path.exists() and not force:
            raise FileExistsError(errno.EEXIST, "already exists", str(config_path))
        write_example_job(directory, overwrite=force, **(job or {}))
        write_text_atomic(config_path, TEMPLATE)
    except FileExistsError as exc:
        if exc.filename and Path(exc.filename) == directory:
            raise TrainguardError(f"{directory} exists and is not a folder") from None
        raise TrainguardError(f"{exc.filename} already exists (use --force to overwrite)") from None
    except OSError as exc:
        where = exc.filename or directory
        raise TrainguardError(
            f"cannot create the workspace: {where}: {exc.strerror or exc}"
        ) from None
    load_config(config_path, env={})  # the template must always be a valid config
    return config_path
