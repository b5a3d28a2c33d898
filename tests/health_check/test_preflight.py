"""health-check --preflight: ssh to the nodes, input files, the ramdisk; all against real things."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from health_check.checks import inputs, ramdisk, ssh
from health_check.context import Context
from health_check.result import CheckResult, Status
from health_check.runner import run_checks
from tests.polling import wait_until
from trainguard.config import load_config
from trainguard.workspace import Workspace

REPO = Path(__file__).resolve().parent.parent.parent
FAKE_SSH = [sys.executable, str(REPO / "tests" / "children" / "fake_ssh.py")]
# -F /dev/null: the machine's own ssh config (a ProxyJump, a ControlMaster) stays out of it.
REAL_SSH = ["ssh", "-F", "/dev/null"]
NON_ROUTABLE = "10.255.255.1"


def context(tmp_path: Path, **health: Any) -> Context:
    """A workspace in tmp_path whose [health] section holds `health` (JSON values are TOML)."""
    lines = ["[health]", *(f"{key} = {json.dumps(value)}" for key, value in health.items())]
    path = tmp_path / "trainguard.toml"
    path.write_text("\n".join(lines) + "\n")
    return Context(Workspace(load_config(path, env={})))


def probe_within(
    probe: Callable[[Context], CheckResult], ctx: Context, seconds: float
) -> tuple[CheckResult, float]:
    """Run a probe in a thread so that a hang fails the test instead of freezing the suite."""
    box: list[CheckResult] = []
    started = time.monotonic()
    worker = threading.Thread(target=lambda: box.append(probe(ctx)), daemon=True)
    worker.start()
    worker.join(seconds)
    assert box, f"probe still running after {seconds} s"
    return box[0], time.monotonic() - started


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # closed again: nothing listens there


# --- ssh ---------------------------------------------------------------------------------


def test_ssh_without_nodes_is_ok(tmp_path: Path) -> None:
    result = ssh.probe(context(tmp_path))
    assert (result.status, result.summary) == (Status.OK, "no nodes configured")


@pytest.mark.skipif(shutil.which("ssh") is None, reason="needs the OpenSSH client")
def test_ssh_refused_port_is_critical_at_once(tmp_path: Path) -> None:
    port = free_port()
    ctx = context(tmp_path, nodes=["127.0.0.1"], ssh_command=[*REAL_SSH, "-p", str(port)])
    result, took = probe_within(ssh.probe, ctx, 10)
    assert result.status == Status.CRITICAL
    assert "127.0.0.1 (refused)" in result.summary
    assert "Connection refused" in result.details[0]
    assert took < 3


@pytest.mark.skipif(shutil.which("ssh") is None, reason="needs the OpenSSH client")
def test_ssh_silent_address_is_critical_within_its_budget(tmp_path: Path) -> None:
    ctx = context(tmp_path, nodes=[NON_ROUTABLE], ssh_command=REAL_SSH, ssh_timeout=1.0)
    result, took = probe_within(ssh.probe, ctx, 10)
    assert result.status == Status.CRITICAL
    # Where the sandbox has no route at all, ssh fails at once instead of timing out.
    assert any(f"({word})" in result.summary for word in ("timed out", "unreachable"))
    assert took < 1.0 + ssh.KILL_MARGIN_S + 1.0


def test_ssh_reachable_nodes_are_ok_and_asked_in_batch_mode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "argv.jsonl"
    monkeypatch.setenv("FAKE_SSH_LOG", str(log))
    nodes = ["reachable-a", "alice@reachable-b"]
    ctx = context(tmp_path, nodes=nodes, ssh_command=FAKE_SSH, ssh_timeout=5.0)
    result = ssh.probe(ctx)
    assert result.status == Status.OK, result.details
    assert result.summary.startswith("all 2 node(s) reachable")
    metrics = {(m.name, m.label): m.value for m in result.metrics}
    assert metrics[("ssh_nodes_reachable", "")] == 2
    assert {label for name, label in metrics if name == "ssh_latency"} == set(nodes)
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert sorted(call[-2] for call in calls) == sorted(nodes)
    for call in calls:
        assert call[-1] == "true"  # the host comes after every option, the command last
        assert call[:4] == ["-o", "BatchMode=yes", "-o", "ConnectTimeout=5"]


def test_ssh_reads_the_preflight_nodes_and_the_older_health_nodes_each_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "argv.jsonl"
    monkeypatch.setenv("FAKE_SSH_LOG", str(log))
    path = tmp_path / "trainguard.toml"
    path.write_text(
        f'[health]\nnodes = ["reachable-old", "reachable-both"]\n'
        f"ssh_command = {json.dumps(FAKE_SSH)}\n"
        '[preflight]\nnodes = ["reachable-new", "reachable-both"]\n'
    )
    result = ssh.probe(Context(Workspace(load_config(path, env={}))))
    assert result.summary.startswith("all 3 node(s) reachable"), result.details
    calls = [json.loads(line)[-2] for line in log.read_text().splitlines()]
    assert sorted(calls) == ["reachable-both", "reachable-new", "reachable-old"]


def test_ssh_auth_failure_is_critical_with_ssh_own_words(tmp_path: Path) -> None:
    ctx = context(tmp_path, nodes=["reachable-a", "denied-b"], ssh_command=FAKE_SSH)
    result = ssh.probe(ctx)
    assert result.status == Status.CRITICAL
    assert result.summary == "1/2 node(s) unreachable: denied-b (auth failed)"
    assert result.details[0].startswith("reachable-a: reachable in ")
    assert "Permission denied (publickey,password)." in result.details[1]


def test_hanging_ssh_is_killed_with_its_children_and_nodes_are_probed_at_once(
    tmp_path: Path,
) -> None:
    nodes = ["hang-a", "hang-b", "reachable-c"]
    ctx = context(tmp_path, nodes=nodes, ssh_command=FAKE_SSH, ssh_timeout=1.0)
    budget = 1.0 + ssh.KILL_MARGIN_S
    result, took = probe_within(ssh.probe, ctx, 10)
    assert result.status == Status.CRITICAL
    assert result.summary == "2/3 node(s) unreachable: hang-a (timed out), hang-b (timed out)"
    assert result.details[2].startswith("reachable-c: reachable in ")
    assert budget <= took < 2 * budget  # one budget for all nodes, not one per node
    # The forked children got SIGKILL too; they may take a moment to finish dying.
    wait_until(lambda: not _running_children(), message="the fake ssh's children to die")


def _running_children() -> list[psutil.Process]:
    alive = []
    for proc in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(proc)
    return alive


def test_missing_ssh_client_is_unknown(tmp_path: Path) -> None:
    ctx = context(tmp_path, nodes=["node1"], ssh_command=[str(tmp_path / "no-such-ssh")])
    result = ssh.probe(ctx)
    assert result.status == Status.UNKNOWN
    assert "cannot run ssh" in result.summary


@pytest.mark.parametrize(
    ("returncode", "stderr", "outcome"),
    [
        (0, "", "reachable"),
        (255, "Host key verification failed.\n", "host key rejected"),
        (255, "ssh: Could not resolve hostname x: Name or service not known\n", "unknown host"),
        (255, "Connection timed out during banner exchange\n", "timed out"),
        (255, "kex_exchange_identification: read: Connection reset by peer\n", "closed by remote"),
        (1, "This account is currently not available.\n", "remote command exited 1"),
    ],
)
def test_ssh_outcomes_are_named_from_exit_status_and_stderr(
    returncode: int, stderr: str, outcome: str
) -> None:
    assert ssh.classify(returncode, stderr) == outcome


# --- inputs ------------------------------------------------------------------------------


def test_readable_inputs_relative_absolute_and_globbed_are_ok(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    for name in ("train-0.bin", "train-1.bin", "vocab.txt"):
        (tmp_path / "data" / name).write_bytes(b"x" * 10)
    elsewhere = tmp_path / "elsewhere.bin"
    elsewhere.write_bytes(b"abc")
    ctx = context(tmp_path, inputs=["data/vocab.txt", str(elsewhere), "data/train-*.bin"])
    result = inputs.probe(ctx)
    assert result.status == Status.OK, result.details
    assert result.summary.startswith("all 4 input file(s) readable")
    assert "data/train-1.bin: 10 bytes" in result.details
    assert {m.name: m.value for m in result.metrics}["inputs_bytes"] == 33


def test_no_inputs_configured_is_ok(tmp_path: Path) -> None:
    assert inputs.probe(context(tmp_path)).summary == "no inputs configured"


def test_missing_input_and_unmatched_glob_are_critical(tmp_path: Path) -> None:
    (tmp_path / "broken").symlink_to(tmp_path / "gone")
    ctx = context(tmp_path, inputs=["nope.bin", "shards/*.bin", "broken"])
    result = inputs.probe(ctx)
    assert result.status == Status.CRITICAL
    assert result.details[0] == "nope.bin: missing"
    assert result.details[1] == "shards/*.bin: no file matches"
    assert result.details[2].startswith("broken: broken symlink to ")


def test_directory_where_a_file_is_expected_is_critical(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    result = inputs.probe(context(tmp_path, inputs=["data"]))
    assert result.status == Status.CRITICAL
    assert result.details == ["data: is a directory, not a file"]


def test_fifo_is_critical_and_never_opened_in_a_blocking_way(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe")  # nobody ever writes: a blocking open would wait forever
    result, took = probe_within(inputs.probe, context(tmp_path, inputs=["pipe"]), 5)
    assert result.status == Status.CRITICAL
    assert result.details == ["pipe: is a FIFO (named pipe), not a file"]
    assert took < 2


def test_empty_input_is_a_warning(tmp_path: Path) -> None:
    (tmp_path / "empty.bin").touch()
    result = inputs.probe(context(tmp_path, inputs=["empty.bin"]))
    assert result.status == Status.WARNING
    assert result.details == ["empty.bin: empty"]


@pytest.mark.skipif(not Path("/proc/self/mem").exists(), reason="needs Linux /proc")
def test_input_whose_read_fails_is_critical(tmp_path: Path) -> None:
    # A real file that stats and opens fine but fails on read (EIO), even for root.
    result = inputs.probe(context(tmp_path, inputs=["/proc/self/mem"]))
    assert result.status == Status.CRITICAL
    assert result.details[0].startswith("/proc/self/mem: unreadable: ")


CHILD_PROBE = """
import json, sys
from health_check.checks import inputs
from health_check.context import Context
from trainguard.config import load_config
from trainguard.workspace import Workspace
result = inputs.probe(Context(Workspace(load_config(sys.argv[1], env={}))))
print(json.dumps({"status": result.status.name, "details": result.details}))
"""
# Root reads any file through these two capabilities; without them chmod 000 holds for root too.
DROP_DAC = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-all"]


def test_input_without_read_permission_is_critical(tmp_path: Path) -> None:
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"weights")
    secret.chmod(0)
    ctx = context(tmp_path, inputs=["secret.bin"])
    if os.geteuid() != 0:
        result = inputs.probe(ctx)
        status, details = result.status.name, result.details
    else:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root, and no setpriv to drop the DAC override capability")
        if subprocess.run([*DROP_DAC, "true"], check=False).returncode != 0:
            pytest.skip("running as root, and setpriv may not drop capabilities here")
        child = subprocess.run(
            [*DROP_DAC, sys.executable, "-c", CHILD_PROBE, str(tmp_path / "trainguard.toml")],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        answer = json.loads(child.stdout)
        status, details = answer["status"], answer["details"]
    assert status == "CRITICAL"
    assert details == ["secret.bin: unreadable: Permission denied"]


# --- ramdisk -----------------------------------------------------------------------------


@pytest.fixture
def shm_file() -> Iterator[Path]:
    """A uniquely named file in the real /dev/shm, removed whatever the test does."""
    shm = Path("/dev/shm")
    if ramdisk.filesystem_type(shm) not in ramdisk.MEMORY_FILESYSTEMS:
        pytest.skip("/dev/shm is not a tmpfs on this machine")
    path = shm / f"trainguard-test-{uuid.uuid4().hex}"
    path.write_bytes(b"\0" * 4096)
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


def test_staged_file_in_real_dev_shm_is_ok_with_sizes_and_free_space(
    tmp_path: Path, shm_file: Path
) -> None:
    result = ramdisk.probe(context(tmp_path, ramdisk_files=[shm_file.name]))
    assert result.status == Status.OK, result.details
    assert result.summary.startswith("1 file(s) present")
    assert f"{shm_file.name}: 4096 bytes" in result.details
    metrics = {m.name: m.value for m in result.metrics}
    assert metrics["ramdisk_files_bytes"] == 4096
    assert metrics["ramdisk_free_gb"] >= 0


def test_file_missing_from_the_ramdisk_is_critical(tmp_path: Path, shm_file: Path) -> None:
    missing = f"{shm_file.name}-never-staged"
    result = ramdisk.probe(context(tmp_path, ramdisk_files=[shm_file.name, missing]))
    assert result.status == Status.CRITICAL
    assert result.summary == f"1/2 file(s) not usable: {missing} (missing)"


def test_ramdisk_on_disk_is_a_warning(tmp_path: Path) -> None:
    if ramdisk.filesystem_type(tmp_path) in ramdisk.MEMORY_FILESYSTEMS:
        pytest.skip("the tmp dir itself is on a tmpfs here")
    staged = tmp_path / "staged"
    staged.mkdir()
    (staged / "shard.bin").write_bytes(b"x")
    result = ramdisk.probe(context(tmp_path, ramdisk_dir="staged", ramdisk_files=["shard.bin"]))
    assert result.status == Status.WARNING
    assert "not a tmpfs: files there live on disk" in result.summary


def test_missing_ramdisk_dir_is_critical_only_when_files_are_expected_there(
    tmp_path: Path,
) -> None:
    with_files = ramdisk.probe(context(tmp_path, ramdisk_dir="nope", ramdisk_files=["a"]))
    assert with_files.status == Status.CRITICAL
    assert with_files.summary.endswith("nope: missing")
    without = ramdisk.probe(context(tmp_path, ramdisk_dir="nope"))
    assert without.status == Status.WARNING


def test_filesystem_type_takes_the_innermost_mount_and_decodes_spaces(tmp_path: Path) -> None:
    mounts = tmp_path / "mounts"
    mounts.write_text(
        "/dev/sda1 / ext4 rw 0 0\n"
        "tmpfs /dev/shm tmpfs rw 0 0\n"
        "/dev/sdb1 /mnt/my\\040data xfs rw 0 0\n"
        "tmpfs /mnt/my\\040data tmpfs rw 0 0\n"  # mounted over the xfs: hides it
    )
    assert ramdisk.filesystem_type(Path("/dev/shm/x"), mounts) == "tmpfs"
    assert ramdisk.filesystem_type(Path("/dev/shmx"), mounts) == "ext4"
    assert ramdisk.filesystem_type(Path("/mnt/my data/f"), mounts) == "tmpfs"
    assert ramdisk.filesystem_type(Path("/x"), tmp_path / "no-mounts") is None


# --- through the runner ------------------------------------------------------------------


def test_runner_finds_the_preflight_checks(tmp_path: Path) -> None:
    results = run_checks(context(tmp_path), ["ssh", "inputs"])
    assert [(r.name, r.status) for r in results] == [("ssh", Status.OK), ("inputs", Status.OK)]
