"""trainguard.toml: pydantic models of every key, loaded once, validated before anything starts.

A bad config is refused with one line per problem naming the key path; environment variables
`TRAINGUARD_<SECTION>__<KEY>` override keys of the file.
"""

from __future__ import annotations

import os
import re
import signal
import string
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from trainguard.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

CONFIG_FILENAME = "trainguard.toml"
CONFIG_ENV = "TRAINGUARD_CONFIG"
ENV_PREFIX = "TRAINGUARD_"

# The bundled example daemon; `{python}` is the interpreter trainguard runs under (the venv's).
EXAMPLE_COMMAND = ("{python}", "-m", "daemon_watchdog.example.daemon", "--base-dir", "{base_dir}")


class _Section(BaseModel):
    # strict: TOML has real types, so "3" for an int is a mistake worth reporting, not coercing.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


def _check_placeholders(argv: list[str], allowed: frozenset[str]) -> list[str]:
    for index, arg in enumerate(argv):
        try:
            parsed = [
                (n, spec, conv)
                for _, n, spec, conv in string.Formatter().parse(arg)
                if n is not None
            ]
        except ValueError as exc:
            raise ValueError(f"item {index}: {exc}") from None
        for name, spec, conversion in parsed:
            if spec or conversion:
                raise ValueError(f"item {index}: write placeholders plainly, as {{{name}}}")
            if name not in allowed:
                known = ", ".join(sorted("{" + a + "}" for a in allowed))
                raise ValueError(f"item {index}: unknown placeholder {{{name}}} (known: {known})")
    return argv


class DaemonSection(_Section):
    command: list[str] = Field(default_factory=lambda: list(EXAMPLE_COMMAND), min_length=1)
    resume_args: list[str] = Field(default_factory=lambda: ["--resume-from", "{checkpoint}"])
    pid_file: str = ".daemon.pid"
    progress_file: str = "status/progress.json"
    log_file: str = "logs/daemon.log"
    stop_signal: str = "SIGTERM"
    stop_timeout: float = Field(30, ge=0)

    @field_validator("command")
    @classmethod
    def _command_placeholders(cls, value: list[str]) -> list[str]:
        if not value[0].strip():
            raise ValueError("the program (item 0) is empty")
        return _check_placeholders(value, frozenset({"base_dir", "python"}))

    @field_validator("resume_args")
    @classmethod
    def _resume_placeholders(cls, value: list[str]) -> list[str]:
        return _check_placeholders(value, frozenset({"base_dir", "python", "checkpoint"}))

    @field_validator("stop_signal")
    @classmethod
    def _known_signal(cls, value: str) -> str:
        name = value.upper() if value.upper().startswith("SIG") else "SIG" + value.upper()
        if name not in signal.Signals.__members__ or name in ("SIGKILL", "SIGSTOP"):
            raise ValueError(f"{value!r} is not a catchable signal name such as SIGTERM or SIGINT")
        return name


class WatchdogSection(_Section):
    check_interval: float = Field(30, gt=0)
    progress_timeout: float = Field(600, gt=0)
    startup_grace: float = Field(300, ge=0)
    max_restarts: int = Field(3, ge=0)
    restart_window: float = Field(300, gt=0)
    backoff_base: float = Field(2, ge=0)  # seconds before the first restart; doubles each time
    backoff_max: float = Field(120, ge=0)
    backoff_reset_after: float = Field(600, gt=0)  # this long healthy resets the backoff
    # FATAL after this many restarts in a row that never got past the checkpoint step of the
    # previous one: restarting is not making progress.
    max_restarts_without_progress: int = Field(3, ge=1)
    hang_dump_timeout: float = Field(10, gt=0)  # seconds for py-spy / faulthandler stack dumps
    prune_interval: float = Field(600, gt=0)  # seconds between checkpoint pruning runs
    orphan_patterns: list[str] = Field(default_factory=lambda: ["train.py"])
    state_file: str = "status/watchdog.json"
    # Per-phase hang timeouts in seconds (e.g. eval = 1800); 0 means that phase never hangs.
    phase_timeouts: dict[str, float] = Field(default_factory=dict)

    @field_validator("orphan_patterns")
    @classmethod
    def _valid_regexes(cls, value: list[str]) -> list[str]:
        for index, pattern in enumerate(value):
            if not pattern:
                raise ValueError(f"item {index}: an empty pattern would match every process")
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"item {index}: invalid regex {pattern!r}: {exc}") from None
        return value

    @field_validator("phase_timeouts")
    @classmethod
    def _non_negative(cls, value: dict[str, float]) -> dict[str, float]:
        for phase, seconds in value.items():
            if seconds < 0:
                raise ValueError(f"{phase}: must be >= 0 (0 means no timeout), got {seconds}")
        return value


class CheckpointsSection(_Section):
    dir: str = "checkpoints"
    pattern: str = "checkpoint-*"
    keep_last: int = Field(5, ge=1)  # >= 1: the newest valid checkpoint is never pruned


HEALTH_CHECKS = (
    "directories",
    "required_files",
    "config",
    "disk_space",
    "memory",
    "gpu",
    "daemon",
    "progress",
    "checkpoints",
    "orphans",
)
PREFLIGHT_CHECKS = ("ssh", "inputs", "ramdisk")


class HealthSection(_Section):
    disk_min_free_gb: float = Field(50, ge=0)  # CRITICAL below this on any checked filesystem
    disk_min_free_pct: float = Field(5, ge=0, le=100)  # WARNING below this share free
    inodes_min_free_pct: float = Field(5, ge=0, le=100)  # CRITICAL below: no file can be made
    # Filesystems checked besides those of base_dir, checkpoints, logs and the daemon's log.
    disk_paths: list[str] = Field(default_factory=list)
    mem_min_available_gb: float = Field(4, ge=0)
    swap_max_used_pct: float = Field(80, ge=0, le=100)  # WARNING above
    gpu_max_temp_c: float = Field(85, gt=0, le=150)
    gpu_max_mem_pct: float = Field(95, gt=0, le=100)
    gpus_expected: int = Field(0, ge=0)
    excluded_gpus: list[int] = Field(default_factory=list)  # indexes: reported, never failed
    rocm_smi_command: list[str] = Field(default_factory=lambda: ["rocm-smi"], min_length=1)
    required_dirs: list[str] = Field(
        default_factory=lambda: ["inbox", "logs", "status", "checkpoints"]
    )
    required_files: list[str] = Field(default_factory=lambda: ["config.json"])
    job_config: str = "config.json"  # the training job's own config
    job_config_required_keys: list[str] = Field(default_factory=lambda: ["base_model"])
    job_config_backup: str = "status/config.last-good.json"  # refreshed on every OK run
    # WARNING when the newest valid checkpoint is older than this while training; 0 = off.
    checkpoint_max_age: float = Field(0, ge=0)
    # Seconds each check may take before it reports UNKNOWN; per-check overrides by name.
    check_timeout: float = Field(10, gt=0)
    check_timeouts: dict[str, float] = Field(default_factory=dict)
    log_file: str = "logs/health-check.log"  # every --fix action is logged here
    # --preflight
    nodes: list[str] = Field(default_factory=list)  # ssh targets: "host" or "user@host"
    ssh_command: list[str] = Field(default_factory=lambda: ["ssh"], min_length=1)
    ssh_timeout: float = Field(5, gt=0)
    inputs: list[str] = Field(default_factory=list)  # files that must exist and be readable
    ramdisk_dir: str = "/dev/shm"  # noqa: S108 - the ramdisk is the point, not a temp file
    ramdisk_files: list[str] = Field(default_factory=list)  # names inside ramdisk_dir

    @field_validator("check_timeouts")
    @classmethod
    def _known_checks(cls, value: dict[str, float]) -> dict[str, float]:
        known = (*HEALTH_CHECKS, *PREFLIGHT_CHECKS)
        for name, seconds in value.items():
            if name not in known:
                raise ValueError(f"{name}: unknown check (known: {', '.join(known)})")
            if seconds <= 0:
                raise ValueError(f"{name}: must be > 0, got {seconds}")
        return value

    @field_validator("excluded_gpus")
    @classmethod
    def _gpu_indexes(cls, value: list[int]) -> list[int]:
        for index in value:
            if index < 0:
                raise ValueError(f"GPU indexes are >= 0, got {index}")
        return value

    @field_validator("nodes")
    @classmethod
    def _ssh_targets(cls, value: list[str]) -> list[str]:
        for index, node in enumerate(value):
            # ssh would read "-oProxyCommand=..." as an option: a host never starts with "-".
            if not node.strip() or node.startswith("-") or any(c.isspace() for c in node):
                raise ValueError(f"item {index}: {node!r} is not a host or user@host")
        return value


class CrashDetectorSection(_Section):
    logs: list[str] = Field(default_factory=lambda: ["logs/*.log"])
    history_file: str = ".crash_history.jsonl"


ALERT_KINDS = ("crash", "hang", "fatal", "health_critical", "disk_low")


class AlertsSection(_Section):
    # apprise URLs: "slack://...", "discord://...", "mailto://...", "ntfy://...", "json://host".
    urls: list[str] = Field(default_factory=list)
    cooldown: float = Field(900, ge=0)  # seconds an identical alert stays quiet
    kinds: list[str] = Field(default_factory=lambda: list(ALERT_KINDS))
    state_file: str = "status/alerts.json"  # when each alert was last sent (de-duplication)
    timeout: float = Field(20, gt=0)  # seconds one delivery may take before it is abandoned

    @field_validator("kinds")
    @classmethod
    def _known_kinds(cls, value: list[str]) -> list[str]:
        for kind in value:
            if kind not in ALERT_KINDS:
                raise ValueError(f"unknown alert kind {kind!r} (known: {', '.join(ALERT_KINDS)})")
        return value

    @field_validator("urls")
    @classmethod
    def _urls(cls, value: list[str]) -> list[str]:
        for index, url in enumerate(value):
            if "://" not in url:
                raise ValueError(f"item {index}: {url!r} is not an apprise URL (scheme://...)")
        return value


class MetricsSection(_Section):
    listen: str = ""  # "127.0.0.1:9464" serves Prometheus /metrics from the watchdog; "" = off

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        if not value:
            return value
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{value!r} is not HOST:PORT (e.g. 127.0.0.1:9464)")
        return value


class Config(_Section):
    """The whole trainguard.toml. After `load_config`, `base_dir` is an absolute path."""

    base_dir: str = "."
    daemon: DaemonSection = Field(default_factory=DaemonSection)
    watchdog: WatchdogSection = Field(default_factory=WatchdogSection)
    checkpoints: CheckpointsSection = Field(default_factory=CheckpointsSection)
    health: HealthSection = Field(default_factory=HealthSection)
    crash_detector: CrashDetectorSection = Field(default_factory=CrashDetectorSection)
    alerts: AlertsSection = Field(default_factory=AlertsSection)
    metrics: MetricsSection = Field(default_factory=MetricsSection)


def find_config_path(
    explicit: str | os.PathLike[str] | None, env: Mapping[str, str]
) -> Path | None:
    """`-c PATH` if given, else `./trainguard.toml` if present, else `$TRAINGUARD_CONFIG`."""
    if explicit is not None:
        return Path(explicit)
    local = Path(CONFIG_FILENAME)
    if local.is_file():
        return local
    from_env = env.get(CONFIG_ENV)
    return Path(from_env) if from_env else None


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
) -> Config:
    """Find, parse, apply environment overrides, validate; raise ConfigError on any problem."""
    environ = os.environ if env is None else env
    source = find_config_path(path, environ)
    data: dict[str, Any] = {}
    label = str(source) if source is not None else "defaults"
    if source is not None:
        data = _read_toml(source)
    env_keys = _apply_env_overrides(data, environ, label)
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        problems = [_describe(error, label, env_keys) for error in exc.errors()]
        raise ConfigError(problems[0], problems=problems) from None
    anchor = source.resolve().parent if source is not None else Path.cwd()
    if "\x00" in config.base_dir:
        raise ConfigError(f"{label}: base_dir: contains a NUL character")
    base_dir = (anchor / os.path.expanduser(config.base_dir)).resolve()
    return config.model_copy(update={"base_dir": str(base_dir)})


def _read_toml(source: Path) -> dict[str, Any]:
    try:
        raw = source.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{source}: config file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{source}: is a directory, not a config file") from None
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read: {exc.strerror or exc}") from None
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{source}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: invalid TOML: {exc}") from None


def _parse_env_value(text: str) -> Any:
    """A TOML literal (`5`, `true`, `["a", "b"]`, `"x"`), or else the raw string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _apply_env_overrides(
    data: dict[str, Any], env: Mapping[str, str], label: str
) -> dict[tuple[str, ...], str]:
    """Merge `TRAINGUARD_<SECTION>__<KEY>` (and `TRAINGUARD_BASE_DIR`) into `data`.

    Other `TRAINGUARD_*` names without `__` (the config path, the owner mark given to daemons)
    are not overrides and are left alone.
    """
    applied: dict[tuple[str, ...], str] = {}
    for name, text in sorted(env.items()):
        if not name.startswith(ENV_PREFIX):
            continue
        rest = name[len(ENV_PREFIX) :]
        if rest == "BASE_DIR":
            keys: tuple[str, ...] = ("base_dir",)
        elif "__" in rest:
            keys = tuple(part.lower() for part in rest.split("__"))
        else:
            continue
        if any(not key for key in keys):
            raise ConfigError(f"{name}: malformed override name (use TRAINGUARD_<SECTION>__<KEY>)")
        node = data
        for key in keys[:-1]:
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{name}: {'.'.join(keys[:-1])} in {label} is not a table")
            node = child
        node[keys[-1]] = _parse_env_value(text) if keys != ("base_dir",) else text
        applied[keys] = name
    return applied


_BOUND_WORDS = {
    "greater_than": ">",
    "greater_than_equal": ">=",
    "less_than": "<",
    "less_than_equal": "<=",
}
_BOUND_CTX = {
    "greater_than": "gt",
    "greater_than_equal": "ge",
    "less_than": "lt",
    "less_than_equal": "le",
}


def _describe(error: Mapping[str, Any], label: str, env_keys: Mapping[tuple[str, ...], str]) -> str:
    loc = tuple(str(part) for part in error["loc"])
    path = ".".join(part if not part.isdigit() else f"[{part}]" for part in loc).replace(".[", "[")
    kind = error["type"]
    if kind == "extra_forbidden":
        message = "unknown key"
    elif kind == "missing":
        message = "required key is missing"
    elif kind in _BOUND_WORDS:
        bound = error["ctx"][_BOUND_CTX[kind]]
        message = f"must be {_BOUND_WORDS[kind]} {bound} (got {error['input']!r})"
    elif kind == "value_error":
        message = str(error["ctx"]["error"])
    else:
        message = error["msg"][0].lower() + error["msg"][1:]
        if kind.endswith("_type") or kind.endswith("_parsing"):
            message += f" (got {error['input']!r})"
    # An override names a key (`loc` starts with it) or invents one (`loc` is a prefix of it).
    origin = next(
        (env_keys[k] for k in env_keys if loc[: len(k)] == k or k[: len(loc)] == loc), None
    )
    where = f"{origin} (environment)" if origin else label
    return f"{where}: {path}: {message}"


def expand_argv(argv: list[str], **values: str) -> list[str]:
    """Fill `{base_dir}`, `{python}`, `{checkpoint}` in an argv list: never through a shell."""
    values.setdefault("python", sys.executable)
    return [arg.format_map(values) for arg in argv]
