"""The files operators and tools read: the state file, the progress file, the daemon log."""

from __future__ import annotations

import json
import os
import re
import signal
import time

from edge_cases.sandbox import Sandbox
from edge_cases.scenario import Scenario, ScenarioFailed, expect
from trainguard.procs import matches
from trainguard.start_ticks import read_start_ticks
from trainguard.watchdog_status import WatchdogStatus

# The contract's keys, looked for in the JSON as written (`_missing_keys`), not in the typed record.
REQUIRED_KEYS = (
    "state",
    "watchdog_pid",
    "daemon_pid",
    "daemon_started_at",
    "restart_count",
    "restarts",
    "last_progress",
    "last_crash",
    "updated_at",
)
RESTART_KEYS = ("at", "reason", "category", "exit_code")
ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|\+00:00)")
STATUS_RUNNING = 0
STATUS_DONE = 4  # STOPPED (finished or stopped by the operator); FATAL is 2


def _missing_keys(data: object) -> list[str]:
    """The contract's keys absent from the state file as written, its restart entries' too.

    Checked on the JSON itself: the typed record fills in what a file lacks, so it cannot tell.
    """
    if not isinstance(data, dict):
        return ["(the file is not a JSON object)"]
    missing = [key for key in REQUIRED_KEYS if key not in data]
    entries = data.get("restarts")
    for n, entry in enumerate(entries if isinstance(entries, list) else []):
        have = entry if isinstance(entry, dict) else {}
        missing += [f"restarts[{n}].{key}" for key in RESTART_KEYS if key not in have]
    return missing


def _check_times(status: WatchdogStatus) -> None:
    stamps = [status.updated_at, status.daemon_started_at]
    stamps += [status.last_progress.at if status.last_progress is not None else None]
    stamps += [r.at for r in status.restarts]
    for stamp in stamps:
        expect(
            isinstance(stamp, str) and ISO_UTC.fullmatch(stamp),
            f"{stamp!r} is not an ISO-8601 UTC time",
        )


def status_file_updates(sb: Sandbox) -> str:
    sb.create()
    watchdog = sb.start_watchdog()
    state_file = sb.path("status/watchdog.json")
    seen: list[WatchdogStatus] = []
    written: list[object] = []  # the newest read as JSON, for the contract's keys
    torn: list[bytes] = []

    def record() -> bool:
        try:
            raw = state_file.read_bytes()
        except FileNotFoundError:
            return False
        try:
            data = json.loads(raw)
        except ValueError:
            torn.append(raw[:80])  # an atomic replace never shows half a file
            return False
        status = WatchdogStatus.from_json(data)
        expect(status is not None, f"the state file holds no state record: {raw[:80]!r}")
        assert status is not None
        seen.append(status)
        written[:] = [data]
        return status.step >= 60

    sb.deadline.wait_for(record, "the state file reaching step 60", context=sb.describe)
    if torn:
        raise ScenarioFailed(
            f"{len(torn)} of {len(seen) + len(torn)} reads saw a partial file: {torn[0]!r}"
        )
    last = seen[-1]
    missing = _missing_keys(written[0])
    expect(not missing, f"state file lacks {missing}")
    expect(not last.problems, f"state file fields of the wrong type: {list(last.problems)}")
    states = [s.state for s in seen]
    expect("RUNNING" in states, f"states seen: {sorted(set(states))}")
    steps = [s.step for s in seen]
    expect(steps == sorted(steps), "last_progress.step went backwards without a restart")
    versions = sorted({str(s.updated_at) for s in seen})
    expect(
        len(versions) >= 3, f"only {len(versions)} versions of the state file in 3 s of training"
    )
    _check_times(last)
    expect(last.watchdog_pid == watchdog.pid, "watchdog_pid is not the watchdog's pid")
    pid_file = int(sb.path(".daemon.pid").read_text().split()[0])
    expect(last.daemon_pid == pid_file, f"daemon_pid {last.daemon_pid} != .daemon.pid")
    # Adoption and every later signal rest on this record matching the live daemon exactly.
    recorded = last.daemon
    live = next((p for p in sb.daemons() if p.pid == pid_file), None)
    expect(live is not None, f"no live daemon with pid {pid_file}")
    assert live is not None
    expect(recorded is not None, "the state file records no daemon identity")
    assert recorded is not None
    expect(
        # The kernel's start tick count is recorded wherever it offers one: a clock step
        # between recording and adopting must not make the daemon a stranger.
        matches(recorded, live)
        and (recorded.start_ticks is not None or read_start_ticks(live.pid) is None),
        f"the recorded daemon identity does not match the live daemon: {recorded}",
    )
    shown = sb.tool("daemon_watchdog", "status", "--json")
    expect(shown.returncode == STATUS_RUNNING, f"`status` exit {shown.returncode} while RUNNING")
    reported = WatchdogStatus.from_json(json.loads(shown.stdout))
    expect(reported is not None and reported.state == "RUNNING", "`status --json` is not RUNNING")

    sb.signal_daemon(signal.SIGKILL)
    after = sb.wait_running(restarts=1)
    missing = _missing_keys(json.loads(state_file.read_bytes()))
    expect(not missing, f"after the restart the state file lacks {missing}")
    restart = after.restarts[0]
    expect(after.restart_count == 1, f"restart_count {after.restart_count}")
    expect(restart.exit_code == -signal.SIGKILL, f"exit_code {restart.exit_code}")
    expect(after.daemon_started_at != last.daemon_started_at, "start time unchanged")
    _check_times(after)
    history = sb.history()
    expect(len(history) == 1, f"{len(history)} crash history records for one crash")

    stop = sb.tool("daemon_watchdog", "stop")
    expect(stop.returncode == 0, f"`stop` exit {stop.returncode}: {stop.stderr.strip()}")
    final = sb.wait_state("STOPPED", within=15)
    expect(final.daemon_pid is None, "a STOPPED state still names a daemon")
    shown = sb.tool("daemon_watchdog", "status")
    expect(shown.returncode == STATUS_DONE, f"`status` exit {shown.returncode} when STOPPED")
    return (
        f"{len(seen)} reads, none partial, {len(versions)} versions; "
        "RUNNING -> restart entry -> STOPPED with the contract's keys"
    )


GARBAGE = (
    b"\x00\xff\xfe\x89PNG binary garbage",
    b'{"step": 4',
    b'{"step": "forty", "phase": 7}',
    b"[1, 2, 3]",
    b"",
    b'{"phase": "train"}',
)


def progress_file_garbage(sb: Sandbox) -> str:
    sb.create()
    sb.hang_timeout(3)
    watchdog = sb.start_watchdog()
    sb.wait_running(past_step=10)
    sb.suspend_tree()  # the trainer stops; only garbage lands in its progress file from now
    progress = sb.path("status/progress.json")
    tmp = progress.with_name(".progress.edge-cases.tmp")
    writes = 0

    def scribble() -> None:
        nonlocal writes
        tmp.write_bytes(GARBAGE[writes % len(GARBAGE)])
        os.replace(tmp, progress)  # each write is a new file: the watcher sees every one
        writes += 1

    scribble()
    code, report = sb.tool_json("health_check", "--only", "progress")
    expect(
        code in (0, 1, 2, 3) and report.get("checks"),
        f"health-check progress on garbage: exit {code}, {report}",
    )

    def restarted() -> WatchdogStatus | None:
        status = sb.status()
        if status is not None and status.restart_count >= 1:
            return status
        scribble()
        return None

    sb.deadline.wait_for(restarted, "a hang seen through the garbage", context=sb.describe)
    status = sb.wait_running(past_step=3, restarts=1)
    crash = status.restarts[0]
    expect(crash.category == "timeout", f"classified {crash.category!r}")
    expect(watchdog.poll() is None, f"the watchdog died (exit {watchdog.returncode})")
    expect("unreadable progress" in sb.watchdog_log(), "the garbage was not logged as unreadable")
    return f"{writes} garbage writes never counted as progress; hang seen, restarted, RUNNING"


def log_with_binary_and_huge_lines(sb: Sandbox) -> str:
    fault_step = 100
    sb.create()
    # No restart: a resumed run's step lines would soon mark the OOM as survived, and
    # crash-detector rightly reports no crash for a log whose every crash was survived.
    sb.configure("watchdog", max_restarts=0)
    sb.daemon_args("--fault", f"cuda_oom@{fault_step}")
    watchdog = sb.start_watchdog()
    sb.wait_running(past_step=2)
    junk = (
        bytes(range(256)) * 4096  # 1 MiB of every byte value: NULs, invalid UTF-8
        + b"\n"
        + b"A" * (16 * 2**20)  # one 16 MiB line
        + b"\n\xc3\x28\xff\xfe mojibake \x00\x00\n"
    )
    with open(sb.path("logs/daemon.log"), "ab") as fh:
        fh.write(junk)
    expect(sb.trainer_step() < fault_step, "too slow: the fault fired before the junk landed")
    status = sb.wait_state("FATAL")
    category = status.last_crash.category if status.last_crash is not None else None
    expect(category == "cuda_oom", f"classified {category!r}")
    expect(watchdog.poll() is None, f"the watchdog died (exit {watchdog.returncode})")
    started = time.monotonic()
    detected = sb.tool("crash_detector", "--json", timeout=20)
    took = time.monotonic() - started
    expect(detected.returncode == 1, f"crash-detector exit {detected.returncode}")
    primary = (json.loads(detected.stdout).get("primary") or {}).get("category")
    expect(primary == "cuda_oom", f"crash-detector's primary crash is {primary!r}")
    return f"cuda_oom found behind 17 MiB of binary and a 16 MiB line; crash-detector {took:.1f} s"


SCENARIOS = (
    Scenario(
        name="status_file_updates",
        summary="status/watchdog.json is atomic, complete and follows the run to STOPPED",
        fault="a reader polling the state file, a SIGKILL, then `daemon-watchdog stop`",
        expected="no partial read; the contract's keys and ISO-8601 UTC times; RUNNING with "
        "growing steps; a restart entry {at, reason, category, exit_code}; STOPPED (status exit 2)",
        deadline=45,
        run=status_file_updates,
    ),
    Scenario(
        name="progress_file_garbage",
        summary="garbage in progress.json is never progress and never kills the watchdog",
        fault="trainer frozen while binary, truncated and ill-typed JSON replace progress.json",
        expected="health-check progress still reports; the hang is seen after progress_timeout, "
        "category timeout, restart RUNNING; the watchdog logs the file as unreadable",
        deadline=45,
        run=progress_file_garbage,
    ),
    Scenario(
        name="log_with_binary_and_huge_lines",
        summary="a daemon log full of binary bytes and a 16 MiB line still yields the root cause",
        fault="17 MiB of binary junk and a 16 MiB line appended to the log, then a CUDA OOM",
        expected="the watchdog classifies the crash cuda_oom (max_restarts = 0: FATAL, so the log "
        "ends with it); crash-detector --json exits 1 with primary cuda_oom",
        deadline=45,
        run=log_with_binary_and_huge_lines,
    ),
)
