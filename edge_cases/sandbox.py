"""A throwaway workspace and every process a scenario starts in it, cleaned up whatever happens.

The workspace lives under a fresh `mkdtemp` folder that only this sandbox knows. Every tool runs
as a subprocess, as an operator would run it, with `-c` pointing into the sandbox and with the
caller's `TRAINGUARD_*` variables scrubbed, so neither the user's config nor their overrides
ever leak in. Cleanup signals only processes the sandbox started, their descendants, processes
carrying an owner token the sandbox's watchdogs issued, and processes whose command line names
the sandbox's private folder: nothing else can be ours.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import psutil

from edge_cases.deadline import Deadline
from edge_cases.reaper import (
    KILL_WAIT,
    SANDBOX_ENV,
    alive,
    belonging_to,
    cmdline,
    kill_all,
    with_descendants,
)
from edge_cases.scenario import Cancelled, ScenarioFailed, expect
from edge_cases.tmpfs import mount_tmpfs, unmount
from edge_cases.toml_keys import set_toml_key
from trainguard.config import EXAMPLE_COMMAND
from trainguard.procs import find_marked
from trainguard.watchdog_status import WatchdogStatus, read_watchdog_status

# A runner's throwaway queue writes kilobytes: its preflight asks for 1 GB free, not the 50 GB
# of a training workspace, so that a runner scenario tests its fault, not the machine's disk.
RUNNER_DISK = "[health]\ndisk_min_free_gb = 1\n"
TOOL_TIMEOUT = 30.0

# Small numbers so a fault shows within seconds; the template's own are tuned for humans.
FAST_WATCHDOG: dict[str, Any] = {
    "check_interval": 1,
    "progress_timeout": 4,
    "startup_grace": 20,
    "backoff_base": 0.1,
    "backoff_max": 0.5,
    "max_restarts": 5,
    "hang_dump_timeout": 2,
    "prune_interval": 3600,
}
FAST_DAEMON: dict[str, Any] = {"stop_timeout": 2}
# 20 steps a second, a checkpoint every half second: long enough that no run ends by itself.
DEFAULT_JOB: dict[str, Any] = {"total_steps": 400, "save_steps": 10, "step_seconds": 0.05}


class Sandbox:
    """One scenario's workspace (`base`) inside its private folder (`root`)."""

    def __init__(
        self, name: str, deadline: Deadline, *, env_overrides: Mapping[str, str] | None = None
    ) -> None:
        self.name = name
        self.deadline = deadline
        self.root = Path(tempfile.mkdtemp(prefix=f"trainguard-edge-{name}-")).resolve()
        self.base = self.root / "ws"
        self.config = self.base / "trainguard.toml"
        self.env_overrides = dict(env_overrides or {})
        self.daemon_argv = list(EXAMPLE_COMMAND)
        self._procs: list[subprocess.Popen[bytes]] = []
        self._tokens: set[str] = set()
        self._mounts: list[Path] = []
        self._lock = threading.Lock()  # guards _procs and _closed
        self._closed = False  # no new process may start
        self._close_lock = threading.Lock()  # held for a whole cleanup: a second caller waits
        self._cleaned = False

    # --- the workspace ----------------------------------------------------------------------

    def create(self, **job: Any) -> None:
        """`daemon-watchdog init`, then fast watchdog settings and the job's knobs."""
        self.create_at(self.base, **job)
        # Scenarios run side by side, maybe beside real training: each sandbox's health-check
        # considers only the train.py processes under its own folder.
        mine = re.escape(f"{self.root}/") + r".*train\.py"
        self.configure("watchdog", **FAST_WATCHDOG, orphan_patterns=[mine])
        self.configure("daemon", **FAST_DAEMON)

    def create_at(self, where: Path, **job: Any) -> None:
        result = self.tool("daemon_watchdog", "init", str(where), config=False)
        expect(result.returncode == 0, f"daemon-watchdog init failed: {result.stderr.strip()}")
        self.set_job(where, **{**DEFAULT_JOB, **job})

    def set_job(self, where: Path | None = None, **knobs: Any) -> None:
        data = self.job(where)
        data.update(knobs)
        ((where or self.base) / "config.json").write_text(json.dumps(data, indent=2) + "\n")

    def job(self, where: Path | None = None) -> dict[str, Any]:
        """The job's config.json as it is now (a recovery action may have rewritten it)."""
        data: dict[str, Any] = json.loads(((where or self.base) / "config.json").read_text())
        return data

    def configure(self, section: str, **values: Any) -> None:
        """Set keys of one trainguard.toml section, as an operator would edit the file."""
        text = self.config.read_text()
        for key, value in values.items():
            text = set_toml_key(text, section, key, value)
        self.config.write_text(text)

    def hang_timeout(self, seconds: float) -> None:
        """No progress for `seconds` is a hang, in the train phase and in eval/save alike.

        The template gives eval its own, longer timeout: a tree frozen mid-save would
        otherwise be judged by that one.
        """
        self.configure("watchdog", progress_timeout=seconds)
        self.configure("watchdog.phase_timeouts", eval=seconds)

    def daemon_args(self, *args: str) -> None:
        """Extra arguments for the example daemon (its simulated `--fault`, for instance)."""
        self.configure("daemon", command=[*self.daemon_argv, *args])

    def path(self, relative: str) -> Path:
        return self.base / relative

    # --- processes --------------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINGUARD_")}
        env.update(self.env_overrides)
        env[SANDBOX_ENV] = str(self.root)  # what lets cleanup prove a process is ours
        return env

    def spawn(
        self, argv: list[str], *, label: str, env: Mapping[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start a tracked process; its output goes to ROOT/LABEL-N.out.

        Its own session: Ctrl+C in the terminal reaches the runner alone, which then stops
        everything in order instead of racing a half-interrupted watchdog.
        """
        with self._lock:
            if self._closed:
                raise Cancelled("sandbox already cleaned up")
            out = self.root / f"{label}-{len(self._procs)}.out"
            with open(out, "ab") as fh:
                proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=fh,
                    stderr=subprocess.STDOUT,
                    env=dict(env) if env is not None else self.env(),
                    cwd=self.root,
                    start_new_session=True,
                )
            self._procs.append(proc)
        return proc

    def start_watchdog(self, *args: str) -> subprocess.Popen[bytes]:
        argv = [sys.executable, "-m", "daemon_watchdog", "run", "-c", str(self.config), *args]
        return self.spawn(argv, label="watchdog")

    def tool(
        self, module: str, *args: str, config: bool = True, timeout: float = TOOL_TIMEOUT
    ) -> subprocess.CompletedProcess[str]:
        """Run `python -m MODULE ARGS [-c CONFIG]`, as an operator would run the command."""
        config_args = ["-c", str(self.config)] if config else []
        return self.run([sys.executable, "-m", module, *args, *config_args], timeout=timeout)

    def run(
        self, argv: list[str], *, timeout: float = TOOL_TIMEOUT
    ) -> subprocess.CompletedProcess[str]:
        """Run `argv` to completion (within the deadline), tracked like any process."""
        with self._lock:
            if self._closed:
                raise Cancelled("sandbox already cleaned up")
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=self.env(),
                cwd=self.root,
                start_new_session=True,
            )
            self._procs.append(proc)
        limit = max(1.0, min(timeout, self.deadline.remaining()))
        try:
            out, err = proc.communicate(timeout=limit)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            shown = " ".join(Path(a).name if os.sep in a else a for a in argv[:4])
            raise ScenarioFailed(f"`{shown}` did not finish within {limit:.0f} s") from None
        self.deadline.check()
        return subprocess.CompletedProcess(
            argv, proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")
        )

    def tool_json(self, module: str, *args: str) -> tuple[int, dict[str, Any]]:
        """Run a tool with `--json`; its exit code and the parsed object."""
        result = self.tool(module, *args, "--json")
        try:
            data = json.loads(result.stdout)
        except ValueError:
            raise ScenarioFailed(
                f"{module} --json printed no JSON (exit {result.returncode}): "
                f"{(result.stdout + result.stderr).strip()[-300:]}"
            ) from None
        expect(isinstance(data, dict), f"{module} --json printed {type(data).__name__}")
        return result.returncode, data

    # --- what the watchdog says -------------------------------------------------------------

    def status(self) -> WatchdogStatus | None:
        """status/watchdog.json as it is now; None when absent or unreadable."""
        status = read_watchdog_status(self.path("status/watchdog.json"))
        if status is not None and status.owner_token is not None:
            # Every daemon's token, so that cleanup finds all its processes.
            self._tokens.add(status.owner_token)
        return status

    def status_now(self) -> WatchdogStatus:
        """The state file now, where a watchdog has published one: its absence is a failure."""
        status = self.status()
        expect(status is not None, "status/watchdog.json is missing or unreadable")
        assert status is not None
        return status

    def wait_status(
        self,
        predicate: Callable[[WatchdogStatus], bool],
        what: str,
        *,
        within: float | None = None,
    ) -> WatchdogStatus:
        def probe() -> WatchdogStatus | None:
            status = self.status()
            return status if status is not None and predicate(status) else None

        return self.deadline.wait_for(probe, what, within=within, context=self.describe)

    def wait_running(self, past_step: int = 1, *, restarts: int = 0) -> WatchdogStatus:
        what = f"RUNNING past step {past_step}" + (
            f" after {restarts} restart(s)" if restarts else ""
        )
        return self.wait_status(
            lambda s: s.state == "RUNNING" and s.restart_count >= restarts and s.step >= past_step,
            what,
        )

    def wait_state(self, state: str, *, within: float | None = None) -> WatchdogStatus:
        return self.wait_status(lambda s: s.state == state, f"state {state}", within=within)

    def describe(self) -> str:
        s = self.status()
        if s is None:
            return "no state file yet"
        crash = s.last_crash.reason if s.last_crash is not None else None
        seen = (
            f"last seen: state {s.state}, step {s.step}, "
            f"restarts {s.restart_count}, last crash {crash!r}"
        )
        if s.daemon is not None and not s.daemon.cmdline:
            seen += "; the daemon's identity was recorded with an empty cmdline (taken mid-exec)"
        return seen

    def history(self) -> list[dict[str, Any]]:
        path = self.path(".crash_history.jsonl")
        try:
            lines = path.read_text().splitlines()
        except OSError:
            return []
        return [json.loads(line) for line in lines if line.strip()]

    def checkpoint_steps(self) -> list[int]:
        steps = []
        for path in self.path("checkpoints").glob("checkpoint-*"):
            suffix = path.name.removeprefix("checkpoint-")
            if suffix.isdigit():
                steps.append(int(suffix))
        return sorted(steps)

    def trainer_step(self) -> int:
        """The step in the trainer's own progress file (the state file lags by up to 1 s)."""
        try:
            step = json.loads(self.path("status/progress.json").read_bytes()).get("step")
        except (OSError, ValueError, AttributeError):
            return 0
        return step if isinstance(step, int) else 0

    def daemon_tree(self) -> list[psutil.Process]:
        """The live daemon and its workers: processes carrying the current owner token."""
        status = self.status()
        token = status.owner_token if status is not None else None
        return find_marked(token) if token is not None else []

    def workers(self) -> list[psutil.Process]:
        return [p for p in self.daemon_tree() if "train.py" in " ".join(cmdline(p))]

    def daemons(self) -> list[psutil.Process]:
        """Example daemons of this workspace, whoever started them."""
        return [
            p
            for p in self.strays()
            if "daemon_watchdog.example.daemon" in " ".join(cmdline(p)) and alive(p)
        ]

    def signal_daemon(self, sig: int) -> psutil.Process:
        """Signal the daemon the state file names, once proven to be this workspace's daemon."""
        status = self.status()
        pid = status.daemon_pid if status is not None else None
        proc = next((p for p in self.daemons() if p.pid == pid), None)
        expect(proc is not None, f"daemon pid {pid} of the state file is not this sandbox's daemon")
        assert proc is not None
        proc.send_signal(sig)
        return proc

    def suspend_tree(self) -> list[psutil.Process]:
        """SIGSTOP the daemon and its workers: a hang, or a frozen moment to tamper in."""
        tree = self.daemon_tree()
        expect(tree, "no daemon tree to suspend")
        for proc in tree:
            proc.suspend()
        return tree

    def watchdog_log(self) -> str:
        try:
            return self.path("logs/watchdog.log").read_text(errors="replace")
        except OSError:
            return ""

    # --- mounts -----------------------------------------------------------------------------

    def mount_tmpfs(self, where: Path, size: str) -> None:
        """A real small filesystem that can fill up; skips the scenario where that is impossible."""
        mount_tmpfs(where, size)
        self._mounts.append(where)

    # --- cleanup ----------------------------------------------------------------------------

    def close(self, *, keep: bool) -> None:
        """Kill every process of the sandbox, unmount, remove the folder (unless `keep`).

        Idempotent and safe from two threads: the runner calls it after an interrupt while the
        scenario's own thread may be calling it too; the second caller waits for the first.
        """
        with self._close_lock:
            if self._cleaned:
                return
            with self._lock:
                self._closed = True
            self._clean(keep=keep)
            self._cleaned = True

    def _clean(self, *, keep: bool) -> None:
        self.status()  # learn the newest daemon's token
        # Watchdogs and tools first: a live watchdog would start a daemon while we kill its last.
        started = [p for p in self._procs if p.poll() is None]
        kill_all(with_descendants(started))
        for proc in self._procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(KILL_WAIT)  # reap: they are our children
        for _ in range(5):
            strays = self.strays()
            if not strays:
                break
            kill_all(strays)
        for where in reversed(self._mounts):
            unmount(where)
        if not keep:
            shutil.rmtree(self.root, ignore_errors=True)

    def strays(self) -> list[psutil.Process]:
        """Live processes of ours that provably belong to this sandbox."""
        return belonging_to(self.root, self._tokens)
