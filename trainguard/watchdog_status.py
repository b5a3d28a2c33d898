"""`status/watchdog.json`, typed: the one place that knows its keys.

The watchdog writes it (atomically replaced on every change); `status`, `stop`, `restart`, the
metrics, health-check, the demo, edge-cases and the benches read it. Its format is the
contract's: the keys below, times as ISO-8601 UTC strings. Reading is lenient, field by field:
a field of the wrong type reads as absent (and is named in `problems`), so one bad value never
hides the rest, and keys a newer writer adds are kept in `extra` and written back.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from trainguard.atomicio import read_json, write_json_atomic
from trainguard.procs import ProcessIdentity
from trainguard.timestamps import utc_now_iso
from trainguard.workspace import Workspace


def utc_now() -> str:
    return utc_now_iso("milliseconds")


@dataclass(frozen=True)
class CrashRecord:
    """One restart (or the last crash): what happened and what was done about it."""

    at: str | None
    reason: str
    category: str
    exit_code: int | None
    evidence: str = ""
    suggestion: str = ""
    resume_from: str | None = None  # the checkpoint's name, None: from the start
    quarantined: str | None = None  # "NAME: why", a checkpoint the trainer could not use
    recovery: tuple[str, ...] = ()  # what [watchdog.recovery] changed for this restart
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            **self.extra,
            "at": self.at,
            "reason": self.reason,
            "category": self.category,
            "exit_code": self.exit_code,
            "evidence": self.evidence,
            "suggestion": self.suggestion,
            "resume_from": self.resume_from,
        }
        if self.quarantined is not None:
            out["quarantined"] = self.quarantined
        if self.recovery:
            out["recovery"] = list(self.recovery)
        return out

    @classmethod
    def from_json(cls, data: object) -> CrashRecord | None:
        if not isinstance(data, Mapping):
            return None
        known = {f.name for f in fields(cls)} - {"extra"}
        return cls(
            at=_str(data.get("at")),
            reason=_str(data.get("reason")) or "",
            category=_str(data.get("category")) or "unknown",
            exit_code=_int(data.get("exit_code")),
            evidence=_str(data.get("evidence")) or "",
            suggestion=_str(data.get("suggestion")) or "",
            resume_from=_str(data.get("resume_from")),
            quarantined=_str(data.get("quarantined")),
            recovery=tuple(r for r in _list(data.get("recovery")) if isinstance(r, str)),
            extra={k: v for k, v in data.items() if k not in known},
        )


@dataclass(frozen=True)
class ProgressMark:
    step: int
    phase: str
    at: str | None  # when the watchdog saw it

    def to_json(self) -> dict[str, Any]:
        return {"step": self.step, "phase": self.phase, "at": self.at}

    @classmethod
    def from_json(cls, data: object) -> ProgressMark | None:
        if not isinstance(data, Mapping) or _int(data.get("step")) is None:
            return None
        return cls(int(data["step"]), _str(data.get("phase")) or "", _str(data.get("at")))


@dataclass(frozen=True)
class HangThreshold:
    """The silence after which the watchdog calls the trainer hung, in its current phase."""

    phase: str
    seconds: float | None  # None: no hang detection in this phase
    learned: bool  # from the trainer's rhythm (daemon_watchdog.step_rhythm), else configured
    why: str

    def to_json(self) -> dict[str, Any]:
        return {"phase": self.phase, "seconds": self.seconds, "learned": self.learned,
                "why": self.why}  # fmt: skip

    @classmethod
    def from_json(cls, data: object) -> HangThreshold | None:
        if not isinstance(data, Mapping):
            return None
        raw = data.get("seconds")
        seconds = _seconds(raw)
        if raw is not None and seconds is None:  # not a number, NaN, negative, absurd
            return None
        learned = data.get("learned") is True
        return cls(_str(data.get("phase")) or "", seconds, learned, _str(data.get("why")) or "")


Scalar = int | float | str | None  # a knob's value: a JSON scalar; None = an unset variable

RECOVERY_EVENTS_KEPT = 20


def show_scalar(value: object) -> str:
    """A knob's value in a sentence: `unset`, `3e-05`, `32`, `0,2`."""
    if value is None:
        return "unset"
    return f"{value:g}" if isinstance(value, float) else str(value)


@dataclass(frozen=True)
class KnobChange:
    """A knob the watchdog changed after a crash: its value before the first change (what
    `restart --reset-recovery` puts back) and now."""

    original: Scalar
    value: Scalar

    def to_json(self) -> dict[str, Any]:
        return {"original": self.original, "value": self.value}


# A RecoveryEvent's actions: those taken (counted by the watchdog's metric and the restart
# policy) and those that record no action (why one was skipped, a floor, a reset of nothing).
COUNTED_ACTIONS = ("halve", "double", "exclude_gpu", "rewind", "scale", "prune", "reset")
NOT_COUNTED = frozenset({"skipped", "fatal", "noop", "device_order"})


@dataclass(frozen=True)
class RecoveryEvent:
    """One recovery action (or its reset, or why it was skipped): from what to what."""

    at: str | None
    category: str  # the crash category that called for it ("" for a reset)
    action: str  # halve double exclude_gpu rewind scale prune reset skipped fatal
    text: str  # one line for the log, status and the alert
    knob: str | None = None  # "config:batch_size", "env:CUDA_VISIBLE_DEVICES"
    before: Scalar = None
    after: Scalar = None
    step: int | None = None  # the step the run died at

    def to_json(self) -> dict[str, Any]:
        return {"at": self.at, "category": self.category, "action": self.action,
                "text": self.text, "knob": self.knob, "from": self.before, "to": self.after,
                "step": self.step}  # fmt: skip

    @classmethod
    def from_json(cls, data: object) -> RecoveryEvent | None:
        if not isinstance(data, Mapping) or not isinstance(data.get("action"), str):
            return None
        return cls(
            at=_str(data.get("at")), category=_str(data.get("category")) or "",
            action=str(data["action"]), text=_str(data.get("text")) or "",
            knob=_str(data.get("knob")), before=_scalar(data.get("from")),
            after=_scalar(data.get("to")), step=_int(data.get("step")),
        )  # fmt: skip


@dataclass(frozen=True)
class RecoveryState:
    """What recovery actions changed and have not been put back (`knobs`), the newest events,
    and how many actions of each kind were ever taken (the metric's counter)."""

    knobs: Mapping[str, KnobChange] = field(default_factory=dict)
    events: tuple[RecoveryEvent, ...] = ()
    totals: Mapping[str, int] = field(default_factory=dict)

    def env(self) -> dict[str, str | None]:
        """The daemon's environment as the knobs leave it: NAME -> value (None: unset)."""
        out: dict[str, str | None] = {}
        for key, change in self.knobs.items():
            kind, _, name = key.partition(":")
            if kind == "env":
                out[name] = None if change.value is None else str(change.value)
        return out

    def changed(self) -> str:
        """The knobs still changed, in words: `config:batch_size = 32 (was 64); ...`."""
        return "; ".join(
            f"{knob} = {show_scalar(c.value)} (was {show_scalar(c.original)})"
            for knob, c in self.knobs.items()
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "knobs": {k: v.to_json() for k, v in self.knobs.items()},
            "events": [e.to_json() for e in self.events],
            "totals": dict(sorted(self.totals.items())),
        }

    @classmethod
    def from_json(cls, data: object) -> RecoveryState:
        if not isinstance(data, Mapping):
            return cls()
        knobs_raw = data.get("knobs")
        knobs = {}
        if isinstance(knobs_raw, Mapping):
            for key, change in knobs_raw.items():
                if isinstance(key, str) and isinstance(change, Mapping):
                    knobs[key] = KnobChange(
                        _scalar(change.get("original")), _scalar(change.get("value"))
                    )
        raw = data.get("events")
        parsed = (RecoveryEvent.from_json(e) for e in (raw if isinstance(raw, list) else []))
        totals_raw = data.get("totals")
        totals = {
            k: v for k, v in (totals_raw.items() if isinstance(totals_raw, Mapping) else ())
            if isinstance(k, str) and _int(v) is not None and v >= 0
        }  # fmt: skip
        return cls(knobs, tuple(e for e in parsed if e is not None), totals)


@dataclass(frozen=True)
class WatchdogStatus:
    state: str  # one of daemon_watchdog.states.State's values
    watchdog_pid: int | None = None
    watchdog: ProcessIdentity | None = None
    daemon_pid: int | None = None
    daemon: ProcessIdentity | None = None
    daemon_started_at: str | None = None
    # Recorded before the daemon is started: a daemon carrying it is this record's, even when
    # the watchdog died before it could record the daemon's identity.
    owner_token: str | None = None
    daemon_log_offset: int | None = None
    resumed_from: str | None = None
    restart_count: int = 0
    restart_totals: Mapping[str, int] = field(default_factory=dict)
    restarts: tuple[CrashRecord, ...] = ()
    last_progress: ProgressMark | None = None
    last_crash: CrashRecord | None = None
    fatal_reason: str | None = None
    restart_requests: int = 0
    # How the watchdog knows the trainer is alive ("progress file", "log output", "off"), and
    # a warning when it has never seen the progress file.
    liveness: str | None = None
    liveness_note: str | None = None
    reload_note: str | None = None  # what the last SIGHUP (config reload) applied, when
    state_reason: str | None = None  # why the watchdog entered its state, in words
    restart_at: str | None = None  # in BACKOFF: when the next start is due (ISO-8601 UTC)
    # The longest silence between two progress marks seen in each phase, in seconds: what the
    # learned hang thresholds stand on, kept across restarts (#20); and the threshold now.
    step_rhythm: Mapping[str, float] = field(default_factory=dict)
    hang_threshold: HangThreshold | None = None
    # What recovery actions changed, kept across restarts until `restart --reset-recovery`.
    recovery: RecoveryState = field(default_factory=RecoveryState)
    updated_at: str | None = None
    problems: tuple[str, ...] = ()  # fields that could not be read (not written back)
    extra: Mapping[str, Any] = field(default_factory=dict)  # keys this version does not know

    @property
    def step(self) -> int:
        """The last step seen, 0 before any."""
        return self.last_progress.step if self.last_progress is not None else 0

    def to_json(self) -> dict[str, Any]:
        return {
            **self.extra,
            "state": self.state,
            "watchdog_pid": self.watchdog_pid,
            "watchdog": self.watchdog.to_json() if self.watchdog else None,
            "daemon_pid": self.daemon_pid,
            "daemon": self.daemon.to_json() if self.daemon else None,
            "daemon_started_at": self.daemon_started_at,
            "owner_token": self.owner_token,
            "daemon_log_offset": self.daemon_log_offset,
            "resumed_from": self.resumed_from,
            "restart_count": self.restart_count,
            "restart_totals": dict(sorted(self.restart_totals.items())),
            "restarts": [r.to_json() for r in self.restarts],
            "last_progress": self.last_progress.to_json() if self.last_progress else None,
            "last_crash": self.last_crash.to_json() if self.last_crash else None,
            "fatal_reason": self.fatal_reason,
            "restart_requests": self.restart_requests,
            "liveness": self.liveness,
            "liveness_note": self.liveness_note,
            "reload_note": self.reload_note,
            "state_reason": self.state_reason,
            "restart_at": self.restart_at,
            "step_rhythm": dict(self.step_rhythm),
            "hang_threshold": self.hang_threshold.to_json() if self.hang_threshold else None,
            "recovery": self.recovery.to_json(),
            "updated_at": self.updated_at,
        }

    @classmethod
    def from_json(cls, data: object) -> WatchdogStatus | None:
        """None unless `data` is an object with a string `state`; other fields leniently."""
        if not isinstance(data, Mapping) or not isinstance(data.get("state"), str):
            return None
        problems: list[str] = []
        identities: dict[str, ProcessIdentity | None] = {}
        for key in ("watchdog", "daemon"):
            identities[key] = None
            if data.get(key) is not None:
                try:
                    identities[key] = ProcessIdentity.from_json(data[key])
                except ValueError as exc:
                    problems.append(f"{key}: {exc}")
        totals_raw = data.get("restart_totals")
        totals: dict[str, int] | None = None
        if isinstance(totals_raw, Mapping) and all(
            isinstance(k, str) and _int(v) is not None and v >= 0 for k, v in totals_raw.items()
        ):
            totals = {k: int(v) for k, v in totals_raw.items()}
        elif totals_raw is not None:
            problems.append("restart_totals: not a map of counts")
        raw = data.get("restarts")
        parsed = (CrashRecord.from_json(x) for x in (raw if isinstance(raw, list) else []))
        restarts = tuple(r for r in parsed if r is not None)
        if totals is None:  # a state file from before the totals: count what the list holds
            totals = {}
            for r in restarts:
                totals[r.category] = totals.get(r.category, 0) + 1
        offset = _int(data.get("daemon_log_offset"))
        known = {f.name for f in fields(cls)} - {"problems", "extra"}
        return cls(
            state=str(data["state"]),
            watchdog_pid=_int(data.get("watchdog_pid")),
            watchdog=identities["watchdog"],
            daemon_pid=_int(data.get("daemon_pid")),
            daemon=identities["daemon"],
            daemon_started_at=_str(data.get("daemon_started_at")),
            owner_token=_str(data.get("owner_token")) or None,
            daemon_log_offset=offset if offset is not None and offset >= 0 else None,
            resumed_from=_str(data.get("resumed_from")),
            restart_count=max(0, _int(data.get("restart_count")) or 0),
            restart_totals=totals,
            restarts=restarts,
            last_progress=ProgressMark.from_json(data.get("last_progress")),
            last_crash=CrashRecord.from_json(data.get("last_crash")),
            fatal_reason=_str(data.get("fatal_reason")),
            restart_requests=max(0, _int(data.get("restart_requests")) or 0),
            liveness=_str(data.get("liveness")),
            liveness_note=_str(data.get("liveness_note")),
            reload_note=_str(data.get("reload_note")),
            state_reason=_str(data.get("state_reason")),
            restart_at=_str(data.get("restart_at")),
            step_rhythm=seconds_by_name(data.get("step_rhythm")),
            hang_threshold=HangThreshold.from_json(data.get("hang_threshold")),
            recovery=RecoveryState.from_json(data.get("recovery")),
            updated_at=_str(data.get("updated_at")),
            problems=tuple(problems),
            extra={k: v for k, v in data.items() if k not in known},
        )

    def write(self, path: Path, *, durable: bool = True) -> WatchdogStatus:
        """Atomically replace `path` with this state, stamped now; returns what was written.
        `durable=False` skips the fsyncs (see `write_bytes_atomic`)."""
        stamped = replace(self, updated_at=utc_now())
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, stamped.to_json(), durable=durable)
        return stamped


def restart_request_file(ws: Workspace) -> Path:
    """Written by `daemon-watchdog restart` before its SIGHUP: a hangup without it only reloads."""
    return ws.state_file.with_name("restart_request.json")


def read_watchdog_status(path: Path) -> WatchdogStatus | None:
    """The last state written, or None when there is none or it cannot be read or parsed."""
    try:
        data = read_json(path)
    except (OSError, ValueError):
        return None
    return WatchdogStatus.from_json(data)


def seconds_by_name(value: object) -> dict[str, float]:
    """`{name: seconds}` from a state file, each entry checked (a number, 0 to 1e15: no NaN,
    nothing that overflows a float); the others dropped."""
    if not isinstance(value, Mapping):
        return {}
    return {k: float(v) for k, v in value.items() if isinstance(k, str) and _seconds(v) is not None}


def _seconds(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if 0 <= value < 1e15 else None


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _scalar(value: object) -> Scalar:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    return value


def _int(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None
