"""`phase-pipeline run` end to end, real processes: a phase killed, failing, timing out or
stopped at each point, then resumed; only what is left runs (each phase's runs counted)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.polling import wait_until
from tests.ssh_targets import needs_ssh, refusing_node

SCRIPT = shutil.which("phase-pipeline", path=str(Path(sys.executable).parent))
PHASES = ["training", "stats", "probe", "aggregate"]

# One phase. Files in the pipeline's folder steer it: hang-NAME (waits, with a child, until
# killed), fail-NAME (a CUDA OOM, exit 1), no-output-NAME (exit 0 without its output).
PHASE = """
import json, os, pathlib, subprocess, sys, threading
name = sys.argv[1]
here = pathlib.Path.cwd()
run = pathlib.Path(os.environ["TRAINGUARD_RUN_DIR"])
with open(here / "calls.txt", "a") as fh:
    fh.write(name + "\\n")
if (here / f"hang-{name}").exists():
    child = subprocess.Popen([sys.executable, "-c", "import threading; threading.Event().wait()"])
    (here / f"started-{name}").write_text(json.dumps([os.getpid(), child.pid]))
    threading.Event().wait()
if (here / f"orphan-{name}").exists():  # leaves a child behind, in a session of its own
    child = subprocess.Popen([sys.executable, "-c", "import threading; threading.Event().wait()"],
                             start_new_session=True)
    (here / f"started-{name}").write_text(json.dumps([child.pid]))
if (here / f"fail-{name}").exists():
    print("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", file=sys.stderr)
    sys.exit(1)
if name == "training":
    epoch = sum(1 for line in open(here / "calls.txt") if line.strip() == "training")
    folder = run / "checkpoint" / f"epoch{epoch}"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"weights")
if not (here / f"no-output-{name}").exists():
    (run / f"{name}.json").write_text(json.dumps({
        "argv": sys.argv[1:],
        "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "checkpoint": os.environ.get("TRAINGUARD_CHECKPOINT"),
        "phase": os.environ.get("TRAINGUARD_PHASE"),
        "batch_size": os.environ.get("BATCH_SIZE"),
    }))
"""


def pipeline_toml(*, probe_timeout: float = 0, training_inputs: str = "") -> str:
    return f"""
name = "seedexp"
version = "3.1.0"
[[phases]]
name = "training"
command = ["{{python}}", "phase.py", "training"]
outputs = ["training.json"]
provides_checkpoint = "checkpoint/epoch*"
inputs = [{training_inputs}]
[[phases]]
name = "stats"
command = ["{{python}}", "phase.py", "stats", "{{checkpoint}}"]
depends_on = ["training"]
outputs = ["stats.json"]
[[phases]]
name = "probe"
command = ["{{python}}", "phase.py", "probe", "{{checkpoint}}"]
depends_on = ["training"]
outputs = ["probe.json"]
timeout = {probe_timeout}
[[phases]]
name = "aggregate"
command = ["{{python}}", "phase.py", "aggregate"]
depends_on = ["stats", "probe"]
outputs = ["aggregate.json"]
"""


class Pipe:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.runners: list[subprocess.Popen[str]] = []

    def cli(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        assert SCRIPT
        return subprocess.run([SCRIPT, *args], cwd=self.folder, capture_output=True, text=True,
                              timeout=120, check=False, env=env)  # fmt: skip

    def start(self, *args: str) -> subprocess.Popen[str]:
        assert SCRIPT
        runner = subprocess.Popen([SCRIPT, *args], cwd=self.folder, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)  # fmt: skip
        self.runners.append(runner)
        return runner

    @property
    def state_file(self) -> Path:
        [run_dir] = (self.folder / "runs").iterdir()
        return run_dir / ".experiment_state"

    @property
    def run_dir(self) -> Path:
        return self.state_file.parent

    def status(self) -> dict[str, Any]:
        done = self.cli("status", str(self.state_file), "--json")
        assert done.returncode == 0, done.stderr
        result: dict[str, Any] = json.loads(done.stdout)
        return result

    def phases(self) -> dict[str, str]:
        return {p["name"]: p["status"] for p in self.status()["phases"]}

    def calls(self) -> Counter[str]:
        path = self.folder / "calls.txt"
        return Counter(path.read_text().split()) if path.exists() else Counter()

    def hung_pids(self, name: str) -> list[int]:
        """The hung phase's process and its child, once it has started them."""
        path = self.folder / f"started-{name}"
        pids: list[int] = json.loads(wait_until(
            lambda: path.exists() and path.read_text(), timeout=60, message=f"{name} to hang",
        ))  # fmt: skip
        return pids

    def resume(self) -> subprocess.CompletedProcess[str]:
        return self.cli("run", "PIPELINE.toml", "--resume", str(self.state_file))


def _gone(pids: list[int]) -> bool:
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                return False
        except psutil.NoSuchProcess:
            continue
    return True


@pytest.fixture
def pipe(tmp_path: Path) -> Iterator[Pipe]:
    (tmp_path / "phase.py").write_text(PHASE)
    (tmp_path / "PIPELINE.toml").write_text(pipeline_toml())
    p = Pipe(tmp_path)
    try:
        yield p
    finally:
        for runner in p.runners:
            if runner.poll() is None:
                runner.kill()
            if runner.stdout is not None and not runner.stdout.closed:
                runner.communicate()
        for started in tmp_path.glob("started-*"):  # a hung phase a failed test left
            for pid in json.loads(started.read_text()):
                try:
                    proc = psutil.Process(pid)
                    if (
                        "threading.Event().wait()" in " ".join(proc.cmdline())
                        or str(tmp_path) in proc.cwd()
                    ):
                        proc.kill()
                except psutil.Error:
                    pass


def _once_but(name: str, times: int, upto: list[str] = PHASES) -> Counter[str]:
    return Counter({p: times if p == name else 1 for p in upto})


@pytest.mark.parametrize("phase", PHASES)
def test_a_runner_killed_during_any_phase_resumes_there_and_never_repeats_a_completed_one(
    pipe: Pipe, phase: str
) -> None:
    (pipe.folder / f"hang-{phase}").touch()
    runner = pipe.start("run", "PIPELINE.toml")
    pids = pipe.hung_pids(phase)
    runner.kill()  # SIGKILL: no chance to write anything
    runner.communicate(timeout=60)
    phases = pipe.phases()
    before = PHASES[: PHASES.index(phase)]
    assert phases[phase] == "in_progress", phases  # never taken as done
    assert all(phases[p] == "completed" for p in before), phases
    (pipe.folder / f"hang-{phase}").unlink()

    done = pipe.resume()
    assert done.returncode == 0, done.stdout + done.stderr
    assert "left by a dead runner" in done.stdout  # the hung phase and its child, stopped
    wait_until(lambda: _gone(pids), timeout=30, message="the killed run's processes to end")
    assert set(pipe.phases().values()) == {"completed"}
    assert pipe.calls() == _once_but(phase, 2)


def test_a_failing_phase_stops_its_dependants_only_and_the_printed_resume_command_works(
    pipe: Pipe,
) -> None:
    (pipe.folder / "fail-probe").touch()
    done = pipe.cli("run", "PIPELINE.toml")
    assert done.returncode == 1
    assert pipe.phases() == {
        "training": "completed", "stats": "completed", "probe": "failed", "aggregate": "pending",
    }  # fmt: skip
    out = done.stdout
    assert "FAILURE RECOVERY INSTRUCTIONS" in out
    assert "Phase probe failed [cuda_oom]" in out and "CUDA out of memory" in out
    assert "Phase aggregate did not run: it depends on probe." in out
    lines = out.splitlines()
    command = lines[lines.index("Fix the cause, then resume with:") + 1].split()
    assert command[:3] == ["phase-pipeline", "run", "PIPELINE.toml"]
    assert command[3] == "--resume" and Path(pipe.folder, command[4]) == pipe.state_file
    plan = "\n".join(lines[lines.index("That resume will:") + 1 :])
    assert "skip  training" in plan and "run   probe" in plan and "run   aggregate" in plan
    status = pipe.status()
    assert status["failure_count"] == 1 and status["last_failure"] == "probe"
    [probe] = [p for p in status["phases"] if p["name"] == "probe"]
    assert "CUDA out of memory" in probe["error"]

    (pipe.folder / "fail-probe").unlink()
    again = pipe.cli(*command[1:])  # exactly what the block said
    assert again.returncode == 0, again.stdout + again.stderr
    assert pipe.calls() == _once_but("probe", 2)
    assert set(pipe.phases().values()) == {"completed"}


def test_a_phase_past_its_timeout_is_killed_with_its_children_failed_and_rerun_on_resume(
    pipe: Pipe,
) -> None:
    (pipe.folder / "PIPELINE.toml").write_text(pipeline_toml(probe_timeout=1))
    (pipe.folder / "hang-probe").touch()
    done = pipe.cli("run", "PIPELINE.toml")
    assert done.returncode == 1, done.stdout
    pids = pipe.hung_pids("probe")
    wait_until(lambda: _gone(pids), timeout=30, message="the timed-out phase's tree to end")
    assert pipe.phases()["probe"] == "failed"
    assert "Phase probe failed [timeout]: timed out after 1 s" in done.stdout
    (pipe.folder / "hang-probe").unlink()
    assert pipe.resume().returncode == 0
    assert pipe.calls() == _once_but("probe", 2)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_or_ctrl_c_stops_the_phase_keeps_the_state_and_exits_130(
    pipe: Pipe, signum: signal.Signals
) -> None:
    (pipe.folder / "hang-probe").touch()
    runner = pipe.start("run", "PIPELINE.toml")
    pids = pipe.hung_pids("probe")
    runner.send_signal(signum)
    out, _ = runner.communicate(timeout=60)
    assert runner.returncode == 130, out
    assert _gone(pids)  # stopped before the runner exited
    assert "INTERRUPTED" in out and "--resume" in out
    assert pipe.phases() == {
        "training": "completed", "stats": "completed", "probe": "pending", "aggregate": "pending",
    }  # fmt: skip
    assert pipe.status()["failure_count"] == 0  # a preemption is no failure
    (pipe.folder / "hang-probe").unlink()
    assert pipe.resume().returncode == 0
    assert pipe.calls() == _once_but("probe", 2)


def test_a_phase_that_exits_0_without_its_outputs_is_failed_not_completed(pipe: Pipe) -> None:
    (pipe.folder / "no-output-stats").touch()
    done = pipe.cli("run", "PIPELINE.toml")
    assert done.returncode == 1
    phases = pipe.phases()
    assert phases["stats"] == "failed" and phases["aggregate"] == "pending", phases
    assert phases["probe"] == "completed"  # it does not depend on stats
    assert "[missing_outputs]" in done.stdout and "stats.json" in done.stdout
    [stats] = [p for p in pipe.status()["phases"] if p["name"] == "stats"]
    assert "outputs are missing: stats.json" in stats["error"]  # the ledger says so too


def test_a_phase_providing_a_checkpoint_must_leave_one(pipe: Pipe) -> None:
    (pipe.folder / "PIPELINE.toml").write_text(
        pipeline_toml().replace('"checkpoint/epoch*"', '"ckpt/epoch*"')
    )
    done = pipe.cli("run", "PIPELINE.toml")
    assert done.returncode == 1
    assert pipe.phases()["training"] == "failed"
    assert "no checkpoint matches ckpt/epoch*" in done.stdout
    assert pipe.calls() == Counter({"training": 1})  # everything else depends on it


def test_hand_edits_are_honoured_completed_to_pending_reruns_failed_to_completed_skips(
    pipe: Pipe,
) -> None:
    assert pipe.cli("run", "PIPELINE.toml").returncode == 0
    text = pipe.state_file.read_text()
    pipe.state_file.write_text(text.replace("stats=completed", "stats=pending"))
    assert pipe.resume().returncode == 0
    assert pipe.calls() == _once_but("stats", 2)  # and aggregate not again

    (pipe.folder / "fail-probe").touch()
    pipe.state_file.write_text(
        pipe.state_file.read_text().replace("probe=completed", "probe=pending")
    )
    assert pipe.resume().returncode == 1
    assert pipe.phases()["probe"] == "failed"
    pipe.state_file.write_text(
        pipe.state_file.read_text().replace("probe=failed", "probe=completed")
    )
    calls = pipe.calls()
    done = pipe.resume()
    assert done.returncode == 0, done.stdout
    assert pipe.calls() == calls  # nothing was left to run
    assert "all completed" in done.stdout


def test_mark_sets_a_phase_and_says_what_depends_on_it(pipe: Pipe) -> None:
    assert pipe.cli("run", "PIPELINE.toml").returncode == 0
    done = pipe.cli("mark", str(pipe.state_file), "training", "pending")
    assert done.returncode == 0
    assert "training: completed -> pending" in done.stdout
    assert "stats, probe, aggregate" in done.stdout  # they stay completed unless marked too
    assert pipe.phases()["training"] == "pending"
    assert pipe.resume().returncode == 0
    assert pipe.calls() == _once_but("training", 2)
    # the new training's checkpoint is the one recorded now
    assert pipe.status()["checkpoint_path"] == str(pipe.run_dir / "checkpoint" / "epoch2")
    bad = pipe.cli("mark", str(pipe.state_file), "nope", "completed")
    assert bad.returncode == 2 and "no phase 'nope'" in bad.stderr


def test_the_checkpoint_placeholder_is_the_one_training_recorded(pipe: Pipe) -> None:
    assert pipe.cli("run", "PIPELINE.toml").returncode == 0
    checkpoint = str(pipe.run_dir / "checkpoint" / "epoch1")
    stats = json.loads((pipe.run_dir / "stats.json").read_text())
    assert stats["argv"] == ["stats", checkpoint] and stats["checkpoint"] == checkpoint
    assert stats["phase"] == "stats"
    assert f"checkpoint_path={checkpoint}\n" in pipe.state_file.read_text()


def test_start_from_a_checkpoint_without_training(pipe: Pipe, tmp_path: Path) -> None:
    given = tmp_path / "pretrained" / "epoch9"
    given.mkdir(parents=True)
    done = pipe.cli("run", "PIPELINE.toml", "--checkpoint", str(given), "--phase", "stats")
    assert done.returncode == 0, done.stdout + done.stderr
    assert pipe.calls() == Counter({"stats": 1})
    assert json.loads((pipe.run_dir / "stats.json").read_text())["argv"] == ["stats", str(given)]
    assert pipe.phases() == {
        "training": "completed", "stats": "completed", "probe": "pending", "aggregate": "pending",
    }  # fmt: skip
    missing = pipe.cli("run", "PIPELINE.toml", "--checkpoint", str(tmp_path / "nope"))
    assert missing.returncode == 2 and "no such file" in missing.stderr


def test_phase_refuses_when_a_dependency_is_not_completed(pipe: Pipe) -> None:
    done = pipe.cli("run", "PIPELINE.toml", "--phase", "aggregate")
    assert done.returncode == 2
    assert "--phase aggregate: it depends on stats, which is pending" in done.stderr
    assert not (pipe.folder / "runs").exists() and not pipe.calls()
    unknown = pipe.cli("run", "PIPELINE.toml", "--phase", "nope")
    assert unknown.returncode == 2 and "phases: training, stats, probe, aggregate" in unknown.stderr
    # named together with what it needs, it runs them in order
    both = pipe.cli("run", "PIPELINE.toml", "--phase", "stats", "--phase", "training")
    assert both.returncode == 0
    assert pipe.calls() == Counter({"training": 1, "stats": 1})


def test_dry_run_prints_the_plan_and_runs_nothing(pipe: Pipe) -> None:
    done = pipe.cli("run", "PIPELINE.toml", "--dry-run")
    assert done.returncode == 0
    assert "4 would run; nothing was started (--dry-run)" in done.stdout
    assert not (pipe.folder / "runs").exists() and not pipe.calls()
    (pipe.folder / "fail-probe").touch()
    assert pipe.cli("run", "PIPELINE.toml").returncode == 1
    before = pipe.state_file.read_bytes()
    calls = pipe.calls()
    plan = pipe.cli("run", "PIPELINE.toml", "--resume", str(pipe.state_file), "--dry-run")
    assert plan.returncode == 0
    assert "skip  stats      (completed)" in plan.stdout
    assert "run   probe      (failed: run again)" in plan.stdout
    assert f"phase.py probe {pipe.run_dir / 'checkpoint' / 'epoch1'}" in plan.stdout
    assert pipe.state_file.read_bytes() == before and pipe.calls() == calls


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (b"", "no [metadata] section"),
        (b"\x00\xff\xfe garbage \x89PNG", ":1: not UTF-8 text"),
        (b"name=seedexp\n", ":1: 'name=seedexp' comes before any [section]"),
        (None, "no [phases] section"),  # the real file cut after its first lines
        (None, "cannot parse"),  # ... cut in the middle of a line
        (None, ":8: training='done': must be one of pending, in_progress, completed, failed"),
        (None, ":8: no phase 'trainig' in the pipeline"),
    ],
)
def test_a_truncated_or_garbage_state_file_is_a_one_line_error_and_left_as_it_is(
    pipe: Pipe, content: bytes | None, says: str
) -> None:
    (pipe.folder / "fail-stats").touch()
    pipe.cli("run", "PIPELINE.toml")
    good = pipe.state_file.read_bytes()
    if content is None:
        if "[phases]" in says:
            content = good[: good.index(b"[phases]")]
        elif "cannot parse" in says:
            content = good[: good.index(b"start_time") + 7]
        elif "'done'" in says:
            content = good.replace(b"training=completed", b"training=done")
        else:
            content = good.replace(b"training=completed", b"trainig=completed")
    pipe.state_file.write_bytes(content)
    calls = pipe.calls()
    for args in (("run", "PIPELINE.toml", "--resume", str(pipe.state_file)),
                 ("status", str(pipe.state_file)),
                 ("mark", str(pipe.state_file), "stats", "pending")):  # fmt: skip
        done = pipe.cli(*args)
        if args[0] != "run" and "pipeline" in says:
            assert done.returncode == 0  # status and mark do not read PIPELINE.toml
            pipe.state_file.write_bytes(content)
            continue
        assert done.returncode == 78, (args, done.stdout, done.stderr)
        assert says in done.stderr and "Traceback" not in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert pipe.state_file.read_bytes() == content  # left as it is
    assert pipe.calls() == calls
    as_json = pipe.cli("status", str(pipe.state_file), "--json")
    if as_json.returncode == 78:
        assert json.loads(as_json.stdout)["exit_code"] == 78


def test_a_bad_pipeline_file_is_exit_78_naming_each_key(pipe: Pipe) -> None:
    (pipe.folder / "PIPELINE.toml").write_text("""
name = "x y"
[[phases]]
name = "a"
command = ["{python}", "{nope}"]
depends_on = ["b"]
timeout = -1
[[phases]]
name = "b"
command = ["true"]
depends_on = ["a"]
colour = "red"
""")
    done = pipe.cli("run", "PIPELINE.toml")
    assert done.returncode == 78
    lines = done.stderr.strip().splitlines()
    for expected in ("name: must be letters", "unknown placeholder {nope}",
                     "timeout: must be seconds", "phases[1] (b).colour: unknown key"):  # fmt: skip
        assert any(expected in line for line in lines), (expected, lines)
    assert "Traceback" not in done.stderr
    (pipe.folder / "PIPELINE.toml").write_text(
        'name = "x"\n[[phases]]\nname = "a"\ncommand = ["true"]\ndepends_on = ["b"]\n'
        '[[phases]]\nname = "b"\ncommand = ["true"]\ndepends_on = ["a"]\n'
    )
    cycle = pipe.cli("run", "PIPELINE.toml")
    assert cycle.returncode == 78 and "goes round in a circle among: a, b" in cycle.stderr


def test_a_missing_input_refuses_the_phase_before_it_starts_exit_69(pipe: Pipe) -> None:
    (pipe.folder / "PIPELINE.toml").write_text(pipeline_toml(training_inputs='"data/train.bin"'))
    done = pipe.cli("run", "PIPELINE.toml")
    assert done.returncode == 69, done.stdout + done.stderr
    assert "PREFLIGHT REFUSED phase training" in done.stdout
    assert "data/train.bin: missing" in done.stdout
    assert not pipe.calls() and pipe.phases()["training"] == "pending"
    (pipe.folder / "data").mkdir()
    (pipe.folder / "data" / "train.bin").write_bytes(b"tokens")
    assert pipe.resume().returncode == 0
    assert pipe.calls() == Counter(dict.fromkeys(PHASES, 1))


@needs_ssh
def test_an_unreachable_node_refuses_the_phase_exit_69_and_the_resume_goes_on(
    pipe: Pipe,
) -> None:
    with refusing_node() as node:
        (pipe.folder / "trainguard.toml").write_text(
            f'[health]\nssh_timeout = 3\n[preflight]\nnodes = ["{node}"]\n'
        )
        done = pipe.cli("run", "PIPELINE.toml")
    assert done.returncode == 69, done.stdout + done.stderr
    assert f"PREFLIGHT REFUSED phase training (nothing was started): ssh: {node}: refused" in (
        done.stdout
    )
    assert not pipe.calls() and pipe.phases()["training"] == "pending"
    (pipe.folder / "trainguard.toml").write_text("")
    resumed = pipe.resume()
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert pipe.calls() == Counter(dict.fromkeys(PHASES, 1))


def test_a_second_runner_on_the_same_run_exits_75(pipe: Pipe) -> None:
    (pipe.folder / "hang-training").touch()
    runner = pipe.start("run", "PIPELINE.toml")
    pipe.hung_pids("training")
    second = pipe.resume()
    assert second.returncode == 75, second.stdout + second.stderr
    assert "another runner" in second.stderr
    mark = pipe.cli("mark", str(pipe.state_file), "training", "completed")
    assert mark.returncode == 75
    assert "training=in_progress" in pipe.state_file.read_text()
    runner.send_signal(signal.SIGTERM)
    runner.communicate(timeout=60)
    assert runner.returncode == 130


def test_a_phase_sees_every_gpu_but_the_excluded_ones_and_the_runner_s_environment(
    pipe: Pipe,
) -> None:
    (pipe.folder / "trainguard.toml").write_text("[health]\nexcluded_gpus = [1]\n")
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "0,1,2", "BATCH_SIZE": "4"}
    done = pipe.cli("run", "PIPELINE.toml", "--phase", "training", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    seen = json.loads((pipe.run_dir / "training.json").read_text())
    assert seen["cuda"] == "0,2"
    assert seen["batch_size"] == "4"  # docs/phase-pipeline.md: "resume with a smaller batch" works


def test_what_a_phase_leaves_running_is_killed_when_it_ends(pipe: Pipe) -> None:
    (pipe.folder / "orphan-stats").touch()
    done = pipe.cli("run", "PIPELINE.toml")
    assert done.returncode == 0, done.stdout + done.stderr
    [orphan] = pipe.hung_pids("stats")
    assert _gone([orphan])  # before the runner exited
    assert f"stopped processes it left: ['{orphan}" in done.stdout
