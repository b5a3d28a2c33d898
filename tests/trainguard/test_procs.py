"""Process identity, ownership and safe killing, against real processes."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import psutil
import pytest

from tests.polling import wait_until
from trainguard import process_tree, procs
from trainguard.process_tree import kill_tree, signal_tree, stop_process_tree
from trainguard.procs import (
    OWNER_ENV,
    ProcessIdentity,
    decode_raw_wait_status,
    decode_wait_status,
    descendants,
    find_marked,
    has_owner_mark,
    identify,
    is_ours,
    locate,
    locate_marked,
    matches,
    still_running,
    stopped_pids,
)
from trainguard.start_ticks import current_boot_id

CHILDREN = Path(__file__).resolve().parent.parent / "children"
TOKEN = "test-owner-token"
NS_LAST_PID = Path("/proc/sys/kernel/ns_last_pid")
needs_proc = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")


class Children:
    """Starts child scripts and, in teardown, kills whatever of them (and their orphans) is left."""

    def __init__(self) -> None:
        self.popens: list[subprocess.Popen[bytes]] = []
        self.orphans: list[psutil.Process] = []

    def argv(self, script: str, *args: object) -> list[str]:
        return [sys.executable, str(CHILDREN / script), *map(str, args)]

    def start(
        self,
        script: str,
        *args: object,
        token: str | None = None,
        new_session: bool = False,
        own_group: bool = False,
    ) -> subprocess.Popen[bytes]:
        argv = self.argv(script, *args)
        return self.run(argv, token=token, new_session=new_session, own_group=own_group)

    def run(
        self,
        argv: list[str],
        *,
        token: str | None = None,
        new_session: bool = False,
        own_group: bool = False,
    ) -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items() if k != OWNER_ENV}
        if token is not None:
            env[OWNER_ENV] = token
        popen = subprocess.Popen(
            argv,
            env=env,
            start_new_session=new_session,
            preexec_fn=os.setpgrp if own_group else None,
        )
        self.popens.append(popen)
        return popen

    def track_orphan(self, pid: int) -> psutil.Process:
        proc = psutil.Process(pid)
        self.orphans.append(proc)
        return proc

    def cleanup(self) -> None:
        # Kill everything first, then reap the Popens: their orphaned children are re-parented
        # to pytest (a subreaper), so that waiting for them ends as soon as they are dead.
        for proc in self.orphans:
            with contextlib.suppress(psutil.Error):
                proc.kill()  # psutil refuses a recycled pid
        for popen in self.popens:
            if popen.poll() is None:
                popen.send_signal(signal.SIGCONT)  # some tests freeze their children
                popen.kill()
        for popen in self.popens:
            popen.wait(timeout=10)
        psutil.wait_procs(self.orphans, timeout=10)


@pytest.fixture
def children() -> Iterator[Children]:
    kids = Children()
    try:
        yield kids
    finally:
        kids.cleanup()


@pytest.fixture(params=["pidfd", "psutil"])
def kill_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a killing test on both paths: pidfds (Linux >= 5.3) and the psutil fallback."""
    if request.param == "pidfd" and not process_tree._PIDFD:
        pytest.skip("pidfds are not available here")
    monkeypatch.setattr(process_tree, "_PIDFD", request.param == "pidfd")
    return str(request.param)


def ready_pid(path: Path, timeout: float = 10.0) -> int:
    wait_until(path.exists, timeout=timeout, message=f"ready file {path.name}")
    return int(path.read_text())


def start_ready(
    children: Children,
    script: str,
    name: str,
    *,
    token: str | None = None,
    new_session: bool = False,
    args: Sequence[object] = (),
) -> tuple[int, Path]:
    ready = Path(f"{name}.ready")
    popen = children.start(script, ready, *args, token=token, new_session=new_session)
    assert ready_pid(ready) == popen.pid
    return popen.pid, ready


def freeze(popen: subprocess.Popen[bytes]) -> None:
    """SIGSTOP our own child and wait until the kernel shows it stopped."""
    popen.send_signal(signal.SIGSTOP)
    wait_until(
        lambda: psutil.Process(popen.pid).status() == psutil.STATUS_STOPPED,
        message=f"pid {popen.pid} to stop",
    )


def is_zombie_or_gone(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


def alive(pid: int) -> bool:
    return not is_zombie_or_gone(pid)


def spawn_at_pid(children: Children, pid: int, argv: list[str]) -> subprocess.Popen[bytes]:
    """Start `argv` so that the kernel hands it `pid` again: a real pid reuse (root only)."""
    if not os.access(NS_LAST_PID, os.W_OK):
        pytest.skip("needs a writable /proc/sys/kernel/ns_last_pid (root) to recycle a pid")
    for _ in range(50):
        try:
            NS_LAST_PID.write_text(str(pid - 1))
        except OSError as exc:
            pytest.skip(f"cannot steer pid allocation: {exc}")
        popen = children.run(argv)
        if popen.pid == pid:
            return popen
        popen.kill()
        popen.wait(timeout=10)
    pytest.skip(f"pid {pid} was taken by someone else each time")


# --- identity ---------------------------------------------------------------------------------


def test_identity_of_a_live_child_matches_it(children: Children) -> None:
    pid, ready = start_ready(children, "sleeper.py", "child")
    identity = identify(pid)
    assert identity is not None
    assert identity.pid == pid
    assert identity.cmdline == tuple(children.argv("sleeper.py", ready))
    assert identity.uid == os.getuid()
    assert identity.create_time == psutil.Process(pid).create_time()
    assert still_running(identity)
    assert matches(identity, psutil.Process(pid))
    located = locate(identity)
    assert located is not None and located.pid == pid


def test_identity_survives_a_json_round_trip(children: Children) -> None:
    pid, _ = start_ready(children, "sleeper.py", "child")
    identity = identify(pid)
    assert identity is not None
    again = ProcessIdentity.from_json(json.loads(json.dumps(identity.to_json())))
    assert again == identity
    assert still_running(again)


def test_identity_stops_matching_once_its_process_has_exited(children: Children) -> None:
    popen = children.start("sleeper.py", "child.ready")
    ready_pid(Path("child.ready"))
    identity = identify(popen.pid)
    assert identity is not None
    popen.terminate()
    popen.wait(timeout=10)
    assert not still_running(identity)
    assert identify(popen.pid) is None


def test_a_recycled_pid_running_the_same_command_does_not_match(children: Children) -> None:
    first = children.start("sleeper.py", "child.ready")
    ready_pid(Path("child.ready"))
    identity = identify(first.pid)
    assert identity is not None
    first.kill()
    first.wait(timeout=10)
    Path("child.ready").unlink()

    second = spawn_at_pid(children, identity.pid, list(identity.cmdline))
    ready_pid(Path("child.ready"))
    newcomer = identify(second.pid)
    assert newcomer is not None
    assert (newcomer.pid, newcomer.cmdline, newcomer.uid) == (
        identity.pid,
        identity.cmdline,
        identity.uid,
    )
    assert not still_running(identity)
    assert not matches(identity, psutil.Process(second.pid))


def test_a_later_process_with_the_same_command_does_not_match(children: Children) -> None:
    # Portable stand-in for pid reuse: same cmdline and uid, only the start time differs.
    first = children.start("sleeper.py", "child.ready")
    ready_pid(Path("child.ready"))
    Path("child.ready").unlink()
    second = children.start("sleeper.py", "child.ready")
    ready_pid(Path("child.ready"))
    early, late = identify(first.pid), identify(second.pid)
    assert early is not None and late is not None
    assert early.cmdline == late.cmdline
    assert not matches(dataclasses.replace(early, pid=late.pid), psutil.Process(late.pid))


OTHER_BOOT = "00000000-0000-4000-8000-000000000000"


StepClock = Callable[[float], None]


@pytest.fixture
def step_clock(monkeypatch: pytest.MonkeyPatch) -> StepClock:
    """Make psutil's create_time read as it does after the wall clock was stepped (NTP).

    On Linux psutil adds the boot time from /proc/stat, which moves with such a step, to the
    kernel's tick count, which does not; only that addition is shifted here, never the clock.
    """
    create_time = psutil.Process.create_time

    def step(seconds: float) -> None:
        monkeypatch.setattr(psutil.Process, "create_time", lambda self: create_time(self) + seconds)

    return step


def recorded(pid: int) -> ProcessIdentity:
    """`pid`'s identity as a watchdog stored it in its state file and a later one reads it."""
    identity = identify(pid)
    assert identity is not None
    return ProcessIdentity.from_json(json.loads(json.dumps(identity.to_json())))


@needs_proc
def test_identify_records_the_kernels_start_ticks_and_boot_id(children: Children) -> None:
    pid, _ = start_ready(children, "sleeper.py", "child")
    identity = recorded(pid)
    stat = Path(f"/proc/{pid}/stat").read_text()
    assert identity.start_ticks == int(stat.rsplit(")", 1)[1].split()[19])
    assert identity.boot_id == Path("/proc/sys/kernel/random/boot_id").read_text().strip()


@needs_proc
def test_a_clock_step_after_recording_leaves_a_live_process_ours(
    children: Children, step_clock: StepClock
) -> None:
    pid, _ = start_ready(children, "sleeper.py", "child", token=TOKEN)
    identity = recorded(pid)
    step_clock(7.0)
    assert abs(psutil.Process(pid).create_time() - identity.create_time - 7.0) < 0.01

    assert matches(identity, psutil.Process(pid))
    assert still_running(identity)
    assert (found := locate(identity)) is not None and found.pid == pid
    assert (marked := locate_marked(identity, TOKEN)) is not None and marked.pid == pid
    again = identify(pid)  # recorded anew after the step: the kernel's part is unchanged
    assert again is not None and again.start_ticks == identity.start_ticks


@needs_proc
def test_a_clock_step_does_not_make_a_later_process_match(
    children: Children, step_clock: StepClock
) -> None:
    # The step lends the newcomer a create_time near the recorded one; the ticks still differ.
    first, _ = start_ready(children, "sleeper.py", "first")
    second, _ = start_ready(children, "sleeper.py", "second")
    early, late = recorded(first), recorded(second)
    assert early.start_ticks is not None and late.start_ticks is not None
    if early.start_ticks == late.start_ticks:
        pytest.skip("both children started within one clock tick")
    step_clock(early.create_time - late.create_time)
    assert abs(psutil.Process(second).create_time() - early.create_time) < 0.01
    forged = dataclasses.replace(early, pid=second, cmdline=late.cmdline)
    assert not matches(forged, psutil.Process(second))


@needs_proc
def test_an_identity_recorded_in_another_boot_is_never_ours(children: Children) -> None:
    pid, _ = start_ready(children, "sleeper.py", "child", token=TOKEN)
    identity = recorded(pid)
    assert current_boot_id() not in (None, OTHER_BOOT)
    # Same pid, start ticks, create_time, cmdline and uid, and our token: still another boot's.
    other = dataclasses.replace(identity, boot_id=OTHER_BOOT)
    assert not matches(other, psutil.Process(pid))
    assert locate(other) is None
    assert locate_marked(other, TOKEN) is None
    assert stop_process_tree(other, timeout=1).already_gone == (pid,)
    assert alive(pid)


def test_an_identity_from_an_older_watchdog_still_matches_by_create_time(
    children: Children,
) -> None:
    pid, _ = start_ready(children, "sleeper.py", "child")
    old = {k: v for k, v in identify_json(pid).items() if k not in ("start_ticks", "boot_id")}
    identity = ProcessIdentity.from_json(old)
    assert identity.start_ticks is None and identity.boot_id is None
    assert matches(identity, psutil.Process(pid))


def identify_json(pid: int) -> dict[str, object]:
    identity = identify(pid)
    assert identity is not None
    return identity.to_json()


def _ticks(identity: ProcessIdentity, delta: int) -> ProcessIdentity:
    assert identity.start_ticks is not None
    return dataclasses.replace(identity, start_ticks=identity.start_ticks + delta)


def _legacy(identity: ProcessIdentity, create_time_delta: float) -> ProcessIdentity:
    """As an older watchdog recorded it (no tick count): create_time decides."""
    return dataclasses.replace(
        identity,
        create_time=identity.create_time + create_time_delta,
        start_ticks=None,
        boot_id=None,
    )


TAMPERINGS = {
    "ticks+1": lambda i: _ticks(i, 1),
    "ticks-1": lambda i: _ticks(i, -1),
    "other-boot": lambda i: dataclasses.replace(i, boot_id="0" * 8 + "-0000-4000-8000-" + "0" * 12),
    "legacy-start+1s": lambda i: _legacy(i, 1.0),
    "legacy-start+1tick": lambda i: _legacy(i, 0.01),
    "legacy-start-1tick": lambda i: _legacy(i, -0.01),
    "cmdline": lambda i: dataclasses.replace(i, cmdline=(*i.cmdline[:-1], "other.ready")),
    "uid": lambda i: dataclasses.replace(i, uid=i.uid + 1),
}


@pytest.mark.parametrize("tamper", TAMPERINGS.values(), ids=TAMPERINGS.keys())
def test_a_tampered_identity_does_not_match(
    children: Children, tamper: Callable[[ProcessIdentity], ProcessIdentity]
) -> None:
    pid, _ = start_ready(children, "sleeper.py", "child")
    identity = identify(pid)
    assert identity is not None
    forged = tamper(identity)
    assert forged != identity
    assert not still_running(forged)
    assert not matches(forged, psutil.Process(pid))
    assert locate(forged) is None


def test_identify_returns_none_for_a_zombie_and_for_a_dead_pid(children: Children) -> None:
    popen = children.start("sleeper.py", "child.ready")
    ready_pid(Path("child.ready"))
    identity = identify(popen.pid)
    assert identity is not None
    os.kill(popen.pid, signal.SIGTERM)  # not reaped yet: a zombie
    wait_until(lambda: is_zombie_or_gone(popen.pid), message="child to become a zombie")
    assert psutil.Process(popen.pid).status() == psutil.STATUS_ZOMBIE
    assert identify(popen.pid) is None
    assert not still_running(identity)
    popen.wait(timeout=10)
    assert identify(popen.pid) is None


@pytest.mark.parametrize("pid", [0, -1, 2**31 - 1])
def test_identify_returns_none_for_impossible_pids(pid: int) -> None:
    assert identify(pid) is None
    assert descendants(pid) == []


def test_an_identity_cannot_name_a_process_group() -> None:
    with pytest.raises(ValueError, match="pid"):
        ProcessIdentity(pid=0, create_time=1.0, cmdline=(), uid=0)


GOOD = {"pid": 1234, "create_time": 1.7e9, "cmdline": ["python3", "train.py"], "uid": 1000}


@pytest.mark.parametrize(
    "data",
    [
        None,
        [],
        "1234",
        {},
        {k: v for k, v in GOOD.items() if k != "cmdline"},
        {**GOOD, "pid": "1234"},
        {**GOOD, "pid": True},
        {**GOOD, "pid": 0},
        {**GOOD, "pid": -5},
        {**GOOD, "pid": 12.0},
        {**GOOD, "create_time": "yesterday"},
        {**GOOD, "create_time": float("nan")},
        {**GOOD, "create_time": False},
        {**GOOD, "create_time": -1},
        {**GOOD, "cmdline": "python3 train.py"},
        {**GOOD, "cmdline": ["python3", 7]},
        {**GOOD, "uid": None},
        {**GOOD, "uid": -1},
        {**GOOD, "start_ticks": "901381"},
        {**GOOD, "start_ticks": -1},
        {**GOOD, "start_ticks": True},
        {**GOOD, "start_ticks": 901381.0},
        {**GOOD, "boot_id": 7},
        {**GOOD, "boot_id": ""},
        {**GOOD, "boot_id": "two words"},
        {**GOOD, "boot_id": "x" * 65},
        {**GOOD, "boot_id": ["00000000-0000-4000-8000-000000000000"]},
    ],
)
def test_from_json_rejects_garbage(data: object) -> None:
    with pytest.raises(ValueError, match="process identity"):
        ProcessIdentity.from_json(data)


def test_from_json_accepts_integral_times_and_ignores_unknown_keys() -> None:
    identity = ProcessIdentity.from_json({**GOOD, "create_time": 1_700_000_000, "note": "x"})
    assert identity == ProcessIdentity(1234, 1.7e9, ("python3", "train.py"), 1000)


@pytest.mark.parametrize(
    "kernel", [{}, {"start_ticks": None, "boot_id": None}], ids=["older-writer", "no-proc"]
)
def test_from_json_accepts_an_identity_without_the_kernels_start(
    kernel: dict[str, None],
) -> None:
    identity = ProcessIdentity.from_json({**GOOD, **kernel})
    assert (identity.start_ticks, identity.boot_id) == (None, None)


def test_from_json_reads_the_kernels_start() -> None:
    data = {**GOOD, "start_ticks": 901381, "boot_id": OTHER_BOOT}
    identity = ProcessIdentity.from_json(data)
    assert (identity.start_ticks, identity.boot_id) == (901381, OTHER_BOOT)
    assert identity.to_json() == data


# --- ownership --------------------------------------------------------------------------------


def test_find_marked_returns_only_processes_carrying_our_token(children: Children) -> None:
    marked, _ = start_ready(children, "sleeper.py", "marked", token=TOKEN)
    unmarked, _ = start_ready(children, "sleeper.py", "unmarked")
    foreign, _ = start_ready(children, "sleeper.py", "foreign", token="someone-else")

    found = [proc.pid for proc in find_marked(TOKEN, patterns=[r"sleeper\.py"])]
    assert found == [marked]
    assert [proc.pid for proc in find_marked(TOKEN)] == [marked]
    assert find_marked(TOKEN, patterns=[r"train\.py"]) == []
    assert is_ours(psutil.Process(marked), TOKEN)
    assert not is_ours(psutil.Process(unmarked), TOKEN)
    assert not is_ours(psutil.Process(foreign), TOKEN)
    assert not has_owner_mark(psutil.Process(marked), "")
    assert find_marked("") == []


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to start a process as another user")
def test_find_marked_leaves_another_users_process_alone(children: Children) -> None:
    sleep = shutil.which("sleep")
    assert sleep is not None
    nobody = subprocess.Popen(
        [sleep, "60"], env={OWNER_ENV: TOKEN}, user=65534, group=65534, extra_groups=[]
    )
    children.popens.append(nobody)  # Popen returns after exec: uid and environ are final
    proc = psutil.Process(nobody.pid)
    assert has_owner_mark(proc, TOKEN)  # the token is there; the uid is what rules it out
    assert not is_ours(proc, TOKEN)
    assert nobody.pid not in [p.pid for p in find_marked(TOKEN)]
    assert nobody.pid in [p.pid for p in find_marked(TOKEN, uid=65534)]


def test_find_marked_never_returns_the_caller() -> None:
    code = (
        "import os; from trainguard.procs import find_marked;"
        "print([p.pid for p in find_marked(os.environ['TRAINGUARD_OWNER'])])"
    )
    env = {**os.environ, OWNER_ENV: TOKEN}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, check=True)
    assert out.stdout.decode().strip() == "[]"


@pytest.mark.parametrize("child_lists", [True, False], ids=["child-lists", "psutil-scan"])
def test_descendants_lists_the_worker_of_a_daemon(
    children: Children, monkeypatch: pytest.MonkeyPatch, child_lists: bool
) -> None:
    if child_lists and not procs._HAS_CHILD_LISTS:
        pytest.skip("this kernel has no /proc/PID/task/TID/children")
    monkeypatch.setattr(procs, "_HAS_CHILD_LISTS", child_lists)
    worker_ready = Path("worker.ready")
    daemon = children.start("spawns_worker.py", "daemon.ready", worker_ready)
    ready_pid(Path("daemon.ready"))
    worker = ready_pid(worker_ready)
    children.track_orphan(worker)
    assert [proc.pid for proc in descendants(daemon.pid)] == [worker]
    # A child of a thread other than the main one, and a grandchild, are found too.
    code = (
        "import subprocess, sys, threading, time\n"
        "def spawn():\n"
        "    subprocess.Popen([sys.executable, '-c', 'import subprocess, sys, threading; "
        "subprocess.Popen([sys.executable, \\'-c\\', \\'import threading; "
        "threading.Event().wait()\\']); threading.Event().wait()'])\n"
        "threading.Thread(target=spawn).start()\n"
        "threading.Event().wait()\n"
    )
    parent = children.run([sys.executable, "-c", code])
    found = wait_until(
        lambda: len(d := descendants(parent.pid)) == 2 and d, message="two generations"
    )
    for proc in found:
        children.track_orphan(proc.pid)
    assert sorted(p.pid for p in found) == sorted(
        p.pid for p in psutil.Process(parent.pid).children(recursive=True)
    )
    assert descendants(999_999_999) == []


# --- killing ----------------------------------------------------------------------------------


def test_kill_tree_reports_a_polite_exit(children: Children, kill_path: str) -> None:
    popen = children.start("sleeper.py", "child.ready")
    ready_pid(Path("child.ready"))
    report = kill_tree([psutil.Process(popen.pid)], timeout=10)
    assert report.exited == (popen.pid,)
    assert (report.killed, report.already_gone, report.survivors, report.denied) == ((),) * 4
    assert report.returncodes[popen.pid] == -signal.SIGTERM
    assert report.stopped
    if kill_path == "pidfd":  # the owner of the child still reaps it and gets the real status
        assert popen.wait(timeout=10) == -signal.SIGTERM


def test_kill_tree_escalates_to_sigkill_when_sigterm_is_ignored(
    children: Children, kill_path: str
) -> None:
    pid, _ = start_ready(children, "ignores_sigterm.py", "stubborn")
    started = time.monotonic()
    report = kill_tree([psutil.Process(pid)], timeout=0.5)
    elapsed = time.monotonic() - started
    assert report.killed == (pid,)
    assert report.exited == ()
    assert report.returncodes[pid] == -signal.SIGKILL
    assert 0.5 <= elapsed < 0.5 + 5.0
    assert is_zombie_or_gone(pid)


def test_kill_tree_without_kill_after_leaves_the_survivor_alive(children: Children) -> None:
    pid, _ = start_ready(children, "ignores_sigterm.py", "stubborn")
    report = kill_tree([psutil.Process(pid)], timeout=0.2, kill_after=False)
    assert report.survivors == (pid,)
    assert not report.stopped
    assert alive(pid)


def test_kill_tree_reports_a_process_that_was_already_gone(
    children: Children, kill_path: str
) -> None:
    popen = children.start("sleeper.py", "child.ready")
    ready_pid(Path("child.ready"))
    proc = psutil.Process(popen.pid)
    popen.kill()
    popen.wait(timeout=10)
    report = kill_tree([proc], timeout=1)
    assert report.already_gone == (popen.pid,)
    assert report.exited == report.killed == ()


def test_kill_tree_never_signals_a_recycled_pid(children: Children, kill_path: str) -> None:
    first = children.start("sleeper.py", "child.ready")
    ready_pid(Path("child.ready"))
    stale = psutil.Process(first.pid)  # remembers the start time of `first`
    first.kill()
    first.wait(timeout=10)
    second = spawn_at_pid(children, first.pid, children.argv("sleeper.py", "other.ready"))
    ready_pid(Path("other.ready"))
    report = kill_tree([stale], timeout=1)
    assert report.already_gone == (second.pid,)
    assert alive(second.pid)


def test_kill_tree_never_signals_the_caller() -> None:
    report = kill_tree([psutil.Process()], timeout=1)
    assert report.denied == (os.getpid(),)


def test_stop_process_tree_leaves_a_mismatched_identity_alone(children: Children) -> None:
    pid, _ = start_ready(children, "sleeper.py", "child", new_session=True)
    identity = identify(pid)
    assert identity is not None
    forged = _ticks(identity, 1)
    report = stop_process_tree(forged, timeout=1)
    assert report.already_gone == (pid,)
    assert report.exited == report.killed == ()
    assert alive(pid)
    assert signal_tree(forged, signal.SIGTERM) == []
    assert alive(pid)


@pytest.mark.parametrize("new_session", [True, False], ids=["group-leader", "our-group"])
def test_stop_process_tree_stops_a_daemon_and_its_worker(
    children: Children, kill_path: str, new_session: bool
) -> None:
    daemon = children.start(
        "spawns_worker.py", "daemon.ready", "worker.ready", new_session=new_session
    )
    ready_pid(Path("daemon.ready"))
    worker = ready_pid(Path("worker.ready"))
    children.track_orphan(worker)
    identity = identify(daemon.pid)
    assert identity is not None
    report = stop_process_tree(identity, timeout=10)
    assert sorted(report.exited) == sorted([daemon.pid, worker])
    assert report.killed == report.survivors == ()
    assert report.returncodes[daemon.pid] == -signal.SIGTERM
    assert is_zombie_or_gone(daemon.pid) and is_zombie_or_gone(worker)


def test_stop_process_tree_kills_a_detached_orphan_carrying_the_owner_mark(
    children: Children, kill_path: str
) -> None:
    daemon = children.start("forks_orphan.py", "daemon.ready", "orphan.ready", token=TOKEN)
    ready_pid(Path("daemon.ready"))
    orphan = ready_pid(Path("orphan.ready"))
    children.track_orphan(orphan)
    bystander, _ = start_ready(children, "sleeper.py", "bystander")  # same script, no token
    identity = identify(daemon.pid)
    assert identity is not None
    assert orphan not in [proc.pid for proc in descendants(daemon.pid)]  # it escaped the tree
    assert [proc.pid for proc in find_marked(TOKEN, patterns=[r"sleeper\.py"])] == [orphan]

    report = stop_process_tree(identity, timeout=10, token=TOKEN)

    assert sorted(report.exited) == sorted([daemon.pid, orphan])
    assert report.killed == report.survivors == report.denied == ()
    assert is_zombie_or_gone(daemon.pid) and is_zombie_or_gone(orphan)
    assert alive(bystander)


def test_stop_process_tree_sweeps_marked_orphans_of_a_daemon_already_gone(
    children: Children,
) -> None:
    daemon = children.start("forks_orphan.py", "daemon.ready", "orphan.ready", token=TOKEN)
    ready_pid(Path("daemon.ready"))
    orphan = ready_pid(Path("orphan.ready"))
    children.track_orphan(orphan)
    identity = identify(daemon.pid)
    assert identity is not None
    daemon.kill()
    daemon.wait(timeout=10)
    report = stop_process_tree(identity, timeout=10, token=TOKEN)
    assert report.already_gone == (daemon.pid,)
    assert report.exited == (orphan,)


def test_stop_process_tree_kills_a_marked_worker_born_during_the_grace_period(
    children: Children,
) -> None:
    daemon = children.start("respawns_worker.py", "daemon.ready", "late.ready", token=TOKEN)
    ready_pid(Path("daemon.ready"))
    identity = identify(daemon.pid)
    assert identity is not None
    report = stop_process_tree(identity, timeout=10, token=TOKEN)
    for pid in report.killed:
        children.track_orphan(pid)
    assert report.exited == (daemon.pid,)
    assert report.returncodes[daemon.pid] == 0
    (late,) = report.killed
    assert late != daemon.pid
    assert report.returncodes[late] == -signal.SIGKILL
    assert is_zombie_or_gone(late)


def test_stopped_pids_lists_the_stopped_child_only(children: Children) -> None:
    frozen = children.start("exits_on_sigterm.py", "frozen.ready")
    running = children.start("exits_on_sigterm.py", "running.ready")
    gone = children.start("exits_on_sigterm.py", "gone.ready")
    for name in ("frozen", "running", "gone"):
        ready_pid(Path(f"{name}.ready"))
    gone.kill()
    gone.wait(timeout=10)
    freeze(frozen)
    assert stopped_pids([running.pid, frozen.pid, gone.pid]) == [frozen.pid]
    frozen.send_signal(signal.SIGCONT)
    wait_until(lambda: stopped_pids([frozen.pid]) == [], message="the child to continue")


def test_kill_tree_continues_a_stopped_process_so_that_its_sigterm_handler_runs(
    children: Children, kill_path: str
) -> None:
    popen = children.start("exits_on_sigterm.py", "frozen.ready")
    ready_pid(Path("frozen.ready"))
    freeze(popen)
    # A long grace period: without SIGCONT the process would sit it out and be SIGKILLed.
    report = kill_tree([psutil.Process(popen.pid)], sig=signal.SIGTERM, timeout=30)
    assert report.exited == (popen.pid,)
    assert report.killed == report.survivors == ()
    assert report.returncodes[popen.pid] == 0  # its handler's exit, not a signal


@pytest.mark.parametrize("new_session", [True, False], ids=["group-leader", "our-group"])
def test_stop_process_tree_continues_a_stopped_daemon_so_that_its_sigterm_handler_runs(
    children: Children, kill_path: str, new_session: bool
) -> None:
    popen = children.start("exits_on_sigterm.py", "frozen.ready", new_session=new_session)
    ready_pid(Path("frozen.ready"))
    freeze(popen)
    identity = identify(popen.pid)
    assert identity is not None
    report = stop_process_tree(identity, sig=signal.SIGTERM, timeout=30)
    assert report.exited == (popen.pid,)
    assert report.killed == report.survivors == ()
    assert report.returncodes[popen.pid] == 0


def test_a_stop_signal_is_not_undone_by_sigcont(children: Children, kill_path: str) -> None:
    # SIGCONT discards a pending SIGTSTP: sent after it, the process would never stop.
    # The child leads its own group in pytest's session: the kernel discards SIGTSTP sent to
    # an orphaned group, which pytest's own group is when pytest runs under setsid (some CI).
    popen = children.start("exits_on_sigterm.py", "child.ready", own_group=True)
    ready_pid(Path("child.ready"))
    report = kill_tree(
        [psutil.Process(popen.pid)], sig=signal.SIGTSTP, timeout=0.2, kill_after=False
    )
    assert report.survivors == (popen.pid,)
    wait_until(lambda: stopped_pids([popen.pid]) == [popen.pid], message="the child to stop")


def test_signal_tree_signals_the_daemon_and_its_worker(children: Children) -> None:
    daemon = children.start("spawns_worker.py", "daemon.ready", "worker.ready")
    ready_pid(Path("daemon.ready"))
    worker = ready_pid(Path("worker.ready"))
    children.track_orphan(worker)
    identity = identify(daemon.pid)
    assert identity is not None
    assert sorted(signal_tree(identity, signal.SIGTERM)) == sorted([daemon.pid, worker])
    assert daemon.wait(timeout=10) == -signal.SIGTERM
    wait_until(lambda: is_zombie_or_gone(worker), message="worker to end")


# --- how a process ended ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("returncode", "words"),
    [
        (0, "exited with code 0"),
        (1, "exited with code 1"),
        (-11, "terminated by SIGSEGV"),
        (-9, "terminated by SIGKILL"),
        (-15, "terminated by SIGTERM"),
        (-99, "terminated by signal 99"),
        (128, "exited with code 128"),
        (130, "exited with code 130 (128+SIGINT: interrupted)"),
        (134, "exited with code 134 (128+SIGABRT: aborted)"),
        (137, "exited with code 137 (128+SIGKILL: killed)"),
        (139, "exited with code 139 (128+SIGSEGV: segmentation fault)"),
        (143, "exited with code 143 (128+SIGTERM: terminated)"),
        (138, "exited with code 138 (128+SIGUSR1)"),
        (255, "exited with code 255"),
        (300, "exited with code 300"),
    ],
)
def test_decode_wait_status_says_how_a_process_ended(returncode: int, words: str) -> None:
    assert decode_wait_status(returncode) == words


@pytest.mark.parametrize(
    ("status", "words"),
    [
        (0, "exited with code 0"),
        (3 << 8, "exited with code 3"),
        (137 << 8, "exited with code 137 (128+SIGKILL: killed)"),
        (signal.SIGKILL, "terminated by SIGKILL"),
        (signal.SIGSEGV | 0x80, "terminated by SIGSEGV (core dumped)"),
        ((signal.SIGSTOP << 8) | 0x7F, "stopped by SIGSTOP"),
        (0xFFFF, "continued"),
    ],
)
def test_decode_raw_wait_status_says_how_a_process_ended(status: int, words: str) -> None:
    assert decode_raw_wait_status(status) == words


def test_decode_raw_wait_status_of_a_real_crash() -> None:
    code = "import os, signal; os.kill(os.getpid(), signal.SIGABRT)"
    pid = os.posix_spawn(sys.executable, [sys.executable, "-c", code], dict(os.environ))
    _, status = os.waitpid(pid, 0)
    assert decode_raw_wait_status(status).startswith("terminated by SIGABRT")
