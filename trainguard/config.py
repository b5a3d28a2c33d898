"""trainguard.toml: every key, loaded once, validated before anything starts.

A bad config is refused with one line per problem naming the key path; environment variables
`TRAINGUARD_<SECTION>__<KEY>` override keys of the file.

The sections are frozen stdlib dataclasses whose constraints pydantic reads (`annotated_types`
bounds, `_Rule` checks): pydantic validates them in `load_config`, but this module does not
import it. The watchdog, which holds a Config for weeks, has a child validate its config
(`trainguard.config_child`) and so never carries pydantic (~10 MiB of its RSS).

The bounds (`Ge(0)`, ...) are named only in annotations, which stay strings until pydantic
reads them: `annotated_types` (~12 ms to import) is imported when a config is validated, not
when this module is (see `_validator`).
"""

from __future__ import annotations

import functools
import os
import re
import signal
import string
import sys
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from trainguard.config_source import CONFIG_ENV as CONFIG_ENV  # re-exported: tools import these
from trainguard.config_source import CONFIG_FILENAME as CONFIG_FILENAME
from trainguard.config_source import find_config_path as find_config_path
from trainguard.config_source import override_keys
from trainguard.errors import ConfigError

if TYPE_CHECKING:
    from annotated_types import Ge, Gt, Le, MinLen

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

# The bundled example daemon; `{python}` is the interpreter trainguard runs under (the venv's).
EXAMPLE_COMMAND = ("{python}", "-m", "daemon_watchdog.example.daemon", "--base-dir", "{base_dir}")


class _Rule:
    """A key's own check, run by pydantic after the type check (what pydantic's `AfterValidator`
    does, through its documented `__get_pydantic_core_schema__` hook, so that pydantic is imported
    only when a config is validated). The check raises ValueError with the reason."""

    __slots__ = ("check",)

    def __init__(self, check: Callable[[Any], Any]) -> None:
        self.check = check

    def __get_pydantic_core_schema__(self, source: Any, handler: Callable[[Any], Any]) -> Any:
        from pydantic_core import core_schema

        return core_schema.no_info_after_validator_function(self.check, handler(source))


class _Section:
    __slots__ = ()
    # strict: TOML has real types, so "3" for an int is a mistake worth reporting, not coercing.
    __pydantic_config__: ClassVar[dict[str, Any]] = {
        "extra": "forbid",
        "strict": True,
        "allow_inf_nan": False,
    }

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Callable[[Any], Any]) -> Any:
        schema = handler(source)
        schema["strict"] = False  # a TOML table arrives as a dict; its keys stay strict
        return schema


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


def _command_placeholders(value: list[str]) -> list[str]:
    if not value[0].strip():
        raise ValueError("the program (item 0) is empty")
    return _check_placeholders(value, frozenset({"base_dir", "python"}))


def _resume_placeholders(value: list[str]) -> list[str]:
    return _check_placeholders(value, frozenset({"base_dir", "python", "checkpoint"}))


def _known_signal(value: str) -> str:
    name = value.upper() if value.upper().startswith("SIG") else "SIG" + value.upper()
    if name not in signal.Signals.__members__ or name in ("SIGKILL", "SIGSTOP"):
        raise ValueError(f"{value!r} is not a catchable signal name such as SIGTERM or SIGINT")
    return name


@dataclass(frozen=True, slots=True, kw_only=True)
class DaemonSection(_Section):
    command: Annotated[list[str], MinLen(1), _Rule(_command_placeholders)] = field(
        default_factory=lambda: list(EXAMPLE_COMMAND)
    )
    resume_args: Annotated[list[str], _Rule(_resume_placeholders)] = field(
        default_factory=lambda: ["--resume-from", "{checkpoint}"]
    )
    pid_file: str = ".daemon.pid"
    progress_file: str = "status/progress.json"
    log_file: str = "logs/daemon.log"
    stop_signal: Annotated[str, _Rule(_known_signal)] = "SIGTERM"
    stop_timeout: Annotated[float, Ge(0)] = 30
    # A planned stop first asks a trainer that answers save requests (trainguard.progress) for
    # a checkpoint, and waits this long for it; 0: never ask.
    save_on_stop_timeout: Annotated[float, Ge(0)] = 60


def _valid_regexes(value: list[str]) -> list[str]:
    for index, pattern in enumerate(value):
        if not pattern:
            raise ValueError(f"item {index}: an empty pattern would match every process")
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"item {index}: invalid regex {pattern!r}: {exc}") from None
    return value


def _step_regex(value: str) -> str:
    if not value:
        return value
    try:
        compiled = re.compile(value)
    except re.error as exc:
        raise ValueError(f"invalid regex {value!r}: {exc}") from None
    if compiled.groups == 0:
        raise ValueError(f"'{value}' has no group for the step, as in 'step (\\d+)'")
    return value


def _phase_seconds(value: dict[str, float]) -> dict[str, float]:
    for phase, seconds in value.items():
        if seconds < 0:
            raise ValueError(f"{phase}: must be >= 0 (0 means no timeout), got {seconds}")
    return value


KNOB_KINDS = ("config", "env")


def _knob(value: str) -> str:
    """`config:KEY` (a key of the job's config.json; dots reach into nested objects) or
    `env:NAME` (an environment variable of the daemon); "" = none."""
    if not value:
        return value
    kind, sep, name = value.partition(":")
    if not sep or kind not in KNOB_KINDS or not name:
        raise ValueError(f'{value!r} must be "config:KEY" or "env:NAME" (e.g. config:batch_size)')
    if kind == "env" and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise ValueError(f"{value!r}: {name!r} is not an environment variable name")
    if kind == "config" and any(not part for part in name.split(".")):
        raise ValueError(f"{value!r}: empty key in {name!r}")
    return value


@dataclass(frozen=True, slots=True, kw_only=True)
class HalveAction(_Section):
    """cuda_oom / host_oom: halve a knob before the restart, never below `floor`; `double`
    (optional) doubles a gradient-accumulation knob with it, keeping the effective batch."""

    halve: Annotated[str, MinLen(1), _Rule(_knob)]
    floor: Annotated[float, Gt(0)] = 1
    double: Annotated[str, _Rule(_knob)] = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class GpuAction(_Section):
    """gpu_hardware (and cuda_error with Xid/ECC evidence): restart without the failed GPU while
    at least `min_gpus` remain; otherwise FATAL, naming it."""

    exclude_gpu: bool = True
    min_gpus: Annotated[int, Ge(1)] = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class RewindAction(_Section):
    """nan_loss: resume from an older checkpoint (skip the newest `rewind` complete ones, which
    may hold diverged weights); optionally multiply a learning-rate knob by `factor`."""

    rewind: Annotated[int, Ge(0)] = 1
    scale: Annotated[str, _Rule(_knob)] = ""
    factor: Annotated[float, Gt(0)] = 0.5


@dataclass(frozen=True, slots=True, kw_only=True)
class PruneAction(_Section):
    """disk_full: prune checkpoints beyond keep_last before the restart, whatever the free space."""

    prune: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class RecoverySection(_Section):
    """[watchdog.recovery]: what to change before restarting after each kind of crash; each
    action is off unless configured (daemon_watchdog/crash_actions.py)."""

    cuda_oom: HalveAction | None = None
    host_oom: HalveAction | None = None
    gpu_hardware: GpuAction | None = None
    nan_loss: RewindAction | None = None
    disk_full: PruneAction | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RecoverySection:
        kinds = {"cuda_oom": HalveAction, "host_oom": HalveAction, "gpu_hardware": GpuAction,
                 "nan_loss": RewindAction, "disk_full": PruneAction}  # fmt: skip
        return cls(**{
            name: None if value is None else kinds[name](**value) for name, value in data.items()
        })  # fmt: skip


@dataclass(frozen=True, slots=True, kw_only=True)
class WatchdogSection(_Section):
    check_interval: Annotated[float, Gt(0)] = 30
    progress_timeout: Annotated[float, Gt(0)] = 600
    # Learn each phase's hang threshold from the trainer's own rhythm: 5x the longest silence
    # seen in the phase, once warmed up, within [progress_timeout_min, the phase's timeout]
    # (daemon_watchdog/step_rhythm.py). Off: the configured timeouts alone.
    adaptive_timeout: bool = True
    progress_timeout_min: Annotated[float, Ge(0)] = 30
    startup_grace: Annotated[float, Ge(0)] = 300
    max_restarts: Annotated[int, Ge(0)] = 3
    restart_window: Annotated[float, Gt(0)] = 300
    # Seconds before the second restart in a row (the first is at once); doubles each time.
    backoff_base: Annotated[float, Ge(0)] = 2
    backoff_max: Annotated[float, Ge(0)] = 120
    backoff_reset_after: Annotated[float, Gt(0)] = 600  # this long healthy resets the backoff
    # FATAL after this many restarts in a row that never got past the checkpoint step of the
    # previous one: restarting is not making progress.
    max_restarts_without_progress: Annotated[int, Ge(1)] = 3
    # Seconds for py-spy / faulthandler dumps; more than 2 is accepted but capped at 2, so that
    # a hang is restarted within progress_timeout plus a few seconds.
    hang_dump_timeout: Annotated[float, Gt(0)] = 2
    prune_interval: Annotated[float, Gt(0)] = 600  # seconds between checkpoint pruning runs
    orphan_patterns: Annotated[list[str], _Rule(_valid_regexes)] = field(
        default_factory=lambda: ["train.py"]
    )
    state_file: str = "status/watchdog.json"
    # Per-phase hang timeouts in seconds (e.g. eval = 1800); 0 means that phase never hangs.
    phase_timeouts: Annotated[dict[str, float], _Rule(_phase_seconds)] = field(default_factory=dict)
    # How the trainer shows it is alive: "progress" (the progress file), "log" (new output in
    # the daemon log), "off" (no hang detection); "auto": the progress file once one appears,
    # new log output until then.
    liveness: Literal["auto", "progress", "log", "off"] = "auto"
    # Reads the step from log lines (its group `step`, else its first group), e.g. 'step (\d+)'.
    progress_regex: Annotated[str, _Rule(_step_regex)] = ""
    recovery: RecoverySection = field(default_factory=RecoverySection)


def _plain_file_names(value: list[str]) -> list[str]:
    for index, name in enumerate(value):
        if not name or name.startswith("/") or ".." in Path(name).parts:
            raise ValueError(f"item {index}: {name!r} must be a path inside the checkpoint folder")
    return value


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckpointsSection(_Section):
    dir: str = "checkpoints"
    # Folders (checkpoint-500/) or files (*.ckpt, ckpt_*.pt): whatever the trainer writes.
    pattern: str = "checkpoint-*"
    keep_last: Annotated[int, Ge(1)] = 5  # >= 1: the newest valid checkpoint is never pruned
    # A checkpoint folder is complete only with these (Hugging Face writes trainer_state.json
    # after the weights and optimizer); [] for trainers that write other files.
    required_files: Annotated[list[str], _Rule(_plain_file_names)] = field(
        default_factory=lambda: ["trainer_state.json"]
    )
    # A checkpoint whose newest file changed less than this long ago, while a trainer may be
    # writing it, is in flight: never resumed from, pruned or counted.
    settle_seconds: Annotated[float, Ge(0)] = 60
    # Start from scratch when checkpoints exist but none is valid (they are quarantined
    # first); otherwise that is FATAL, never a silent restart from step 0.
    allow_fresh_start: bool = False


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
# What the runners check before every task, experiment and phase ([preflight] checks).
STEP_CHECKS = ("ssh", "gpu", "inputs", "ramdisk", "disk_space")


def _known_checks(value: dict[str, float]) -> dict[str, float]:
    known = (*HEALTH_CHECKS, *PREFLIGHT_CHECKS)
    for name, seconds in value.items():
        if name not in known:
            raise ValueError(f"{name}: unknown check (known: {', '.join(known)})")
        if seconds <= 0:
            raise ValueError(f"{name}: must be > 0, got {seconds}")
    return value


def _gpu_indexes(value: list[int]) -> list[int]:
    for index in value:
        if index < 0:
            raise ValueError(f"GPU indexes are >= 0, got {index}")
    return value


def _ssh_targets(value: list[str]) -> list[str]:
    for index, node in enumerate(value):
        # ssh would read "-oProxyCommand=..." as an option: a host never starts with "-".
        if not node.strip() or node.startswith("-") or any(c.isspace() for c in node):
            raise ValueError(f"item {index}: {node!r} is not a host or user@host")
    return value


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthSection(_Section):
    disk_min_free_gb: Annotated[float, Ge(0)] = 50  # CRITICAL below this on a checked filesystem
    disk_min_free_pct: Annotated[float, Ge(0), Le(100)] = 5  # WARNING below this share free
    inodes_min_free_pct: Annotated[float, Ge(0), Le(100)] = 5  # CRITICAL below: no file can be made
    # Filesystems checked besides those of base_dir, checkpoints, logs and the daemon's log.
    disk_paths: list[str] = field(default_factory=list)
    mem_min_available_gb: Annotated[float, Ge(0)] = 4
    swap_max_used_pct: Annotated[float, Ge(0), Le(100)] = 80  # WARNING above
    gpu_max_temp_c: Annotated[float, Gt(0), Le(150)] = 85
    gpu_max_mem_pct: Annotated[float, Gt(0), Le(100)] = 95
    gpus_expected: Annotated[int, Ge(0)] = 0
    # indexes: reported, never failed
    excluded_gpus: Annotated[list[int], _Rule(_gpu_indexes)] = field(default_factory=list)
    rocm_smi_command: Annotated[list[str], MinLen(1)] = field(default_factory=lambda: ["rocm-smi"])
    required_dirs: list[str] = field(
        default_factory=lambda: ["inbox", "logs", "status", "checkpoints"]
    )
    required_files: list[str] = field(default_factory=lambda: ["config.json"])
    job_config: str = "config.json"  # the training job's own config
    job_config_required_keys: list[str] = field(default_factory=lambda: ["base_model"])
    job_config_backup: str = "status/config.last-good.json"  # refreshed on every OK run
    # WARNING when the newest valid checkpoint is older than this while training; 0 = off.
    checkpoint_max_age: Annotated[float, Ge(0)] = 0
    # Seconds each check may take before it reports UNKNOWN; per-check overrides by name.
    check_timeout: Annotated[float, Gt(0)] = 10
    check_timeouts: Annotated[dict[str, float], _Rule(_known_checks)] = field(default_factory=dict)
    log_file: str = "logs/health-check.log"  # every --fix action is logged here
    # --preflight
    # ssh targets: "host" or "user@host"
    nodes: Annotated[list[str], _Rule(_ssh_targets)] = field(default_factory=list)
    ssh_command: Annotated[list[str], MinLen(1)] = field(default_factory=lambda: ["ssh"])
    ssh_timeout: Annotated[float, Gt(0)] = 5
    inputs: list[str] = field(default_factory=list)  # files that must exist and be readable
    ramdisk_dir: str = "/dev/shm"  # noqa: S108 - the ramdisk is the point, not a temp file
    ramdisk_files: list[str] = field(default_factory=list)  # names inside ramdisk_dir


def _step_checks(value: list[str]) -> list[str]:
    for name in value:
        if name not in STEP_CHECKS:
            raise ValueError(f"{name!r}: unknown check (known: {', '.join(STEP_CHECKS)})")
    return value


@dataclass(frozen=True, slots=True, kw_only=True)
class PreflightSection(_Section):
    """What the runners check before each task, experiment and phase (and the ssh targets of
    `health-check --preflight`)."""

    # ssh destinations, anything ssh takes: "host", "user@host", "ssh://host:2222"
    nodes: Annotated[list[str], _Rule(_ssh_targets)] = field(default_factory=list)
    checks: Annotated[list[str], _Rule(_step_checks)] = field(
        default_factory=lambda: list(STEP_CHECKS)
    )
    # Seconds a passing ssh / gpu / disk result is reused by the next steps (0: never).
    cache_seconds: Annotated[float, Ge(0)] = 5


@dataclass(frozen=True, slots=True, kw_only=True)
class CrashDetectorSection(_Section):
    logs: list[str] = field(default_factory=lambda: ["logs/*.log"])
    history_file: str = ".crash_history.jsonl"


ALERT_KINDS = ("crash", "hang", "fatal", "health_critical", "disk_low")


def _known_kinds(value: list[str]) -> list[str]:
    for kind in value:
        if kind not in ALERT_KINDS:
            raise ValueError(f"unknown alert kind {kind!r} (known: {', '.join(ALERT_KINDS)})")
    return value


def _apprise_urls(value: list[str]) -> list[str]:
    for index, url in enumerate(value):
        if "://" not in url:
            raise ValueError(f"item {index}: {url!r} is not an apprise URL (scheme://...)")
    return value


@dataclass(frozen=True, slots=True, kw_only=True)
class AlertsSection(_Section):
    # apprise URLs: "slack://...", "discord://...", "mailto://...", "ntfy://...", "json://host".
    urls: Annotated[list[str], _Rule(_apprise_urls)] = field(default_factory=list)
    cooldown: Annotated[float, Ge(0)] = 900  # seconds an identical alert stays quiet
    kinds: Annotated[list[str], _Rule(_known_kinds)] = field(
        default_factory=lambda: list(ALERT_KINDS)
    )
    state_file: str = "status/alerts.json"  # when each alert was last sent (de-duplication)
    timeout: Annotated[float, Gt(0)] = 20  # seconds one delivery may take before it is abandoned
    # A file of more URLs, one a line (# comments), read at start: the tokens stay out of a
    # trainguard.toml that others on the box can read. Relative to base_dir.
    urls_file: str = ""


def _host_port(value: str) -> str:
    if not value:
        return value
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{value!r} is not HOST:PORT (e.g. 127.0.0.1:9464)")
    return value


@dataclass(frozen=True, slots=True, kw_only=True)
class MetricsSection(_Section):
    # "127.0.0.1:9464" serves Prometheus /metrics from the watchdog; "" = off
    listen: Annotated[str, _Rule(_host_port)] = ""


def _slots(value: str | int) -> str | int:
    if isinstance(value, str) and value != "auto":
        raise ValueError(f'must be "auto" or a number of slots >= 1 (got {value!r})')
    if isinstance(value, int) and value < 1:
        raise ValueError(f"must be >= 1 (got {value})")
    return value


def _post_task_placeholders(value: list[str]) -> list[str]:
    if value and not value[0].strip():
        raise ValueError("the program (item 0) is empty")
    return _check_placeholders(value, frozenset({"gpus"}))


def _crash_categories(value: list[str]) -> list[str]:
    for name in value:
        if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
            raise ValueError(f"{name!r} is not a crash category such as gpu_hardware")
    return value


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueNode(_Section):
    excluded_gpus: Annotated[list[int], _Rule(_gpu_indexes)] = field(default_factory=list)


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueSection(_Section):
    ledger: str = "queue/ledger.db"  # the SQLite ledger of tasks and attempts
    backend: Literal["local", "dask"] = "local"
    scheduler: str = ""  # the Dask scheduler's address; "" = a LocalCluster on this machine
    # Workers of the local backend: "auto" = one per visible, non-excluded GPU (1 without GPU).
    slots: Annotated[str | int, _Rule(_slots)] = "auto"
    # Failed attempts after which a task is failed for good (a non-retryable crash: after 1).
    max_retries: Annotated[int, Ge(1)] = 3
    task_timeout: Annotated[float, Gt(0)] = 7200  # seconds an attempt may run
    nodes: dict[str, QueueNode] = field(default_factory=dict)  # per host: excluded_gpus
    # Run after every attempt on a GPU worker (argv, never a shell; {gpus}: its GPU indexes),
    # e.g. ["rocm-smi", "--resetclocks"]; killed after post_task_timeout seconds.
    post_task: Annotated[list[str], _Rule(_post_task_placeholders)] = field(default_factory=list)
    post_task_timeout: Annotated[float, Gt(0)] = 60
    # Crash categories after which the attempt's GPUs take no more tasks in this run.
    exclude_gpu_on: Annotated[list[str], _Rule(_crash_categories)] = field(
        default_factory=lambda: ["gpu_hardware"]
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class Config(_Section):
    """The whole trainguard.toml. After `load_config`, `base_dir` is an absolute path."""

    base_dir: str = "."
    daemon: DaemonSection = field(default_factory=DaemonSection)
    watchdog: WatchdogSection = field(default_factory=WatchdogSection)
    checkpoints: CheckpointsSection = field(default_factory=CheckpointsSection)
    health: HealthSection = field(default_factory=HealthSection)
    crash_detector: CrashDetectorSection = field(default_factory=CrashDetectorSection)
    alerts: AlertsSection = field(default_factory=AlertsSection)
    metrics: MetricsSection = field(default_factory=MetricsSection)
    queue: QueueSection = field(default_factory=QueueSection)
    preflight: PreflightSection = field(default_factory=PreflightSection)

    def excluded_gpus(self, host: str) -> list[int]:
        """GPU indexes never handed to a task on `host`: [health] excluded_gpus and that
        host's [queue.nodes."HOST"] excluded_gpus."""
        node = self.queue.nodes.get(host)
        return sorted({*self.health.excluded_gpus, *(node.excluded_gpus if node else ())})

    def ssh_nodes(self) -> list[str]:
        """[preflight] nodes, then the older spelling [health] nodes, each once."""
        return list(dict.fromkeys([*self.preflight.nodes, *self.health.nodes]))


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
        data = read_toml(source)
    env_keys = _apply_env_overrides(data, environ, label)
    if data:
        from pydantic import ValidationError

        try:
            config: Config = _validator().validate_python(data)
        except ValidationError as exc:
            problems = [_describe(error, label, env_keys) for error in exc.errors()]
            raise ConfigError(problems[0], problems=problems) from None
    else:
        # Nothing to validate: the defaults are valid by construction (a test holds them to
        # what pydantic makes of {}), and a quick command (crash-detector on one log) never
        # pays pydantic's import.
        config = Config()
    anchor = source.resolve().parent if source is not None else Path.cwd()
    if "\x00" in config.base_dir:
        raise ConfigError(f"{label}: base_dir: contains a NUL character")
    base_dir = (anchor / os.path.expanduser(config.base_dir)).resolve()
    config = replace(config, base_dir=str(base_dir))
    if config.alerts.urls_file:
        more = _read_urls_file(base_dir / os.path.expanduser(config.alerts.urls_file), label)
        config = replace(config, alerts=replace(config.alerts, urls=[*config.alerts.urls, *more]))
    return config


def _read_urls_file(path: Path, label: str) -> list[str]:
    where = f"{label}: alerts.urls_file: {path}"
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"{where}: cannot read: {reason}") from None
    urls: list[str] = []
    for number, line in enumerate(text.splitlines(), 1):
        url = line.strip()
        if not url or url.startswith("#"):
            continue
        if "://" not in url:  # not echoed: it may be a bare token
            raise ConfigError(f"{where}: line {number} is not an apprise URL (scheme://...)")
        urls.append(url)
    return urls


def mask_url(url: str) -> str:
    """An alert URL as it may be shown or logged: its scheme only (`slack://***`); the rest
    holds tokens."""
    scheme, sep, _ = url.partition("://")
    return f"{scheme}://***" if sep else "***"


@functools.cache
def _validator() -> Any:
    """pydantic's validator of Config, built once per process (~0.1 s)."""
    import annotated_types
    from pydantic import TypeAdapter

    # pydantic evaluates the annotations in this module's namespace: the bounds they name
    # join it now (see the module's docstring).
    globals().update(
        Ge=annotated_types.Ge, Gt=annotated_types.Gt, Le=annotated_types.Le,
        MinLen=annotated_types.MinLen,
    )  # fmt: skip
    return TypeAdapter(Config)


def config_as_dict(config: Config) -> dict[str, Any]:
    """Every key with its value, sections as nested dicts (JSON- and TOML-ready: a recovery
    action that is not configured is left out, as in the file, since TOML has no null)."""
    data = asdict(config)
    recovery = data["watchdog"]["recovery"]
    data["watchdog"]["recovery"] = {k: v for k, v in recovery.items() if v is not None}
    return data


def config_from_dict(data: Mapping[str, Any]) -> Config:
    """Rebuild a Config from `config_as_dict` of one `load_config` validated: no checks."""
    values = dict(data)
    for item in fields(Config):
        if isinstance(item.default_factory, type):  # a section: its class makes its default
            values[item.name] = item.default_factory(**data[item.name])
    watchdog = values["watchdog"]
    recovery = RecoverySection.from_dict(data["watchdog"].get("recovery", {}))
    values["watchdog"] = replace(watchdog, recovery=recovery)
    queue = values["queue"]
    nodes = {host: QueueNode(**node) for host, node in data["queue"]["nodes"].items()}
    values["queue"] = replace(queue, nodes=nodes)
    return Config(**values)


def read_toml(source: Path, what: str = "config file") -> dict[str, Any]:
    """A TOML file as a table (trainguard.toml, STUDY.toml, PIPELINE.toml), or ConfigError
    saying in one line why it cannot be read."""
    try:
        raw = source.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{source}: {what} not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{source}: is a directory, not a {what}") from None
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
        keys = override_keys(name)
        if keys is None:
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


def _did_you_mean(loc: tuple[str, ...]) -> str:
    """`; did you mean max_restarts?` for a key close to one its table has."""
    import difflib

    table: Any = Config
    for part in loc[:-1]:
        found = {f.name: f for f in fields(table)}.get(part) if is_dataclass(table) else None
        if found is None or not isinstance(found.default_factory, type):
            return ""  # a table of free keys (queue.nodes, phase_timeouts): nothing to offer
        table = found.default_factory
    if not is_dataclass(table):
        return ""
    close = difflib.get_close_matches(loc[-1], [f.name for f in fields(table)], n=1, cutoff=0.7)
    return f"; did you mean {close[0]}?" if close else ""


def _describe(error: Mapping[str, Any], label: str, env_keys: Mapping[tuple[str, ...], str]) -> str:
    loc = tuple(str(part) for part in error["loc"])
    path = ".".join(part if not part.isdigit() else f"[{part}]" for part in loc).replace(".[", "[")
    kind = error["type"]
    if kind in ("extra_forbidden", "unexpected_keyword_argument"):
        message = "unknown key" + _did_you_mean(loc)
    elif kind == "dataclass_type":
        message = f"must be a table (got {error['input']!r})"
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
