"""Every node of a multi-node run answers ssh without a prompt, within a short budget.

One `ssh -o BatchMode=yes -o ConnectTimeout=N NODE true` per node, all at once, so the check
takes about one budget however many nodes there are. StrictHostKeyChecking is left to the
user's ssh config on purpose: a health check must not weaken host-key checking nor write to
known_hosts. With BatchMode an unknown or changed host key fails instead of prompting, and is
reported as such; users who want trust-on-first-use put `-o StrictHostKeyChecking=accept-new`
in `ssh_command` themselves.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from health_check.context import Context
from health_check.result import CheckResult, Metric, Status, worst

# Past ConnectTimeout, key exchange, authentication and `true` still take a moment on a
# healthy node; a node slower than this margin is as good as down for a training launch.
KILL_MARGIN_S = 1.0
STDERR_TAIL_BYTES = 4096
SUMMARY_NAMES = 3

REACHABLE = "reachable"
TIMED_OUT = "timed out"

# ssh exits 255 for its own errors; its last stderr line says which. First match wins.
_SSH_ERRORS = (
    ("Permission denied", "auth failed"),
    ("Host key verification failed", "host key rejected"),
    ("REMOTE HOST IDENTIFICATION HAS CHANGED", "host key rejected"),
    ("Connection refused", "refused"),
    ("timed out", TIMED_OUT),
    ("Could not resolve hostname", "unknown host"),
    ("No route to host", "unreachable"),
    ("Network is unreachable", "unreachable"),
    ("Connection closed", "closed by remote"),
    ("Connection reset", "closed by remote"),
)


@dataclass(frozen=True)
class Answer:
    node: str
    outcome: str  # REACHABLE, TIMED_OUT, "refused", "auth failed", ...
    status: Status
    seconds: float
    message: str  # ssh's last stderr line, or why it could not run


def classify(returncode: int, stderr: str) -> str:
    """How an ssh that exited on its own went, in a word or two."""
    if returncode == 0:
        return REACHABLE
    if returncode != 255:
        # ssh passes the remote command's status through: we got in, but `true` failed there
        # (a nologin shell, a full disk), which breaks a launch just as surely.
        return f"remote command exited {returncode}"
    for needle, outcome in _SSH_ERRORS:
        if needle.lower() in stderr.lower():
            return outcome
    return "ssh failed"


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:200] if lines else ""


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    # The group holds ssh and any ProxyCommand it started; the leader is not reaped yet, so
    # its pid (the group id) cannot have been reused.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def ask(argv: list[str], node: str, budget: float) -> Answer:
    """Run one ssh probe; it is killed, with its children, once `budget` seconds are spent."""
    started = time.monotonic()
    # stderr goes to a file, not a pipe: a child ssh leaves behind could hold a pipe open and
    # make reading it block past the budget.
    with tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                # No controlling terminal: ssh cannot ask for a password on /dev/tty even if
                # ssh_command overrides BatchMode, and the kill reaches its whole group.
                start_new_session=True,
            )
        except OSError as exc:
            return Answer(
                node, "cannot run ssh", Status.UNKNOWN, 0.0, f"{argv[0]}: {exc.strerror or exc}"
            )
        try:
            returncode = proc.wait(timeout=budget)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            seconds = time.monotonic() - started
            return Answer(node, TIMED_OUT, Status.CRITICAL, seconds, "killed: still running")
        seconds = time.monotonic() - started
        err.seek(max(0, err.seek(0, os.SEEK_END) - STDERR_TAIL_BYTES))
        stderr = err.read().decode("utf-8", "replace")
    outcome = classify(returncode, stderr)
    status = Status.OK if outcome == REACHABLE else Status.CRITICAL
    return Answer(node, outcome, status, seconds, _last_line(stderr))


def command(ssh_command: list[str], node: str, connect_timeout: int) -> list[str]:
    # The host comes after every option (ssh has no `--`); the config already refuses nodes
    # that start with "-", which ssh would read as an option.
    return [
        *ssh_command,
        "-o",
        "BatchMode=yes",
        "-o",
        f"ConnectTimeout={connect_timeout}",
        node,
        "true",
    ]


def describe(answer: Answer) -> str:
    """One line: how the node answered."""
    if answer.outcome == REACHABLE:
        return f"{answer.node}: reachable in {answer.seconds:.2f} s"
    tail = f": {answer.message}" if answer.message else ""
    return f"{answer.node}: {answer.outcome} after {answer.seconds:.1f} s{tail}"


def ask_all(nodes: Sequence[str], ssh_command: Sequence[str], ssh_timeout: float) -> list[Answer]:
    """Probe every node at once; the answers in the order of `nodes`."""
    if not nodes:
        return []
    # ssh takes whole seconds; the kill deadline keeps the probe inside ssh_timeout + margin.
    connect_timeout = max(1, math.ceil(ssh_timeout))
    budget = ssh_timeout + KILL_MARGIN_S
    with ThreadPoolExecutor(max_workers=len(nodes), thread_name_prefix="ssh") as pool:
        return list(
            pool.map(
                lambda node: ask(command(list(ssh_command), node, connect_timeout), node, budget),
                nodes,
            )
        )


def probe(ctx: Context) -> CheckResult:
    health = ctx.ws.config.health
    nodes = ctx.ws.config.ssh_nodes()  # [preflight] nodes and [health] nodes, each once
    if not nodes:
        return CheckResult("ssh", Status.OK, "no nodes configured")
    answers = ask_all(nodes, health.ssh_command, health.ssh_timeout)
    reachable = [a for a in answers if a.outcome == REACHABLE]
    metrics = [Metric("ssh_nodes_reachable", len(reachable)), Metric("ssh_nodes", len(nodes))]
    metrics += [Metric("ssh_latency", round(a.seconds, 3), "s", label=a.node) for a in reachable]
    details = [describe(a) for a in answers]
    status = worst(a.status for a in answers)
    if status == Status.OK:
        slowest = max(a.seconds for a in answers)
        summary = f"all {len(nodes)} node(s) reachable (slowest {slowest:.2f} s)"
        return CheckResult("ssh", status, summary, details, metrics=metrics)
    failed = [a for a in answers if a.outcome != REACHABLE]
    named = ", ".join(f"{a.node} ({a.outcome})" for a in failed[:SUMMARY_NAMES])
    more = f" and {len(failed) - SUMMARY_NAMES} more" if len(failed) > SUMMARY_NAMES else ""
    summary = f"{len(failed)}/{len(nodes)} node(s) unreachable: {named}{more}"
    return CheckResult("ssh", status, summary, details, metrics=metrics)
