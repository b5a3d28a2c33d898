"""Recovery by crash type: what `[watchdog.recovery]` allows the watchdog to change before it
restarts a crashed daemon, and putting it all back (`restart --reset-recovery`).

| crash                                   | action (each off unless configured)                 |
| --------------------------------------- | --------------------------------------------------- |
| cuda_oom, host_oom                      | halve a knob, never below its floor (floor reached: |
|                                         | FATAL); optionally double gradient accumulation     |
| gpu_hardware; cuda_error with Xid / ECC | leave the failed GPU out of CUDA_VISIBLE_DEVICES    |
| evidence                                | (HIP_VISIBLE_DEVICES) while min_gpus remain; FATAL  |
|                                         | naming it otherwise                                 |
| nan_loss                                | rewind: resume from an older checkpoint (the newer  |
|                                         | ones are quarantined); optionally scale a knob      |
| disk_full                               | prune beyond keep_last whatever the free space      |

Rewinding and pruning happen where the checkpoint is chosen (`recovery`, on the checkpoint
worker); this module turns knobs, on the supervisor's loop, once the restart policy has said
"restart". Every action, and every action that could not be taken, is a `RecoveryEvent` with a
one-line text: the supervisor logs it, publishes it in the state file, appends it to the crash
history and puts it in the alert.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from daemon_watchdog.knobs import KnobError, number, read_knob, write_config_key
from health_check.checks.gpu_model import GpuReading
from health_check.checks.xid import bus_key, parse_xids
from health_check.result import Status
from trainguard.config import GpuAction, HalveAction, RecoverySection
from trainguard.watchdog_status import (
    NOT_COUNTED,
    RECOVERY_EVENTS_KEPT,
    KnobChange,
    RecoveryEvent,
    RecoveryState,
    Scalar,
    show_scalar,
    utc_now,
)
from trainguard.workspace import Workspace

log = logging.getLogger("daemon_watchdog")

# A cuda_error whose evidence says the GPU itself failed (not the program): Xid, ECC, lost GPU.
_GPU_EVIDENCE = re.compile(
    r"\bXid\b|\bECC\b|uncorrectable|fallen off the bus|GPU is lost|row remap", re.IGNORECASE
)
VISIBLE_VAR = {"nvidia": "CUDA_VISIBLE_DEVICES", "amd": "HIP_VISIBLE_DEVICES"}


@dataclass
class Applied:
    """What `CrashActions.apply` did: the new state, this crash's events, and FATAL's reason
    when an action says restarting cannot help (a floor reached, too few GPUs left)."""

    state: RecoveryState
    events: list[RecoveryEvent] = field(default_factory=list)
    fatal: str | None = None
    backed_up: bool = False  # config.json kept as it was before this crash's first change

    @property
    def changed(self) -> bool:
        """Whether the restart runs with something changed (the restart policy's bar)."""
        return any(e.action not in NOT_COUNTED for e in self.events)


def action_for(rules: RecoverySection, category: str, evidence: str) -> str | None:
    """The `[watchdog.recovery]` entry that answers this crash, if one is configured."""
    if category == "cuda_error" and _GPU_EVIDENCE.search(evidence):
        category = "gpu_hardware"
    configured = getattr(rules, category, None) if category in _ENTRIES else None
    return category if configured is not None else None


_ENTRIES = ("cuda_oom", "host_oom", "gpu_hardware", "nan_loss", "disk_full")


class CrashActions:
    """Turns the knobs `[watchdog.recovery]` names. `gpu_survey` reads this machine's GPUs,
    graded as health-check does (NVML, amdsmi / rocm-smi, the kernel log's Xids)."""

    def __init__(
        self,
        ws: Workspace,
        gpu_survey: Callable[[], Sequence[GpuReading]],
        record: Callable[[RecoveryState], None] | None = None,
    ) -> None:
        self.ws = ws
        self.gpu_survey = gpu_survey
        # Saves a state before config.json is changed (the watchdog's state file): a watchdog
        # killed between the two still knows the key's original value.
        self.record = record or (lambda _state: None)

    def apply(
        self,
        state: RecoveryState,
        *,
        category: str,
        evidence: str,
        step: int | None,
        rewound: Sequence[str] = (),
        pruned: int | None = None,
        knobs: bool = True,
    ) -> Applied:
        """Act on one crash before its restart. `rewound` (checkpoints moved aside) and
        `pruned` (checkpoints removed) are what the checkpoint worker already did for it;
        without `knobs` (no restart follows) only that is recorded."""
        rules = self.ws.config.watchdog.recovery
        out = Applied(state)
        entry = action_for(rules, category, evidence)
        where = f"{category} after step {step}" if step is not None else category
        try:
            if entry == "nan_loss" and rewound:
                self._event(out, category, "rewind", f"{where}: rewound past "
                            f"{', '.join(rewound)} (moved to quarantine/: they may hold diverged "
                            "weights)", step)  # fmt: skip
            elif entry == "nan_loss" and rules.nan_loss and rules.nan_loss.rewind:
                self._event(out, category, "skipped", f"{where}: no older complete checkpoint "
                            "to rewind to: resuming from the newest", step)  # fmt: skip
            elif entry == "disk_full" and pruned is not None:
                keep = self.ws.config.checkpoints.keep_last
                self._event(out, category, "prune", f"{where}: pruned {pruned} checkpoint(s) "
                            f"beyond keep_last ({keep})", step)  # fmt: skip
            if knobs:
                self._turn_knobs(out, rules, entry, category, evidence, where, step)
        except Exception as exc:  # a bug in an action: what it changed so far is kept, and said
            log.exception("recovery action for %s failed", category)
            then = "restarting with what it changed so far" if out.changed else (
                "restarting unchanged")  # fmt: skip
            self.note(out, category, f"{where}: the recovery action failed "
                      f"({type(exc).__name__}: {exc}); {then}")  # fmt: skip
        return out

    def _turn_knobs(
        self,
        out: Applied,
        rules: RecoverySection,
        entry: str | None,
        category: str,
        evidence: str,
        where: str,
        step: int | None,
    ) -> None:
        if entry in ("cuda_oom", "host_oom"):
            halve = getattr(rules, entry)
            assert isinstance(halve, HalveAction)
            self._halve(out, halve, category, where, step)
        elif entry == "gpu_hardware":
            assert rules.gpu_hardware is not None
            self._exclude_gpu(out, rules.gpu_hardware, category, evidence, where, step)
        elif entry == "nan_loss" and rules.nan_loss is not None and rules.nan_loss.scale:
            self._scale(out, rules.nan_loss.scale, rules.nan_loss.factor, category, where, step)

    def reset(self, state: RecoveryState) -> Applied:
        """Put every knob back as it was before the first change (`restart --reset-recovery`).
        A config key changed since by someone else is left as it is, and said so."""
        out = Applied(state)
        env = state.env()
        for knob, change in state.knobs.items():
            kind = knob.partition(":")[0]
            try:
                if kind == "config":
                    now = read_knob(self.ws, knob, env)
                    if now != change.value:
                        self._event(
                            out,
                            "",
                            "skipped",
                            f"reset: {knob} is {show_scalar(now)} now, not "
                            f"the {show_scalar(change.value)} recovery set: left as it is",
                        )
                        self._forget(out, knob)
                        continue
                    write_config_key(self.ws, knob, change.original, backup=not out.backed_up)
                    out.backed_up = True
            except KnobError as exc:  # kept: a later reset may succeed
                self._event(out, "", "skipped", f"reset: {exc}; still changed")
                continue
            self._forget(out, knob)
            self._event(
                out,
                "",
                "reset",
                f"reset: {knob} {show_scalar(change.value)} -> {show_scalar(change.original)}",
                knob=knob,
                before=change.value,
                after=change.original,
            )
        if not state.knobs:
            self._event(out, "", "noop", "reset: no knob had been changed")
        return out

    @staticmethod
    def _forget(out: Applied, knob: str) -> None:
        out.state = replace(
            out.state, knobs={k: v for k, v in out.state.knobs.items() if k != knob}
        )

    def note(self, out: Applied, category: str, text: str) -> None:
        """Record that an action could not be taken (`text`, one line)."""
        self._event(out, category, "skipped", text)

    # --- the actions ----------------------------------------------------------------------

    def _halve(
        self, out: Applied, rule: HalveAction, category: str, where: str, step: int | None
    ) -> None:
        knob = rule.halve
        try:
            before = number(knob, read_knob(self.ws, knob, out.state.env()))
        except KnobError as exc:
            self._event(
                out,
                category,
                "skipped",
                f"{where}: cannot halve: {exc}; restarting unchanged",
                step,
            )
            return
        floor: int | float = math.ceil(rule.floor) if isinstance(before, int) else rule.floor
        if before <= floor:
            out.fatal = (
                f"{where} with {knob} = {show_scalar(before)}, already at its floor "
                f"({show_scalar(floor)}): halving it again cannot help"
            )
            self._event(out, category, "fatal", out.fatal, step, knob=knob, before=before)
            return
        after = max(before // 2 if isinstance(before, int) else before / 2, floor)
        if not self._set(out, knob, before, after, category, where, step, "halve"):
            return
        if rule.double:
            try:
                accum = number(rule.double, read_knob(self.ws, rule.double, out.state.env()))
            except KnobError as exc:
                self._event(
                    out,
                    category,
                    "skipped",
                    f"{where}: cannot keep the effective batch: {exc}",
                    step,
                )
                return
            scaled = accum * before / after
            grown: int | float = round(scaled) if isinstance(accum, int) else scaled
            self._set(out, rule.double, accum, grown, category, where, step, "double")

    def _scale(
        self, out: Applied, knob: str, factor: float, category: str, where: str, step: int | None
    ) -> None:
        try:
            before = number(knob, read_knob(self.ws, knob, out.state.env()))
        except KnobError as exc:
            self._event(out, category, "skipped", f"{where}: cannot scale: {exc}", step)
            return
        self._set(out, knob, before, before * factor, category, where, step, "scale")

    def _exclude_gpu(
        self,
        out: Applied,
        rule: GpuAction,
        category: str,
        evidence: str,
        where: str,
        step: int | None,
    ) -> None:
        if not rule.exclude_gpu:
            return
        gpus = list(self.gpu_survey())
        failed = _failed_gpus(gpus, evidence)
        if not failed:
            self._event(
                out,
                category,
                "skipped",
                f"{where}: no GPU reports a hardware fault "
                "(NVML, amdsmi, kernel log): restarting with the same GPUs",
                step,
            )
            return
        vendor = failed[0][0].vendor
        var = VISIBLE_VAR.get(vendor, "CUDA_VISIBLE_DEVICES")
        knob = f"env:{var}"
        env = out.state.env()
        current = read_knob(self.ws, knob, env)
        everyone = [g.index for g in gpus if g.vendor == vendor]
        visible = _indexes(current, everyone)
        if visible is None:
            self._event(
                out,
                category,
                "skipped",
                f"{where}: {var}={current!r} does not name GPUs "
                "by index: cannot leave one out; restarting unchanged",
                step,
            )
            return
        bad = [(g, why) for g, why in failed if g.vendor == vendor and g.index in visible]
        named = "; ".join(f"{g.label} ({why})" for g, why in failed)
        if not bad:
            self._event(
                out,
                category,
                "skipped",
                f"{where}: {named}, which this daemon does not "
                f"use ({var}={current}): restarting unchanged",
                step,
            )
            return
        remaining = [i for i in visible if i not in {g.index for g, _ in bad}]
        left = "; ".join(f"{g.label} ({why})" for g, why in bad)
        if len(remaining) < rule.min_gpus:
            out.fatal = (
                f"{where}: {left} failed; without it {len(remaining)} GPU(s) would remain, "
                f"fewer than min_gpus ({rule.min_gpus})"
            )
            self._event(out, category, "fatal", out.fatal, step, knob=knob, before=current)
            return
        after = ",".join(str(i) for i in remaining)
        if not self._set(
            out, knob, current, after, category, f"{where}: {left}", step, "exclude_gpu"
        ):
            return
        if vendor == "nvidia":
            # CUDA numbers GPUs fastest first unless told otherwise; NVML (and the kernel log)
            # by PCI bus: this makes the indexes above mean the same GPUs to CUDA.
            order = read_knob(self.ws, "env:CUDA_DEVICE_ORDER", out.state.env())
            if order != "PCI_BUS_ID":
                self._set(
                    out,
                    "env:CUDA_DEVICE_ORDER",
                    order,
                    "PCI_BUS_ID",
                    category,
                    where,
                    step,
                    "device_order",  # part of the exclusion: not counted as one more
                )

    # --- bookkeeping ----------------------------------------------------------------------

    def _set(
        self,
        out: Applied,
        knob: str,
        before: Scalar,
        after: Scalar,
        category: str,
        where: str,
        step: int | None,
        action: str,
    ) -> bool:
        kind = knob.partition(":")[0]
        stored: Scalar = after
        if kind == "env" and after is not None:
            stored = str(after)
        original = out.state.knobs[knob].original if knob in out.state.knobs else before
        if kind == "env" and isinstance(original, (int, float)):
            original = str(original)
        changed = replace(out.state, knobs={**out.state.knobs, knob: KnobChange(original, stored)})
        if kind == "config":
            self.record(changed)  # first: the original is on record before the file changes
            try:
                write_config_key(self.ws, knob, after, backup=not out.backed_up)
            except KnobError as exc:
                self.record(out.state)
                self._event(out, category, "skipped", f"{where}: {exc}; not changed", step)
                return False
            out.backed_up = True
        out.state = changed
        text = f"{where}: {knob} {show_scalar(before)} -> {show_scalar(stored)}"
        self._event(out, category, action, text, step, knob=knob, before=before, after=stored)
        return True

    @staticmethod
    def _event(
        out: Applied,
        category: str,
        action: str,
        text: str,
        step: int | None = None,
        *,
        knob: str | None = None,
        before: Scalar = None,
        after: Scalar = None,
    ) -> None:
        event = RecoveryEvent(utc_now(), category, action, text, knob, before, after, step)
        (log.error if action in ("fatal", "skipped") else log.warning)("recovery: %s", text)
        out.events.append(event)
        totals = dict(out.state.totals)
        if action not in NOT_COUNTED:
            totals[action] = totals.get(action, 0) + 1
        events = (*out.state.events, event)[-RECOVERY_EVENTS_KEPT:]
        out.state = replace(out.state, events=events, totals=totals)


def _failed_gpus(gpus: Sequence[GpuReading], evidence: str) -> list[tuple[GpuReading, str]]:
    """GPUs with a hardware fault: a CRITICAL finding that is not heat (a lost GPU, an
    uncorrectable ECC error, a fatal Xid, an SMU that stopped answering), or the GPU an Xid line
    of the crash's own evidence names."""
    named = {event.bus for event in parse_xids(evidence)}
    failed = []
    for gpu in gpus:
        faults = [
            f.text for f in gpu.findings if f.status == Status.CRITICAL and "°C" not in f.text
        ]
        if not faults and gpu.bus_id and bus_key(gpu.bus_id) in named:
            faults = ["named by an Xid line in the crash log"]
        if faults:
            failed.append((gpu, faults[0]))
    return failed


def _indexes(value: Scalar, everyone: list[int]) -> list[int] | None:
    """The GPU indexes a *_VISIBLE_DEVICES value names (unset: every GPU); None when it names
    them otherwise (UUIDs, MIG instances)."""
    if value is None:
        return everyone
    parts = [p.strip() for p in str(value).split(",") if p.strip()]
    if not all(p.isdigit() for p in parts):
        return None
    return [int(p) for p in parts]
