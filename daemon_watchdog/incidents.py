"""Incidents: where a hung trainer was stuck, kept for the operator after the restart.

A hang leaves no traceback behind: the supervisor kills the tree and the evidence dies with it.
So before the kill, `capture_stacks` records where each process was blocked, and
`write_incident` keeps that, with the reason, as one JSON file per incident.
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import shutil
import signal
import subprocess
import sysconfig
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any, Literal

import psutil

from trainguard.atomicio import write_json_atomic
from trainguard.procs import stopped_pids

MAX_CAPTURE_SECONDS = 2.0
"""The most a stack capture may take, whatever `[watchdog] hang_dump_timeout` says: a hung
trainer is restarted within progress_timeout plus a few seconds. py-spy usually needs well
under a second and faulthandler a few milliseconds; what answers in neither time rarely will."""

LOG_TAIL_BYTES = 256 * 1024
"""The most of one process's faulthandler output we keep: 100 threads of 100 frames fit."""

_Method = Literal["py-spy", "faulthandler", "none"]
_FAULTHANDLER_MARK = "(most recent call first)"
_KIND = re.compile(r"[A-Za-z0-9_-]+")
_INCIDENT_NAME = re.compile(r"(\d{8}T\d{6}\.\d{6}Z)-([A-Za-z0-9_-]+?)(?:\.(\d+))?\.json")


@dataclass(frozen=True)
class StackCapture:
    """Stacks of a process tree: `text` holds one `=== pid N (cmdline) ===` section per process
    (with method "none", whatever the attempt produced); `details` says what was tried and what
    failed; `stopped` lists the processes found stopped (SIGSTOP, a tracer), which have none."""

    method: _Method
    text: str
    details: tuple[str, ...] = ()
    stopped: tuple[int, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "text": self.text,
            "details": list(self.details),
            "stopped": list(self.stopped),
        }


def find_py_spy() -> str | None:
    """py-spy on PATH, or beside our interpreter: installed into our venv, which a systemd unit
    rarely puts on PATH."""
    return shutil.which("py-spy") or shutil.which("py-spy", path=sysconfig.get_path("scripts"))


def capture_stacks(
    pids: Sequence[int],
    *,
    timeout: float,
    log_path: Path | None,
    use_py_spy: bool | None = None,
) -> StackCapture:
    """Record the Python stacks of `pids` (the caller has proven they are ours), within `timeout`
    but never longer than MAX_CAPTURE_SECONDS: the restart waits for it.

    A stopped process (SIGSTOP, SIGTSTP, or held by a tracer) can neither run faulthandler nor
    answer py-spy until it is continued, so it is not asked: it is listed in `stopped`, left
    stopped and unsignalled (stopping the tree continues it), and costs no time.

    py-spy reads the stacks from outside, of all processes at once, and leaves them running.
    Without it (or when it dumped nothing, e.g. ptrace is forbidden) each process gets SIGABRT,
    one at a time and children before parents: a Python
    with faulthandler enabled (`faulthandler.enable()` or PYTHONFAULTHANDLER=1) prints every
    thread's stack to its stderr and dies. THIS FALLBACK KILLS THE PROCESSES; the supervisor is
    about to anyway. Their stderr must be appended to `log_path`, where the stacks are read back
    from; without a log there is nothing to gain, and no signal is sent.

    `use_py_spy`: None tries py-spy, then the fallback; True only py-spy; False only the fallback.
    """
    deadline = time.monotonic() + max(0.0, min(timeout, MAX_CAPTURE_SECONDS))
    stopped = tuple(stopped_pids(pids))
    details = [f"pid {pid} is stopped (SIGSTOP or a tracer): no stacks" for pid in stopped]
    frozen = "".join(f"{_header(pid)}\n(stopped: no stacks)\n" for pid in stopped)
    running = [pid for pid in pids if pid not in stopped]
    method: _Method = "none"
    text = ""
    if running or not stopped:
        method, text = _capture(running, deadline, log_path, use_py_spy, details)
    return StackCapture(method, text + frozen, tuple(details), stopped)


def _capture(
    pids: Sequence[int],
    deadline: float,
    log_path: Path | None,
    use_py_spy: bool | None,
    details: list[str],
) -> tuple[_Method, str]:
    py_spy = None if use_py_spy is False else find_py_spy()
    if py_spy is not None:
        text, dumped = _dump_with_py_spy(py_spy, pids, deadline, details)
        if dumped or use_py_spy:
            return ("py-spy" if dumped else "none"), text
        details.append("py-spy dumped no stack: falling back to SIGABRT + faulthandler")
    elif use_py_spy:
        details.append("py-spy not found on PATH or beside the interpreter")
        return "none", ""
    elif use_py_spy is None:
        details.append("py-spy not found: falling back to SIGABRT + faulthandler")
    if log_path is None:
        details.append("no log file to read faulthandler output from: SIGABRT not sent")
        return "none", ""
    text, dumped = _abort_with_faulthandler(pids, deadline, log_path, details)
    if not dumped:
        details.append(
            f"no faulthandler traceback appeared in {log_path} "
            "(is faulthandler enabled, e.g. PYTHONFAULTHANDLER=1?)"
        )
    return ("faulthandler" if dumped else "none"), text


def _dump_with_py_spy(
    py_spy: str, pids: Sequence[int], deadline: float, details: list[str]
) -> tuple[str, bool]:
    # All at once, each with the whole budget: one after the other, a tree of eight workers
    # would leave each a quarter of a second, too little for py-spy to read a large trainer.
    # Output goes to files, not pipes, so that no dump blocks on a pipe nobody reads yet.
    sections: list[str] = []
    dumped = False
    budget = deadline - time.monotonic()
    with contextlib.ExitStack() as cleanup:
        dumps: list[tuple[int, subprocess.Popen[bytes], IO[bytes]]] = []
        for pid in pids:
            try:
                sink = cleanup.enter_context(tempfile.TemporaryFile())
                proc = subprocess.Popen(
                    [py_spy, "dump", "--pid", str(pid)],
                    stdin=subprocess.DEVNULL,
                    stdout=sink,
                    stderr=subprocess.STDOUT,
                )
            except OSError as exc:
                details.append(f"py-spy dump --pid {pid}: {exc}")
                continue
            cleanup.callback(_end, proc)  # even if we are interrupted
            dumps.append((pid, proc, sink))
        for pid, proc, out in dumps:
            try:
                code = proc.wait(timeout=max(deadline - time.monotonic(), 0.0))
            except subprocess.TimeoutExpired:
                details.append(f"py-spy dump --pid {pid}: no answer within {budget:.1f}s")
                continue
            out.seek(0)
            output = out.read().decode("utf-8", "replace")
            sections.append(f"{_header(pid)}\n{output}")
            if code == 0:
                dumped = True
            else:
                details.append(f"py-spy dump --pid {pid}: exit {code}")
    return "".join(sections), dumped


def _end(proc: subprocess.Popen[bytes]) -> None:
    # Our own child, not yet reaped: its pid cannot name another process.
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def _abort_with_faulthandler(
    pids: Sequence[int], deadline: float, log_path: Path, details: list[str]
) -> tuple[str, bool]:
    # Process objects first: from here on psutil refuses to signal a recycled pid.
    procs: list[tuple[int, psutil.Process]] = []
    for pid in pids:
        try:
            procs.append((pid, psutil.Process(pid)))
        except psutil.Error as exc:
            details.append(f"pid {pid}: {exc}")
    # Children before parents: a parent's death may take its workers with it (PDEATHSIG,
    # torchrun's agent) before they could print their stacks.
    procs.sort(key=lambda item: -_depth(item[1]))
    sections: list[str] = []
    dumped = False
    for index, (pid, proc) in enumerate(procs):
        header = _header(pid, proc)  # while it still lives
        start = _size(log_path)
        _forbid_core_dump(proc, details)
        try:
            proc.send_signal(signal.SIGABRT)
        except (psutil.Error, OSError) as exc:
            details.append(f"pid {pid}: SIGABRT not sent: {exc}")
            continue
        budget = (deadline - time.monotonic()) / (len(procs) - index)
        if not _wait_dead(proc, time.monotonic() + budget):
            details.append(f"pid {pid}: still running {budget:.1f}s after SIGABRT")
        # One process at a time, so that concurrent dumps do not interleave in the shared log.
        output = _read_appended(log_path, start, details)
        sections.append(f"{header}\n{output}")
        dumped = dumped or _FAULTHANDLER_MARK in output
    return "".join(sections), dumped


def _depth(proc: psutil.Process) -> int:
    try:
        return len(proc.parents())
    except psutil.Error:
        return 0


def _forbid_core_dump(proc: psutil.Process, details: list[str]) -> None:
    # A core of a trainer holding tens of GB would stall the restart and may fill the disk.
    try:
        _, hard = proc.rlimit(resource.RLIMIT_CORE)
        proc.rlimit(resource.RLIMIT_CORE, (0, hard))
    except (psutil.Error, OSError) as exc:
        details.append(f"pid {proc.pid}: core dumps not disabled: {exc}")


def _wait_dead(proc: psutil.Process, deadline: float) -> bool:
    # Not psutil.wait_procs: on our own child (the daemon) it would reap the exit status that
    # the supervisor's Popen is waiting for. A zombie has finished writing its stacks.
    while True:
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)


def _header(pid: int, proc: psutil.Process | None = None) -> str:
    try:
        cmdline = " ".join((proc or psutil.Process(pid)).cmdline())
    except psutil.Error:
        cmdline = "?"
    return f"=== pid {pid} ({cmdline[:200]}) ==="


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _read_appended(path: Path, start: int, details: list[str]) -> str:
    """What was appended to `path` since it was `start` bytes long, at most LOG_TAIL_BYTES."""
    try:
        with open(path, "rb") as fh:
            end = fh.seek(0, os.SEEK_END)
            if end < start:
                start = 0  # truncated or rotated meanwhile: all of it is new
            if end - start > LOG_TAIL_BYTES:
                details.append(f"{path}: kept the last {LOG_TAIL_BYTES} of {end - start} bytes")
                start = end - LOG_TAIL_BYTES
            fh.seek(start)
            return fh.read(end - start).decode("utf-8", "replace")
    except OSError as exc:
        details.append(f"{path}: {exc}")
        return ""


def write_incident(directory: Path, *, kind: str, payload: Mapping[str, Any]) -> Path:
    """Write `payload` plus `at` and `kind` to a new `<UTC time>-<kind>.json` in `directory`.

    Never overwrites: a name already taken gets a counter (`-hang.2.json`). That check is not
    atomic against another writer, which the one-watchdog-per-workspace lock rules out.
    """
    if not _KIND.fullmatch(kind):
        raise ValueError(f"incident kind must match {_KIND.pattern}, got {kind!r}")
    clash = {"at", "kind"} & payload.keys()
    if clash:
        raise ValueError(f"incident payload must not set {', '.join(sorted(clash))}")
    now = datetime.now(timezone.utc)
    directory.mkdir(parents=True, exist_ok=True)
    stem = f"{now:%Y%m%dT%H%M%S.%fZ}-{kind}"
    path = directory / f"{stem}.json"
    counter = 1
    while path.exists():
        counter += 1
        path = directory / f"{stem}.{counter}.json"
    at = now.isoformat().replace("+00:00", "Z")
    write_json_atomic(path, {**payload, "at": at, "kind": kind})
    return path


def list_incidents(directory: Path) -> list[Path]:
    """The incident files in `directory`, oldest first; none when it does not exist."""
    found: list[tuple[str, int, Path]] = []
    try:
        entries = list(directory.iterdir())
    except FileNotFoundError:
        return []
    for path in entries:
        match = _INCIDENT_NAME.fullmatch(path.name)
        if match:
            found.append((match.group(1), int(match.group(3) or 1), path))
    return [path for _, _, path in sorted(found)]
