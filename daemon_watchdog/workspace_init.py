"""`daemon-watchdog init DIR`: a workspace wired to the bundled example training daemon."""

from __future__ import annotations

import errno
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from daemon_watchdog.example.seed import write_example_job
from trainguard.atomicio import write_text_atomic
from trainguard.config import CONFIG_FILENAME, load_config
from trainguard.errors import TrainguardError

# Tuned for the example daemon (about 0.5 s a step): a hang shows within a minute, not ten.
TEMPLATE = """\
# trainguard.toml - written by `daemon-watchdog init`. Every key is optional;
# docs/configuration.md lists them all. Relative paths hang off base_dir.
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
# The hang threshold is learned from the trainer's rhythm (5x its longest silence per phase),
# between progress_timeout_min and progress_timeout: a 0.5 s/step trainer that freezes is
# restarted after ~5 s. Keep the key defaults (30, 600) for real trainers: a checkpoint save
# the watchdog has not seen yet must not look like a hang.
progress_timeout = 30
progress_timeout_min = 5
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

# Before a restart, change what made the run crash: uncomment the table and the actions you
# allow (docs/daemon-watchdog.md#recovery-by-crash-type; `restart --reset-recovery` undoes
# them). The example daemon reads batch_size from config.json (BATCH_SIZE in its environment,
# when set, overrides it: then name "env:BATCH_SIZE" in both lines instead).
# [watchdog.recovery]
# cuda_oom = { halve = "config:batch_size", floor = 4 }
# host_oom = { halve = "config:batch_size", floor = 4 }
# gpu_hardware = { exclude_gpu = true, min_gpus = 1 }
# nan_loss = { rewind = 1, scale = "config:learning_rate", factor = 0.5 }
# disk_full = { prune = true }

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


# For the user's own trainer (`init DIR --command ARGV...`): the defaults of a real run (a hang
# is 10 minutes without progress), liveness by the progress file if the trainer writes one
# (trainguard.progress, the Hugging Face callback), else by its log output.
OWN_TEMPLATE = """\
# trainguard.toml - written by `daemon-watchdog init --command`. Every key is optional;
# docs/configuration.md lists them all. Relative paths hang off base_dir (this
# folder): the command runs here.
base_dir = "."

[daemon]
# argv list, never a shell. {{python}} is trainguard's interpreter, {{base_dir}} this folder.
{command}
# Appended when a valid checkpoint exists: how your trainer resumes from one.
{resume_args}
log_file = "logs/daemon.log"
stop_timeout = 60

[watchdog]
# "auto": the progress file once your trainer writes one, its log output until then.
liveness = "auto"
# The longest silence allowed, and the ceiling of what the watchdog learns from your trainer's
# rhythm (5x its longest silence per phase, never under progress_timeout_min = 30).
progress_timeout = 600
startup_grace = 600
# orphan_patterns = ['/path/to/this/run/.*train\\.py']   # workers that must not outlive it

# Before a restart, change what made the run crash: uncomment the table and the actions you
# allow (docs/daemon-watchdog.md#recovery-by-crash-type). A knob is "env:NAME", a variable
# your trainer reads from its environment (set it where the watchdog starts: the command is
# never run through a shell, so a flag cannot be changed), or "config:KEY", a key of the JSON
# file [health] job_config names (e.g. the args.json a Hugging Face script takes).
# [watchdog.recovery]
# cuda_oom = {{ halve = "env:BATCH_SIZE", floor = 1 }}
# gpu_hardware = {{ exclude_gpu = true, min_gpus = 1 }}
# nan_loss = {{ rewind = 1 }}
# disk_full = {{ prune = true }}

[checkpoints]
dir = "{checkpoints_dir}"
pattern = "{pattern}"
keep_last = 3
# What a complete checkpoint folder holds; [] for files (Lightning "*.ckpt", "ckpt_*.pt").
required_files = {required_files}

[health]
required_dirs = ["logs", "status"]
required_files = []
job_config = ""  # your trainer takes its settings on its command line
"""

HF_RESUME = ("--resume_from_checkpoint", "{checkpoint}")
PLAIN_RESUME = ("--resume-from", "{checkpoint}")


def init_own_workspace(
    directory: Path, command: Sequence[str], *, hf: bool = False, force: bool = False
) -> Path:
    """DIR/trainguard.toml for the user's own trainer `command` (argv), without the example's
    files. `hf`: a Hugging Face Trainer script (its resume flag, its `checkpoint-N` folders
    with `trainer_state.json` in `output_dir`, assumed to be `checkpoints/`)."""
    import tomli_w

    if not command or not command[0].strip():
        raise TrainguardError("--command needs the trainer's argv, e.g. --command python train.py")
    resume = HF_RESUME if hf else PLAIN_RESUME
    text = OWN_TEMPLATE.format(
        command=tomli_w.dumps({"command": list(command)}).strip(),
        resume_args=tomli_w.dumps({"resume_args": list(resume)}).strip(),
        checkpoints_dir="checkpoints",
        pattern="checkpoint-*",
        required_files='["trainer_state.json"]' if hf else "[]",
    )
    config_path = directory / CONFIG_FILENAME
    with _creating(directory, config_path, force=force):
        write_text_atomic(config_path, text, mode=0o600)
        for folder in ("logs", "status", "checkpoints"):
            (directory / folder).mkdir(exist_ok=True)
    load_config(config_path, env={})  # a command with a bad placeholder is refused here (78)
    return config_path


def init_workspace(
    directory: Path, *, force: bool = False, job: Mapping[str, Any] | None = None
) -> Path:
    """Create DIR with trainguard.toml, config.json, weights and train.py; return the toml path.

    `job` overrides config.json knobs (total_steps, save_steps, step_seconds, ...). Existing
    files are never overwritten unless `force` is given.
    """
    config_path = directory / CONFIG_FILENAME
    with _creating(directory, config_path, force=force):
        write_example_job(directory, overwrite=force, **(job or {}))
        # 0600: alert URLs hold tokens, and a GPU box is often shared.
        write_text_atomic(config_path, TEMPLATE, mode=0o600)
    load_config(config_path, env={})  # the template must always be a valid config
    return config_path


@contextmanager
def _creating(directory: Path, config_path: Path, *, force: bool) -> Iterator[None]:
    """Make `directory` for a new workspace (never over an existing config unless `force`);
    whatever fails inside is one line."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        if config_path.exists() and not force:
            raise FileExistsError(errno.EEXIST, "already exists", str(config_path))
        yield
    except FileExistsError as exc:
        if exc.filename and Path(exc.filename) == directory:
            raise TrainguardError(f"{directory} exists and is not a folder") from None
        raise TrainguardError(f"{exc.filename} already exists (use --force to overwrite)") from None
    except OSError as exc:
        where = exc.filename or directory
        raise TrainguardError(
            f"cannot create the workspace: {where}: {exc.strerror or exc}"
        ) from None
