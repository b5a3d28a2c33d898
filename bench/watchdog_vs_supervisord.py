"""daemon-watchdog against supervisord 4.x, supervising the same example training daemon.

    .venv/bin/python bench/watchdog_vs_supervisord.py [--runs 10] [--idle-seconds 30]
        [--quiet-runs 8] [--venv PATH] [--project-venv .venv] [--keep] [--json FILE]

`--project-venv` is the venv whose `python` and `daemon-watchdog` are benchmarked (default:
this repository's .venv); both supervisors run the daemon with that same `python`.

Creates a bench venv in a temporary folder (or reuses `--venv PATH`) and pip-installs
supervisor 4.x there, then, for each supervisor in turn:

1. makes a throwaway workspace with `daemon-watchdog init DIR` and turns its job into a long
   one (config.json: total_steps 100000, step_seconds 0.05, save_steps 50), so the daemon
   trains for the whole measurement;
2. starts the supervisor: `daemon-watchdog run -c DIR/trainguard.toml` with
   `[watchdog] backoff_base = 0` (supervisord restarts at once; the `init` template's
   backoff_base = 1 would wait 1 s before the first restart) and restart limits raised so
   that `--runs` crashes in a minute do not end in FATAL; or `supervisord -n -c
   supervisord.conf` with a `[program:train]` running the same daemon command
   (`<python> -m daemon_watchdog.example.daemon --base-dir DIR`), autorestart=true,
   startsecs=1, startretries=100, stopasgroup=true, killasgroup=true;
3. crash -> restart latency, `--runs` times: once the daemon's progress is advancing (and the
   step is between two checkpoints, so that the resumed run's first step is below the step at
   the kill), SIGKILLs the daemon (pid from status/watchdog.json, or `supervisorctl pid
   train`), then polls /proc and status/progress.json every `--poll-ms` for (a) a new child
   of the supervisor (the new daemon pid) and (b) a progress write with a step below the step
   read just before the kill (the new daemon's first progress; the orphaned worker of the
   killed daemon, if it survives, only counts upwards). `--orphan-check-delay` seconds after
   that first progress it counts the processes running the workspace's train.py (1 = only
   the new worker; 2 = the killed daemon's worker survived as an orphan) and then kills any
   orphan itself, so that later runs are not slowed by stray trainers;
4. idle RSS and CPU of the supervisor process alone (not the daemon): psutil memory_info().rss
   every 0.5 s and cpu_times() at both ends of an `--idle-seconds` window in which the
   daemon trains normally, once before the first crash of step 3 and once after the last
   (daemon-watchdog loaded its crash detector at the first crash until it was made to load it
   at start);
5. then, `--quiet-runs` times each, the same crash against a quiet daemon (`sleep 100000`:
   no output, no worker) under the same supervisor config: supervisord's event loop wakes on
   output or its 1 s timeout, so this shows what its restart costs when nothing is printed.

`--default-config` measures isolated crashes instead, with the `init` template untouched (no
edits above): each crash under a supervisor started for it, in a workspace of its own, after
`--pause` s of training; the first crash of a run, which daemon-watchdog restarts at once with
any backoff settings (steps 4 and 5 are skipped).

Everything it starts (supervisors, daemons, workers, orphans) is tracked by pid and killed at
the end, on Ctrl+C or SIGTERM too; the temporary folder is removed unless `--keep`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import IO, Any

import psutil

from trainguard.watchdog_status import read_watchdog_status

REPO = Path(__file__).resolve().parent.parent
DAEMON_MODULE = "daemon_watchdog.example.daemon"
# A daemon that writes nothing and starts no worker: what supervisord's restart costs when
# no output wakes its event loop (it restarts on the loop pass after the one that reaped).
QUIET_DAEMON = ("sleep", "100000")
SUPERVISOR_REQUIREMENT = "supervisor>=4,<5"
MiB = 2**20


# --- small /proc helpers ----------------------------------------------------------------------


def all_pids() -> set[int]:
    return {int(name) for name in os.listdir("/proc") if name.isdigit()}


def ppid_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return None
    # comm may hold spaces and parentheses: the fields after the last ")" are fixed.
    fields = stat[stat.rfind(b")") + 2 :].split()
    return int(fields[1]) if len(fields) > 1 else None


def cmdline_of(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            raw = fh.read()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def processes_running(script: Path) -> list[int]:
    """Live processes whose argv holds `script` (zombies have no cmdline and do not count)."""
    wanted = str(script)
    return sorted(pid for pid in all_pids() if wanted in cmdline_of(pid))


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile: p90 of 10 values is the 9th smallest."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


class ProgressReader:
    """Reads status/progress.json only when it was replaced (new inode or mtime)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._key: tuple[int, int] | None = None
        self.step: int | None = None

    def changed(self) -> int | None:
        """The step of a newly written progress file, or None if nothing changed."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        key = (st.st_ino, st.st_mtime_ns)
        if key == self._key:
            return None
        step = self.read()
        if step is not None:
            self._key = key
        return step

    def read(self) -> int | None:
        try:
            with open(self.path, "rb") as fh:
                data = json.loads(fh.read())
        except (OSError, ValueError):
            return None
        step = data.get("step") if isinstance(data, dict) else None
        if not isinstance(step, int):
            return None
        self.step = step
        return step


# --- tracking and cleaning up -----------------------------------------------------------------


class Tracker:
    """Everything this bench starts, by pid (with its start time, so a reused pid is safe)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.started = time.time()
        self.popens: list[subprocess.Popen[bytes]] = []
        self.pids: dict[int, float] = {}
        self.commands: list[str] = []
        self._files: list[IO[bytes]] = []

    def run(self, argv: Sequence[str], *, quiet: bool = False) -> str:
        self.commands.append(shlex.join(argv))
        result = subprocess.run(list(argv), capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise BenchError(
                f"`{shlex.join(argv)}` exited {result.returncode}:\n{result.stdout}{result.stderr}"
            )
        if not quiet and result.stdout.strip():
            print(f"    {result.stdout.strip()}")
        return result.stdout

    def popen(self, argv: Sequence[str], output: Path) -> subprocess.Popen[bytes]:
        self.commands.append(f"{shlex.join(argv)} > {output} 2>&1 &")
        out = open(output, "wb")  # noqa: SIM115 - closed in cleanup(), after the process ends
        self._files.append(out)
        proc = subprocess.Popen(
            list(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
        )
        self.popens.append(proc)
        self.track(proc.pid)
        return proc

    def track(self, pid: int) -> None:
        with contextlib.suppress(psutil.Error):
            self.pids.setdefault(pid, psutil.Process(pid).create_time())

    def kill(self, pid: int) -> None:
        """SIGKILL `pid` if it is still the process we tracked (or one of ours under root)."""
        proc = self._ours(pid)
        if proc is not None:
            with contextlib.suppress(psutil.Error):
                proc.kill()

    def _ours(self, pid: int) -> psutil.Process | None:
        try:
            proc = psutil.Process(pid)
            created = proc.create_time()
            if pid in self.pids:
                return proc if abs(created - self.pids[pid]) < 0.05 else None
            in_root = any(str(self.root) in arg for arg in proc.cmdline())
            mine = proc.uids().real == os.getuid() and created >= self.started - 1
            return proc if in_root and mine else None
        except psutil.Error:
            return None

    def stop_supervisor(self, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
        """SIGTERM (each supervisor then stops its daemon), SIGKILL after `timeout`."""
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def cleanup(self) -> None:
        for proc in self.popens:
            self.stop_supervisor(proc)
        for pid in list(self.pids):
            self.kill(pid)
        # Anything left that runs from our temporary folder (a daemon's worker, an orphan).
        for pid in all_pids():
            if pid != os.getpid() and any(str(self.root) in arg for arg in cmdline_of(pid)):
                self.kill(pid)
        for out in self._files:
            out.close()


# --- the two supervisors ----------------------------------------------------------------------


@dataclass
class Job:
    total_steps: int
    step_seconds: float
    save_steps: int


class Target:
    name = ""

    def __init__(
        self,
        tracker: Tracker,
        root: Path,
        project_venv: Path,
        job: Job,
        *,
        quiet: bool = False,
        default_config: bool = False,
        tag: str = "",
    ) -> None:
        self.tracker = tracker
        self.quiet = quiet  # supervise QUIET_DAEMON instead of the example daemon
        self.default_config = default_config  # the `init` template as it is: no edits
        self.dir = root / (f"{self.name}-quiet" if quiet else self.name + tag)
        self.ws = self.dir / "workspace"
        self.project_venv = project_venv
        self.python = project_venv / "bin" / "python"
        self.job = job
        self.proc: subprocess.Popen[bytes] | None = None
        self.config_text = ""

    @property
    def daemon_argv(self) -> list[str]:
        if self.quiet:
            return list(QUIET_DAEMON)
        return [str(self.python), "-m", DAEMON_MODULE, "--base-dir", str(self.ws)]

    def make_workspace(self) -> None:
        self.dir.mkdir(parents=True)
        self.tracker.run([str(self.project_venv / "bin" / "daemon-watchdog"), "init", str(self.ws)])
        config = self.ws / "config.json"
        data = json.loads(config.read_text())
        data.update(asdict(self.job))
        config.write_text(json.dumps(data, indent=2) + "\n")
        self.tracker.commands.append(f"# edit {config}: {json.dumps(asdict(self.job))}")

    def extra_kwargs(self) -> dict[str, Any]:
        return {}

    def setup(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        raise NotImplementedError

    def daemon_pid(self) -> int | None:
        raise NotImplementedError

    @property
    def supervisor_pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log_breakdown(self, kills: Sequence[Restart]) -> dict[str, list[float]]:
        """Per-phase times (ms) of each restart, from the supervisor's own log."""
        return {}


class Trainguard(Target):
    name = "trainguard"

    @property
    def toml(self) -> Path:
        return self.ws / "trainguard.toml"

    def setup(self) -> None:
        self.make_workspace()
        text = self.toml.read_text()
        edits = [
            ("backoff_base = 1\n", "backoff_base = 0\n"),
            ("max_restarts = 3\n", "max_restarts = 1000\nmax_restarts_without_progress = 1000\n"),
        ]
        if self.default_config:
            edits = []
        if self.quiet:
            start = '\ncommand = ["{python}", "-m", "daemon_watchdog.example.daemon"'
            line = text[text.index(start) : text.index("\n", text.index(start) + 1) + 1]
            edits.append((line, f"\ncommand = {json.dumps(list(QUIET_DAEMON))}\n"))
        for old, new in edits:
            if text.count(old) != 1:
                raise BenchError(f"{self.toml}: expected one line {old.strip()!r} from `init`")
            text = text.replace(old, new)
        self.toml.write_text(text)
        if edits:
            self.tracker.commands.append(
                f"# edit {self.toml}: [watchdog] backoff_base = 0, max_restarts = 1000, "
                "max_restarts_without_progress = 1000"
                + (f"; [daemon] command = {json.dumps(list(QUIET_DAEMON))}" if self.quiet else "")
            )
        shown = json.loads(
            self.tracker.run(
                [
                    str(self.project_venv / "bin" / "daemon-watchdog"),
                    "config",
                    "-c",
                    str(self.toml),
                    "--json",
                ],
                quiet=True,
            )
        )
        assert self.default_config or shown["watchdog"]["backoff_base"] == 0, shown["watchdog"]
        self.config_text = "[watchdog] " + ", ".join(
            f"{key} = {shown['watchdog'][key]}"
            for key in (
                "backoff_base",
                "max_restarts",
                "restart_window",
                "max_restarts_without_progress",
                "check_interval",
                "backoff_reset_after",
            )
        )

    def start(self) -> None:
        argv = [str(self.project_venv / "bin" / "daemon-watchdog"), "run", "-c", str(self.toml)]
        self.proc = self.tracker.popen(argv, self.dir / "daemon-watchdog.out")

    def daemon_pid(self) -> int | None:
        status = read_watchdog_status(self.ws / "status" / "watchdog.json")
        return status.daemon_pid if status is not None else None

    def state(self) -> str | None:
        status = read_watchdog_status(self.ws / "status" / "watchdog.json")
        return status.state if status is not None else None

    def log_breakdown(self, kills: Sequence[Restart]) -> dict[str, list[float]]:
        lines = _timed_lines(self.ws / "logs" / "watchdog.log")
        phases: dict[str, list[float]] = {
            "kill -> exit seen": [],
            "exit seen -> orphan stopped": [],
            "orphan stopped -> BACKOFF (diagnosis, checkpoint pick)": [],
            "BACKOFF -> new daemon spawned": [],
        }
        for kill in kills:
            marks: dict[str, float] = {}
            for at, message in lines:
                if not marks and message.startswith(f"daemon pid {kill.old_pid} "):
                    marks["exit"] = at
                elif marks and "orphaned by the daemon" in message and "orphans" not in marks:
                    marks["orphans"] = at
                elif marks and "-> BACKOFF" in message and "backoff" not in marks:
                    marks["backoff"] = at
                elif marks and message.startswith("started daemon pid "):
                    marks["started"] = at
                    break
            if {"exit", "orphans", "backoff", "started"} <= marks.keys():
                phases["kill -> exit seen"].append((marks["exit"] - kill.kill_wall) * 1e3)
                phases["exit seen -> orphan stopped"].append(
                    (marks["orphans"] - marks["exit"]) * 1e3
                )
                phases["orphan stopped -> BACKOFF (diagnosis, checkpoint pick)"].append(
                    (marks["backoff"] - marks["orphans"]) * 1e3
                )
                phases["BACKOFF -> new daemon spawned"].append(
                    (marks["started"] - marks["backoff"]) * 1e3
                )
        return phases


class Supervisord(Target):
    name = "supervisord"

    def __init__(self, *args: Any, venv: Path, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.venv = venv

    def extra_kwargs(self) -> dict[str, Any]:
        return {"venv": self.venv}

    @property
    def conf(self) -> Path:
        return self.dir / "supervisord.conf"

    def setup(self) -> None:
        self.make_workspace()
        sock = self.dir / "supervisor.sock"
        self.config_text = f"""\
[unix_http_server]
file = {sock}

[supervisord]
nodaemon = true
logfile = {self.dir}/supervisord.log
pidfile = {self.dir}/supervisord.pid
childlogdir = {self.dir}

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl = unix://{sock}

[program:train]
command = {shlex.join(self.daemon_argv)}
directory = {self.ws}
autostart = true
autorestart = true
startsecs = 1
startretries = 100
stopasgroup = true
killasgroup = true
stopwaitsecs = 10
redirect_stderr = true
stdout_logfile = {self.ws}/logs/daemon.log
stdout_logfile_maxbytes = 0
"""
        self.conf.write_text(self.config_text)
        self.tracker.commands.append(f"# write {self.conf} (printed below)")

    def start(self) -> None:
        argv = [str(self.venv / "bin" / "supervisord"), "-n", "-c", str(self.conf)]
        self.proc = self.tracker.popen(argv, self.dir / "supervisord.out")

    def daemon_pid(self) -> int | None:
        argv = [str(self.venv / "bin" / "supervisorctl"), "-c", str(self.conf), "pid", "train"]
        if shlex.join(argv) not in self.tracker.commands:
            self.tracker.commands.append(shlex.join(argv))
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
        text = result.stdout.strip()
        return int(text) if text.isdigit() and int(text) > 0 else None

    def log_breakdown(self, kills: Sequence[Restart]) -> dict[str, list[float]]:
        lines = _timed_lines(self.dir / "supervisord.log")
        phases: dict[str, list[float]] = {"kill -> exit seen": [], "exit seen -> spawned": []}
        for kill in kills:
            exited: float | None = None
            for at, message in lines:
                if exited is None and message.startswith("exited: train") and at >= kill.kill_wall:
                    exited = at
                elif exited is not None and message.startswith("spawned: 'train'"):
                    phases["kill -> exit seen"].append((exited - kill.kill_wall) * 1e3)
                    phases["exit seen -> spawned"].append((at - exited) * 1e3)
                    break
        return phases


_LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) [A-Z]+ (.*)$")


def _timed_lines(path: Path) -> list[tuple[float, str]]:
    """(wall time, message) of each `YYYY-mm-dd HH:MM:SS,mmm LEVEL message` line (local time).

    Log times have millisecond resolution, so each phase below is +-1 ms.
    """
    out: list[tuple[float, str]] = []
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return out
    for line in text.splitlines():
        match = _LOG_LINE.match(line)
        if match:
            at = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            out.append((at, match.group(2)))
    return out


# --- measuring --------------------------------------------------------------------------------


@dataclass
class Restart:
    old_pid: int
    kill_step: int
    kill_wall: float
    new_pid: int | None = None
    pid_ms: float | None = None
    first_step: int | None = None
    progress_ms: float | None = None
    train_procs: int = 0  # processes running the workspace's train.py, after the restart
    orphans: list[int] = field(default_factory=list)
    note: str = ""


@dataclass
class Idle:
    """The supervisor while its daemon trains normally: RSS samples, CPU, steps trained."""

    rss_mib: list[float]
    uss_mib: float
    cpu_pct: float
    seconds: float
    steps: int


@dataclass
class TargetResult:
    name: str
    version: str
    config: str
    restarts: list[Restart] = field(default_factory=list)
    rss_fresh_mib: float = 0.0
    before: Idle | None = None  # the idle window before the first crash
    rss_idle_mib: list[float] = field(default_factory=list)  # the window after the crashes
    uss_idle_mib: float = 0.0
    cpu_pct: float = 0.0
    idle_seconds: float = 0.0
    idle_steps: int = 0
    threads: int = 0
    breakdown: dict[str, list[float]] = field(default_factory=dict)
    quiet_pid_ms: list[float] = field(default_factory=list)
    load: list[float] = field(default_factory=list)  # 1-min load average, start and end


class BenchError(RuntimeError):
    pass


def wait_for(what: str, timeout: float, check: Any, interval: float = 0.01) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise BenchError(f"timed out after {timeout:g} s waiting for {what}")


def wait_for_kill_moment(
    target: Target, progress: ProgressReader, save_steps: int, not_before: float
) -> int:
    """Wait until progress advances, the step sits between two checkpoints, and `not_before`.

    Between checkpoints, a resumed run's first step (checkpoint + 1) is well below the step at
    the kill, so the new daemon's first progress cannot be mistaken for the old worker's.
    """
    low, high = max(1, save_steps // 5), save_steps * 4 // 5
    first = None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if target.proc is not None and target.proc.poll() is not None:
            raise BenchError(f"{target.name} exited with {target.proc.returncode}")
        if isinstance(target, Trainguard) and target.state() in ("FATAL", "STOPPED"):
            raise BenchError(f"trainguard went {target.state()}; see {target.ws}/logs")
        step = progress.read()
        if step is not None:
            first = step if first is None else first
            advancing = step != first
            window = step >= low and low <= step % save_steps <= high
            if advancing and window and time.monotonic() >= not_before:
                return step
        time.sleep(0.005)
    raise BenchError(f"{target.name}: the daemon's progress did not advance for 60 s")


def crash_once(
    target: Target, progress: ProgressReader, args: argparse.Namespace, tracker: Tracker
) -> Restart:
    sup = target.supervisor_pid
    old = wait_for("the daemon's pid", 10, target.daemon_pid)
    if ppid_of(old) != sup or DAEMON_MODULE not in cmdline_of(old):
        raise BenchError(f"pid {old} is not the daemon child of {target.name} pid {sup}")
    tracker.track(old)
    seen = all_pids()
    kill_step = progress.read()
    assert kill_step is not None
    progress.changed()  # what is there now is the old run's
    poll = args.poll_ms / 1e3
    kill_wall = time.time()
    t0 = time.perf_counter()
    os.kill(old, signal.SIGKILL)
    r = Restart(old_pid=old, kill_step=kill_step, kill_wall=kill_wall)
    deadline = t0 + args.restart_timeout
    # New children of the supervisor, and when each was first seen. Not every one is the daemon
    # (the watchdog may run a child that compiles the crash rules): the daemon is
    # the one that execs DAEMON_MODULE, timed from when it first appeared.
    children: dict[int, float] = {}
    while (r.pid_ms is None or r.progress_ms is None) and time.perf_counter() < deadline:
        time.sleep(poll)
        now = time.perf_counter()
        if r.pid_ms is None:
            pids = all_pids()
            for pid in pids - seen:
                if pid != old and ppid_of(pid) == sup:
                    children.setdefault(pid, now)
            seen = pids
            for pid, first_seen in children.items():
                if DAEMON_MODULE in cmdline_of(pid):
                    r.new_pid, r.pid_ms = pid, (first_seen - t0) * 1e3
                    tracker.track(pid)
                    break
        if r.progress_ms is None:
            step = progress.changed()
            if step is not None and step < kill_step:
                r.first_step, r.progress_ms = step, (now - t0) * 1e3
    if r.pid_ms is None or r.progress_ms is None:
        r.note = f"no restart seen within {args.restart_timeout:g} s"
        return r
    time.sleep(args.orphan_check_delay)
    workers = processes_running(target.ws / "train.py")
    r.train_procs = len(workers)
    r.orphans = [pid for pid in workers if ppid_of(pid) != r.new_pid]
    for pid in workers:
        tracker.track(pid)
    for pid in r.orphans:  # so that they do not slow down the next runs
        tracker.kill(pid)
    if r.new_pid is not None and DAEMON_MODULE not in cmdline_of(r.new_pid):
        r.note = f"new child {r.new_pid} is not the daemon: {cmdline_of(r.new_pid)}"
    named = wait_for(
        "the supervisor to report the new pid", 5, lambda: target.daemon_pid() == r.new_pid
    )
    assert named
    return r


def measure(target: Target, args: argparse.Namespace, tracker: Tracker) -> TargetResult:
    print(f"\n== {target.name}")
    target.setup()
    target.start()
    sup = psutil.Process(target.supervisor_pid)
    progress = ProgressReader(target.ws / "status" / "progress.json")
    wait_for("the first daemon", 60, target.daemon_pid, interval=0.1)
    wait_for("the first progress", 60, progress.read, interval=0.05)
    time.sleep(2)
    result = TargetResult(target.name, "", target.config_text, load=[os.getloadavg()[0]])
    result.rss_fresh_mib = sup.memory_info().rss / MiB
    print(f"  idle window before any crash: {args.idle_seconds:g} s of normal training ...")
    result.before = idle_window(target, sup, progress, args)
    not_before = time.monotonic()
    for i in range(args.runs):
        wait_for_kill_moment(target, progress, args.save_steps, not_before)
        r = crash_once(target, progress, args, tracker)
        result.restarts.append(r)
        print(
            f"  crash {i + 1:2}/{args.runs}: SIGKILL pid {r.old_pid} at step {r.kill_step}; "
            f"new pid {r.new_pid} after {_ms(r.pid_ms)}, first progress (step {r.first_step}) "
            f"after {_ms(r.progress_ms)}; train.py processes: {r.train_procs}"
            + (f" (orphans {r.orphans} killed by the bench)" if r.orphans else "")
            + (f"  [{r.note}]" if r.note else "")
        )
        # The next kill at least `pause` s after this restart (supervisord's startsecs = 1:
        # a death sooner than that would count as a failed start, with its own backoff).
        not_before = time.monotonic() + args.pause
    print(f"  idle window after the crashes: {args.idle_seconds:g} s of normal training ...")
    after = idle_window(target, sup, progress, args)
    result.rss_idle_mib = after.rss_mib
    result.uss_idle_mib = after.uss_mib
    result.cpu_pct = after.cpu_pct
    result.idle_seconds = after.seconds
    result.idle_steps = after.steps
    result.threads = sup.num_threads()
    result.load.append(os.getloadavg()[0])
    assert target.proc is not None
    tracker.stop_supervisor(target.proc)
    result.breakdown = target.log_breakdown(result.restarts)
    return result


def measure_isolated(
    make: Any, name: str, args: argparse.Namespace, tracker: Tracker
) -> TargetResult:
    """`--default-config`: each crash under a supervisor started for it, in a workspace of its
    own, after `--pause` s of training: an isolated crash, the first of its run, with the
    config a user gets (`daemon-watchdog init`'s template, untouched)."""
    print(f"\n== {name}, {args.runs} isolated crashes, default config")
    result = TargetResult(name, "", "", load=[os.getloadavg()[0]])
    for i in range(args.runs):
        target: Target = make(f"-{i + 1}")
        target.setup()
        result.config = target.config_text
        target.start()
        progress = ProgressReader(target.ws / "status" / "progress.json")
        wait_for("the first daemon", 60, target.daemon_pid, interval=0.1)
        wait_for("the first progress", 60, progress.read, interval=0.05)
        wait_for_kill_moment(target, progress, args.save_steps, time.monotonic() + args.pause)
        r = crash_once(target, progress, args, tracker)
        result.restarts.append(r)
        print(
            f"  crash {i + 1:2}/{args.runs}: SIGKILL pid {r.old_pid} at step {r.kill_step}; "
            f"new pid {r.new_pid} after {_ms(r.pid_ms)}, first progress after "
            f"{_ms(r.progress_ms)}; train.py processes: {r.train_procs}"
            + (f" (orphans {r.orphans} killed by the bench)" if r.orphans else "")
            + (f"  [{r.note}]" if r.note else "")
        )
        assert target.proc is not None
        tracker.stop_supervisor(target.proc)
        for phase, values in target.log_breakdown([r]).items():
            result.breakdown.setdefault(phase, []).extend(values)
    result.load.append(os.getloadavg()[0])
    return result


def idle_window(
    target: Target, sup: psutil.Process, progress: ProgressReader, args: argparse.Namespace
) -> Idle:
    """RSS every 0.5 s and CPU over `--idle-seconds` of normal training (no crash in it)."""
    wait_for_kill_moment(target, progress, args.save_steps, time.monotonic() + 2)
    daemon = target.daemon_pid()
    step0 = progress.read() or 0
    rss: list[float] = []
    c0 = sup.cpu_times()
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < args.idle_seconds:
        rss.append(sup.memory_info().rss / MiB)
        time.sleep(0.5)
    c1 = sup.cpu_times()
    seconds = time.perf_counter() - t0
    if target.daemon_pid() != daemon:
        raise BenchError(f"{target.name}: the daemon restarted during the idle window")
    return Idle(
        rss_mib=rss,
        uss_mib=sup.memory_full_info().uss / MiB,
        cpu_pct=(c1.user + c1.system - c0.user - c0.system) / seconds * 100,
        seconds=seconds,
        steps=(progress.read() or 0) - step0,
    )


def measure_quiet(target: Target, args: argparse.Namespace, tracker: Tracker) -> list[float]:
    """Crash -> new pid (ms) of QUIET_DAEMON, `--quiet-runs` times, killed at random phases."""
    print(f"\n== {target.name}, quiet daemon: {shlex.join(QUIET_DAEMON)}")
    target.setup()
    target.start()
    sup = target.supervisor_pid
    rng = random.Random(0)
    times: list[float] = []
    for i in range(args.quiet_runs):
        # Past supervisord's startsecs, at a random phase of its 1 s loop timeout.
        time.sleep(1.5 + rng.random())
        old = wait_for("the quiet daemon's pid", 10, target.daemon_pid)
        if ppid_of(old) != sup or cmdline_of(old) != list(QUIET_DAEMON):
            raise BenchError(f"pid {old} is not the quiet daemon child of {target.name}")
        tracker.track(old)
        seen = all_pids()
        t0 = time.perf_counter()
        os.kill(old, signal.SIGKILL)
        new = None
        while new is None and time.perf_counter() - t0 < args.restart_timeout:
            time.sleep(args.poll_ms / 1e3)
            pids = all_pids()
            new = next((p for p in pids - seen if p != old and ppid_of(p) == sup), None)
            seen = pids
        if new is None:
            raise BenchError(f"{target.name}: no restart of the quiet daemon")
        times.append((time.perf_counter() - t0) * 1e3)
        tracker.track(new)
        print(f"  crash {i + 1:2}/{args.quiet_runs}: new pid {new} after {times[-1]:.0f} ms")
        wait_for("the supervisor to report it", 5, lambda new=new: target.daemon_pid() == new)
    assert target.proc is not None
    tracker.stop_supervisor(target.proc)
    return times


def product_source(project_venv: Path) -> str:
    """Where the supervised product is imported from, and its git commit if it is a checkout."""
    where = subprocess.run(
        [
            str(project_venv / "bin" / "python"),
            "-c",
            "import os, trainguard; print(os.path.dirname(os.path.dirname(trainguard.__file__)))",
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd="/",  # not the repository: a cwd on sys.path would shadow a snapshot's sources
    ).stdout.strip()

    def git(*argv: str) -> str:
        result = subprocess.run(
            ["git", "-C", where, *argv], capture_output=True, text=True, check=False
        )
        return result.stdout.strip() if result.returncode == 0 else ""

    if not where or git("rev-parse", "--show-toplevel") != where:
        return f"{where or '?'} (not a git checkout)"
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return f"{where} at {git('rev-parse', '--short', 'HEAD')}" + (
        " + uncommitted changes" if dirty else ""
    )


def has_re2(project_venv: Path) -> bool:
    """Whether google-re2 is importable there: the crash detector then loads it too (~2.3 MiB).

    It is a runtime dependency only where Hyperscan has no wheel; on x86-64 Linux only the dev
    extras install it, so a dev venv overstates a user's memory after the first crash.
    """
    probe = [str(project_venv / "bin" / "python"), "-c", "import re2"]
    return subprocess.run(probe, capture_output=True, check=False, cwd="/").returncode == 0


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms"


# --- the bench venv ---------------------------------------------------------------------------


def bench_venv(path: Path, tracker: Tracker) -> str:
    """A venv with supervisor 4.x at `path` (made if missing); returns supervisord's version."""
    if not (path / "bin" / "supervisord").exists():
        print(f"creating the bench venv {path} and installing {SUPERVISOR_REQUIREMENT} ...")
        tracker.run([sys.executable, "-m", "venv", str(path)])
        tracker.run(
            [str(path / "bin" / "python"), "-m", "pip", "install", "-q", SUPERVISOR_REQUIREMENT],
            quiet=True,
        )
    version = tracker.run([str(path / "bin" / "supervisord"), "--version"], quiet=True).strip()
    if not version.startswith("4."):
        raise BenchError(f"supervisord {version} in {path}: this bench wants 4.x")
    return version


# --- report -----------------------------------------------------------------------------------


def summary(results: Sequence[TargetResult]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for res in results:
        ok = [r for r in res.restarts if r.pid_ms is not None and r.progress_ms is not None]
        pid = [r.pid_ms for r in ok if r.pid_ms is not None]
        prog = [r.progress_ms for r in ok if r.progress_ms is not None]
        out[res.name] = {
            "restarts_seen": f"{len(ok)}/{len(res.restarts)}",
            "pid_median_ms": statistics.median(pid) if pid else None,
            "pid_p90_ms": percentile(pid, 90) if pid else None,
            "pid_range_ms": [min(pid), max(pid)] if pid else None,
            "progress_median_ms": statistics.median(prog) if prog else None,
            "progress_p90_ms": percentile(prog, 90) if prog else None,
            "progress_range_ms": [min(prog), max(prog)] if prog else None,
            "orphans_survived": sum(1 for r in ok if r.orphans),
            "train_procs_after_restart": sorted({r.train_procs for r in ok}),
            "rss_fresh_mib": res.rss_fresh_mib,
            "rss_before_median_mib": statistics.median(res.before.rss_mib) if res.before else None,
            "uss_before_mib": res.before.uss_mib if res.before else None,
            "cpu_before_pct": res.before.cpu_pct if res.before else None,
            "steps_before": res.before.steps if res.before else None,
            "rss_idle_median_mib": (
                statistics.median(res.rss_idle_mib) if res.rss_idle_mib else None
            ),
            "rss_idle_max_mib": max(res.rss_idle_mib) if res.rss_idle_mib else None,
            "uss_idle_mib": res.uss_idle_mib,
            "cpu_pct": res.cpu_pct,
            "idle_seconds": res.idle_seconds,
            "idle_steps": res.idle_steps,
            "threads": res.threads,
            "load": res.load,
            "quiet_pid_median_ms": (
                statistics.median(res.quiet_pid_ms) if res.quiet_pid_ms else None
            ),
            "quiet_pid_p90_ms": percentile(res.quiet_pid_ms, 90) if res.quiet_pid_ms else None,
            "quiet_pid_range_ms": (
                [min(res.quiet_pid_ms), max(res.quiet_pid_ms)] if res.quiet_pid_ms else None
            ),
            "breakdown_median_ms": {k: statistics.median(v) for k, v in res.breakdown.items() if v},
        }
    return out


def print_report(
    results: Sequence[TargetResult], figures: dict[str, Any], args: argparse.Namespace
) -> None:
    names = [r.name for r in results]

    def row(label: str, cell: Any) -> None:
        print(f"| {label} | " + " | ".join(cell(figures[n]) for n in names) + " |")

    def lat(key: str) -> Any:
        return lambda f: (
            "-"
            if f[f"{key}_median_ms"] is None
            else f"{f[f'{key}_median_ms']:.0f} / {f[f'{key}_p90_ms']:.0f} ms "
            f"({f[f'{key}_range_ms'][0]:.0f}-{f[f'{key}_range_ms'][1]:.0f})"
        )

    crashes = len(results[0].restarts)
    print(f"\n| {crashes} crashes (SIGKILL of the daemon) | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    row("crash -> new daemon pid, median / p90 (min-max)", lat("pid"))
    row("crash -> new daemon's first progress, median / p90 (min-max)", lat("progress"))
    if args.quiet_runs and not args.default_config:
        row(
            f"quiet daemon `{shlex.join(QUIET_DAEMON)}`, {args.quiet_runs} crashes:"
            " crash -> new pid, median / p90 (min-max)",
            lat("quiet_pid"),
        )
    row(
        f"killed daemon's train.py still running {args.orphan_check_delay:g} s after restart",
        lambda f: (
            f"{f['orphans_survived']} of {f['restarts_seen'].split('/')[1]}"
            f" (train.py processes: {f['train_procs_after_restart']})"
        ),
    )
    if args.default_config:
        _print_ratios_and_phases(results, figures, rss=False)
        return
    row(
        "supervisor RSS, fresh (2 s after the first progress)",
        lambda f: f"{f['rss_fresh_mib']:.1f} MiB",
    )
    row(
        f"supervisor RSS, idle {args.idle_seconds:g} s before any crash, median",
        lambda f: f"{f['rss_before_median_mib']:.1f} MiB",
    )
    row(
        f"supervisor RSS, idle {args.idle_seconds:g} s after the {crashes} crashes, median (max)",
        lambda f: f"{f['rss_idle_median_mib']:.1f} MiB ({f['rss_idle_max_mib']:.1f})",
    )
    row(
        "supervisor USS at the end of each window (before / after the crashes)",
        lambda f: f"{f['uss_before_mib']:.1f} / {f['uss_idle_mib']:.1f} MiB",
    )
    row(
        "supervisor CPU over each window (user+sys / wall; before / after the crashes)",
        lambda f: (
            f"{f['cpu_before_pct']:.2f} / {f['cpu_pct']:.2f} % "
            f"({f['steps_before']} / {f['idle_steps']} steps trained)"
        ),
    )
    row("supervisor threads", lambda f: str(f["threads"]))
    row(
        "1-min load average at start / end (2 = both cores busy)",
        lambda f: " / ".join(f"{x:.2f}" for x in f["load"]),
    )
    _print_ratios_and_phases(results, figures, rss=True)


def _print_ratios_and_phases(
    results: Sequence[TargetResult], figures: dict[str, Any], *, rss: bool
) -> None:
    names = [r.name for r in results]
    if len(names) == 2 and {"trainguard", "supervisord"} <= set(names):
        tg, sd = figures["trainguard"], figures["supervisord"]
        ratios = []
        if rss:
            before = tg["rss_before_median_mib"] / sd["rss_before_median_mib"]
            after = tg["rss_idle_median_mib"] / sd["rss_idle_median_mib"]
            ratios = [f"idle RSS before any crash {before:.2f}x, after the crashes {after:.2f}x"]
        if tg["pid_median_ms"] and sd["pid_median_ms"]:
            ratios = [
                f"new pid {tg['pid_median_ms'] / sd['pid_median_ms']:.2f}x",
                f"first progress {tg['progress_median_ms'] / sd['progress_median_ms']:.2f}x",
                *ratios,
            ]
        print(f"\ntrainguard / supervisord: {', '.join(ratios)} (goal: latency <= 1x, RSS <= 1.5x)")
    for res in results:
        bd = figures[res.name]["breakdown_median_ms"]
        if bd:
            parts = ", ".join(f"{k}: {v:.0f} ms" for k, v in bd.items())
            print(f"{res.name} restart phases from its log (median, +-1 ms): {parts}")


# --- main -------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--runs", type=int, default=10, help="crashes per supervisor")
    parser.add_argument("--idle-seconds", type=float, default=30.0)
    parser.add_argument("--venv", type=Path, help="bench venv with supervisor (made if missing)")
    parser.add_argument("--project-venv", type=Path, default=REPO / ".venv")
    parser.add_argument("--step-seconds", type=float, default=0.05)
    parser.add_argument("--save-steps", type=int, default=50)
    parser.add_argument("--total-steps", type=int, default=100_000)
    parser.add_argument("--poll-ms", type=float, default=1.0, help="/proc and progress polling")
    parser.add_argument(
        "--pause", type=float, default=2.0, help="min seconds from a restart to the next crash"
    )
    parser.add_argument("--orphan-check-delay", type=float, default=1.0)
    parser.add_argument(
        "--quiet-runs",
        type=int,
        default=8,
        help=f"crashes of a quiet daemon ({shlex.join(QUIET_DAEMON)}) per supervisor; 0: none",
    )
    parser.add_argument("--restart-timeout", type=float, default=30.0)
    parser.add_argument(
        "--default-config",
        action="store_true",
        help="isolated crashes with the `init` template untouched: each crash under a freshly "
        "started supervisor in its own workspace, after --pause s of training (no idle "
        "windows, no quiet runs)",
    )
    parser.add_argument(
        "--only", choices=("trainguard", "supervisord"), help="measure one supervisor only"
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="write the raw figures here")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    return parser


def _interrupted(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not sys.platform.startswith("linux"):
        print("this bench reads /proc: Linux only", file=sys.stderr)
        return 2
    # Ctrl+C and SIGTERM both clean up (SIGINT explicitly: a shell's `cmd &` ignores it).
    signal.signal(signal.SIGINT, _interrupted)
    signal.signal(signal.SIGTERM, _interrupted)
    root = Path(tempfile.mkdtemp(prefix="tg-vs-sup-")).resolve()
    tracker = Tracker(root)
    job = Job(args.total_steps, args.step_seconds, args.save_steps)
    code = 0
    try:
        venv = args.venv.resolve() if args.venv else root / "venv"
        version = bench_venv(venv, tracker)
        targets: list[Target] = []
        if args.only in (None, "trainguard"):
            targets.append(Trainguard(tracker, root, args.project_venv, job))
        if args.only in (None, "supervisord"):
            targets.append(Supervisord(tracker, root, args.project_venv, job, venv=venv))
        tg_version = tracker.run(
            [str(args.project_venv / "bin" / "daemon-watchdog"), "--version"], quiet=True
        ).strip()
        results = []
        for target in targets:
            if args.default_config:
                kind, kw = type(target), target.extra_kwargs()

                def make(tag: str, kind: Any = kind, kw: dict[str, Any] = kw) -> Target:
                    return kind(  # type: ignore[no-any-return]
                        tracker, root, args.project_venv, job, default_config=True, tag=tag, **kw
                    )

                result = measure_isolated(make, target.name, args, tracker)
            else:
                result = measure(target, args, tracker)
            result.version = version if target.name == "supervisord" else tg_version
            results.append(result)
        if args.quiet_runs and not args.default_config:
            for target, result in zip(targets, results, strict=True):
                quiet = type(target)(
                    tracker, root, args.project_venv, job, quiet=True, **target.extra_kwargs()
                )
                result.quiet_pid_ms = measure_quiet(quiet, args, tracker)
        figures = summary(results)
        print(
            f"\nmachine: {os.cpu_count()} CPUs, Linux {os.uname().release}; "
            f"Python {sys.version.split()[0]}; supervisord {version}; {tg_version} "
            f"from {product_source(args.project_venv)}; google-re2 in its venv: "
            + ("yes" if has_re2(args.project_venv) else "no")
        )
        print(
            f"job: total_steps {job.total_steps}, step_seconds {job.step_seconds}, "
            f"save_steps {job.save_steps}; poll every {args.poll_ms:g} ms"
        )
        print_report(results, figures, args)
        print("\ncommands run (in this order):")
        for command in tracker.commands:
            print(f"  {command}")
        for res in results:
            print(f"\n{res.name} config:\n{res.config}")
        if args.json:
            raw = {
                "machine": {"cpus": os.cpu_count(), "kernel": os.uname().release},
                "python": sys.version.split()[0],
                "trainguard": f"{tg_version} from {product_source(args.project_venv)}",
                "supervisord": version,
                "args": {k: str(v) for k, v in vars(args).items()},
                "figures": figures,
                "results": [asdict(r) for r in results],
            }
            args.json.write_text(json.dumps(raw, indent=2) + "\n")
    except KeyboardInterrupt:
        print("\ninterrupted: cleaning up", file=sys.stderr)
        code = 130
    except BenchError as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        code = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        tracker.cleanup()
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
