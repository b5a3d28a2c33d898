"""Where things live in a training base dir: every path the tools use, resolved once."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from trainguard.config import Config

LOCK_FILENAME = ".watchdog.lock"


@dataclass(frozen=True)
class Workspace:
    """Absolute paths of one workspace; relative config keys hang off base_dir."""

    config: Config

    @property
    def base_dir(self) -> Path:
        return Path(self.config.base_dir)

    def path(self, relative: str) -> Path:
        return self.base_dir / relative

    @property
    def pid_file(self) -> Path:
        return self.path(self.config.daemon.pid_file)

    @property
    def progress_file(self) -> Path:
        return self.path(self.config.daemon.progress_file)

    @property
    def daemon_log(self) -> Path:
        return self.path(self.config.daemon.log_file)

    @property
    def state_file(self) -> Path:
        return self.path(self.config.watchdog.state_file)

    @property
    def checkpoints_dir(self) -> Path:
        return self.path(self.config.checkpoints.dir)

    @property
    def crash_history(self) -> Path:
        return self.path(self.config.crash_detector.history_file)

    @property
    def lock_file(self) -> Path:
        return self.base_dir / LOCK_FILENAME

    @property
    def job_config(self) -> Path:
        """The training job's own config (config.json), which health-check backs up and restores."""
        return self.path(self.config.health.job_config)

    @property
    def job_config_backup(self) -> Path:
        return self.path(self.config.health.job_config_backup)

    @property
    def health_log(self) -> Path:
        return self.path(self.config.health.log_file)

    def required_dirs(self) -> list[Path]:
        return [self.path(d) for d in self.config.health.required_dirs]

    def required_files(self) -> list[Path]:
        return [self.path(f) for f in self.config.health.required_files]
