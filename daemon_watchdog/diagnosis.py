"""Why the daemon died, and the crash history record of it.

The supervisor loads the crash detector (`load_scanner`: Hyperscan and the libstdc++ it loads,
the rule catalog and its compiled databases, ~3.7 MiB) just after starting the daemon, so that
the first crash costs no more time than later ones.
"""

from __future__ import annotations

import logging
import subprocess
from contextlib import suppress
from dataclasses import dataclass

from crash_detector.classify import SIGKILL_RULE, Crash, Finding, classify_text
from crash_detector.history import WATCHDOG_SOURCE, append_new, to_record
from crash_detector.oom_counters import OomSnapshot
from crash_detector.oom_evidence import look_for_oom_kill
from crash_detector.rules import load_rules
from crash_detector.scanner import NotCached, Scanner
from crash_detector.tail import last_lines
from trainguard.python_child import module_argv
from trainguard.workspace import Workspace

log = logging.getLogger("daemon_watchdog")

LOG_TAIL_LINES = 1000
LAST_LINES_KEPT = 40  # where the crash is looked for: does it name the checkpoint resumed from?
CRASH_LINES_WITHOUT_TRACEBACK = 3
DB_BUILD_TIMEOUT = 120.0  # seconds for a child to compile the rules (~0.5 s usually)

OOM_KILLER_RULE = "host_oom.kernel_oom_killer"  # whose suggestion fits an OOM kill the kernel saw
HANG_SUGGESTION = (
    "The trainer stopped reporting progress. The incident file under status/incidents/ shows "
    "where each process was stuck (a collective, data loading, I/O); raise "
    "[watchdog.phase_timeouts] if that phase is legitimately slow."
)


@dataclass(frozen=True)
class Diagnosis:
    category: str
    retryable: bool
    reason: str  # one line for the state file and the alert
    suggestion: str
    evidence: str  # the log line that decided it, if any
    last_lines: str = ""  # the crash at the end of this daemon's output: its traceback
    killed: bool = False  # SIGKILLed with no error of its own: nothing the trainer did


def load_scanner() -> Scanner:
    """The rule catalog, with its Hyperscan databases from the cache.

    When the cache lacks them (the first start after installing or upgrading), a child process
    compiles and stores them: compiling here would leave ~12 MiB of heap in the watchdog for the
    rest of its life. Only if they cannot be stored anywhere are they compiled here.
    """
    catalog = load_rules()
    try:
        return Scanner(catalog, may_compile=False)
    except NotCached:
        pass
    command = module_argv("crash_detector.db_cache")
    try:
        built = subprocess.run(
            command, stdin=subprocess.DEVNULL, capture_output=True, text=True,
            timeout=DB_BUILD_TIMEOUT, check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("could not compile the crash rules in a child process: %s", exc)
    else:
        if built.returncode == 0:
            with suppress(NotCached):
                return Scanner(catalog, may_compile=False)
        log.warning(
            "crash rules compiled in the watchdog (~12 MiB kept): %s",
            (built.stderr.strip().splitlines() or [f"exit status {built.returncode}"])[-1],
        )
    return Scanner(catalog)


def diagnose_hang(reason: str) -> Diagnosis:
    return Diagnosis("timeout", True, reason, HANG_SUGGESTION, "")


def diagnose_crash(
    ws: Workspace,
    scanner: Scanner,
    exit_code: int | None,
    how: str,
    *,
    since: int = 0,
    oom_before: OomSnapshot | None = None,
) -> Diagnosis:
    """Classify the end of the daemon's log from offset `since` (where this daemon's output
    began: an earlier run's error above it is not this crash), with its exit status.

    A SIGKILL the log says nothing about is host_oom only if the kernel log or the OOM-kill
    counters, read against `oom_before` (taken when the daemon started), show an OOM kill.
    """
    lines = _log_tail(ws, since)
    result = classify_text(b"\n".join(lines), exit_code=exit_code, scanner=scanner)
    last = _crash_block(lines[-LAST_LINES_KEPT:]).decode("utf-8", "replace")
    primary = result.primary
    if primary is None:
        return Diagnosis(
            "unknown", True, f"daemon {how}", "Read the end of the daemon log.", "", last
        )
    if primary.rule == SIGKILL_RULE:
        return _diagnose_sigkill(scanner, primary, how, last, oom_before)
    return Diagnosis(
        primary.category,
        primary.retryable,
        f"daemon {how}: {primary.category}",
        primary.suggestion,
        primary.text,
        last,
    )


def _diagnose_sigkill(
    scanner: Scanner, sigkill: Finding, how: str, last: str, before: OomSnapshot | None
) -> Diagnosis:
    """A SIGKILL and nothing in the log: host_oom with the kernel's word for it, else unknown."""
    evidence = look_for_oom_kill(before) if before is not None else None
    if evidence is not None and evidence.found is not None:
        suggestion = next(
            (r.suggestion for r in scanner.rules if r.id == OOM_KILLER_RULE), sigkill.suggestion
        )
        return Diagnosis(
            "host_oom", True, f"daemon {how}: host_oom", suggestion, evidence.found, last
        )
    checked = (
        evidence.checked if evidence is not None else "not looked for (no counters from its start)"
    )
    return Diagnosis(
        "unknown",
        True,
        f"daemon {how}: unknown, no OOM evidence",
        sigkill.suggestion,
        f"{sigkill.text}; no OOM evidence: {checked}",
        last,
        killed=True,
    )


def _crash_block(lines: list[bytes]) -> bytes:
    """The end of the output that is the crash itself: from the last traceback on, or else the
    last few lines. A trainer's own "resuming from checkpoint-20" above it is not the crash."""
    for index in range(len(lines) - 1, -1, -1):
        if lines[index].lstrip().startswith(b"Traceback (most recent call last)"):
            return b"\n".join(lines[index:])
    return b"\n".join(lines[-CRASH_LINES_WITHOUT_TRACEBACK:])


def _log_tail(ws: Workspace, since: int) -> list[bytes]:
    try:
        tail = last_lines(ws.daemon_log, LOG_TAIL_LINES)
    except (OSError, ValueError) as exc:
        log.warning("cannot read %s to classify the crash: %s", ws.daemon_log, exc)
        return []
    return list(tail.lines_from(since))


def record_crash(
    ws: Workspace,
    diagnosis: Diagnosis,
    *,
    occurrence: str,
    exit_code: int | None,
    recovery: list[str] | None = None,
) -> None:
    """Append to the crash history; `occurrence` (daemon pid + start) makes it one record.
    `recovery`: what [watchdog.recovery] changed before the restart, one line each."""
    finding = Finding(
        diagnosis.category, WATCHDOG_SOURCE, 0, "critical", diagnosis.retryable,
        diagnosis.suggestion, diagnosis.evidence or diagnosis.reason, str(ws.daemon_log),
    )  # fmt: skip
    record = to_record(Crash(finding, (finding,)), source=WATCHDOG_SOURCE, exit_code=exit_code)
    record["occurrence"] = occurrence
    record["reason"] = diagnosis.reason
    if recovery:
        record["recovery"] = list(recovery)
    try:
        append_new(ws.crash_history, [record])
    except OSError as exc:
        log.error("cannot append to the crash history %s: %s", ws.crash_history, exc)
