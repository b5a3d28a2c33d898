"""`phase-pipeline demo`: a four-phase pipeline whose linear probe runs out of GPU memory once.

The seed's story: training and the statistical evaluation are done when the linear probe dies
of a CUDA OOM; the run prints how to resume, the batch size is lowered, and the printed command
runs only what is left, on the checkpoint that training recorded. Real processes, a throwaway
folder, the installed command only.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

PHASES = ("training", "statistical_eval", "linear_probe", "aggregate")

PHASE_SCRIPT = """
import json, os, pathlib, sys
phase = sys.argv[1]
run_dir = pathlib.Path(os.environ["TRAINGUARD_RUN_DIR"])
with open("calls.txt", "a") as fh:
    fh.write(phase + "\\n")
if phase == "training":
    epoch = run_dir / "checkpoint" / "epoch3"
    epoch.mkdir(parents=True)
    (epoch / "model.pt").write_text("weights")
    (run_dir / "train_metrics.json").write_text(json.dumps({"loss": 0.42}))
elif phase == "statistical_eval":
    (run_dir / "stats.json").write_text(json.dumps({"checkpoint": sys.argv[2], "acc": 0.81}))
elif phase == "linear_probe":
    batch_size = int(pathlib.Path("batch_size.txt").read_text())
    print(f"linear probe on {sys.argv[2]}, batch size {batch_size}", flush=True)
    if batch_size > 32:
        sys.exit(
            "Traceback (most recent call last):\\n"
            '  File "probe.py", line 88, in <module>\\n'
            "    logits = head(features)\\n"
            "torch.cuda.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. "
            "GPU 0 has a total capacity of 23.65 GiB of which 1.12 GiB is free."
        )
    (run_dir / "probe.json").write_text(json.dumps({"checkpoint": sys.argv[2], "acc": 0.77}))
else:
    (run_dir / "summary.json").write_text(json.dumps({"statistical": 0.81, "probe": 0.77}))
print(f"{phase}: done")
"""

PIPELINE = """
name = "probe-demo"
version = "1.0.0"

[[phases]]
name = "training"
command = ["{python}", "phase.py", "training"]
outputs = ["train_metrics.json"]
provides_checkpoint = "checkpoint/epoch*"

[[phases]]
name = "statistical_eval"
command = ["{python}", "phase.py", "statistical_eval", "{checkpoint}"]
depends_on = ["training"]
outputs = ["stats.json"]

[[phases]]
name = "linear_probe"
command = ["{python}", "phase.py", "linear_probe", "{checkpoint}"]
depends_on = ["training"]
outputs = ["probe.json"]

[[phases]]
name = "aggregate"
command = ["{python}", "phase.py", "aggregate"]
depends_on = ["statistical_eval", "linear_probe"]
outputs = ["summary.json"]
"""

RESUME_HEADING = "Fix the cause, then resume with:"


def run_demo(*, keep: bool = False) -> int:
    root = Path(tempfile.mkdtemp(prefix="trainguard-pipeline-demo-")).resolve()
    try:
        return _demo(root)
    finally:
        if keep:
            print(f"\nkept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def _demo(root: Path) -> int:
    (root / "phase.py").write_text(PHASE_SCRIPT)
    (root / "PIPELINE.toml").write_text(PIPELINE)
    # The demo writes kilobytes: its preflight needs 1 GB free, not a training run's 50 GB.
    (root / "trainguard.toml").write_text("[health]\ndisk_min_free_gb = 1\n")
    (root / "batch_size.txt").write_text("64\n")
    print(f"phase-pipeline demo: 4 phases in {root}")
    print("   training -> statistical_eval and linear_probe (on its checkpoint) -> aggregate;")
    print("   at batch size 64 the linear probe runs out of GPU memory")
    checks: list[tuple[str, bool]] = []

    first = _cli(root, "run", "PIPELINE.toml")
    states = list(root.glob("runs/*/.experiment_state"))
    status = _status(root, states[0]) if len(states) == 1 else {}
    block = _recovery_block(first.stdout)
    print(f"\n1. phase-pipeline run PIPELINE.toml: exit {first.returncode}; it printed:")
    print("\n".join(block) or "   (no FAILURE RECOVERY INSTRUCTIONS)")
    checks.append(("training and statistical_eval completed, linear_probe failed, aggregate "
                   "waited (exit 1)", first.returncode == 1 and _statuses(status) == {
                       "training": "completed", "statistical_eval": "completed",
                       "linear_probe": "failed", "aggregate": "pending"}))  # fmt: skip
    checks.append(("the recovery block names the CUDA OOM and a resume command",
                   any("CUDA out of memory" in line for line in block)
                   and _resume_words(block) is not None))  # fmt: skip

    (root / "batch_size.txt").write_text("16\n")
    before = _calls(root)
    words = _resume_words(block) or ["phase-pipeline", "run", "PIPELINE.toml", "--resume", "?"]
    second = _cli(root, *words[1:])
    status = _status(root, states[0]) if len(states) == 1 else {}
    again = _calls(root) - before
    print(f"\n2. the fix: batch size 64 -> 16 (batch_size.txt); then the printed command:\n"
          f"   {shlex.join(words)}: exit {second.returncode}")  # fmt: skip
    calls = _calls(root)
    for phase in status.get("phases", []):
        runs = calls[phase["name"]]
        print(f"   {phase['status']:<10} {phase['name']:<17} ran {runs} time{'s' * (runs != 1)}")
    recorded = status.get("checkpoint_path") or ""
    checkpoint = root / recorded if recorded else None  # a relative one: below PIPELINE.toml's
    print(f"   checkpoint: {os.path.relpath(checkpoint, root) if checkpoint else 'none'}")
    checks.append(("the resume skipped training and statistical_eval (each ran once in all)",
                   calls["training"] == 1 and calls["statistical_eval"] == 1
                   and not again["training"] and not again["statistical_eval"]))  # fmt: skip
    checks.append(("it ran linear_probe again and aggregate; all 4 completed (exit 0)",
                   second.returncode == 0 and again == Counter(linear_probe=1, aggregate=1)
                   and set(_statuses(status).values()) == {"completed"}))  # fmt: skip
    checks.append(("both evaluations got training's checkpoint through {checkpoint}",
                   checkpoint is not None and checkpoint.match("checkpoint/epoch3")
                   and _evaluated_on(checkpoint.parent.parent) == {str(checkpoint)}))  # fmt: skip

    print("\nchecks:")
    for text, ok in checks:
        print(f"  {'yes' if ok else 'NO '}  {text}")
    good = all(ok for _, ok in checks)
    if not good:
        print("\nthe runs' output:\n" + first.stdout + first.stderr + second.stdout + second.stderr)
    print("demo: OK" if good else "demo: FAILED")
    return 0 if good else 1


def _cli(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINGUARD_")}
    return subprocess.run(
        [sys.executable, "-m", "phase_pipeline", *args],
        cwd=root, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def _status(root: Path, state_file: Path) -> dict[str, Any]:
    done = _cli(root, "status", str(state_file), "--json")
    try:
        result: dict[str, Any] = json.loads(done.stdout)
    except json.JSONDecodeError:
        return {}
    return result


def _statuses(status: dict[str, Any]) -> dict[str, str]:
    return {phase["name"]: phase["status"] for phase in status.get("phases", [])}


def _recovery_block(out: str) -> list[str]:
    """The lines of the FAILURE RECOVERY INSTRUCTIONS, its rules included; [] without one."""
    lines = out.splitlines()
    if "FAILURE RECOVERY INSTRUCTIONS" not in lines:
        return []
    start = lines.index("FAILURE RECOVERY INSTRUCTIONS") - 1
    rule = lines[start]  # the heading sits between two rules; a third one closes the block
    end = next((i for i in range(start + 3, len(lines)) if lines[i] == rule), len(lines) - 1)
    return lines[start : end + 1]


def _resume_words(block: list[str]) -> list[str] | None:
    """The resume command the block printed, as argv, if it is a `phase-pipeline run`."""
    if RESUME_HEADING not in block[:-1]:
        return None
    words = shlex.split(block[block.index(RESUME_HEADING) + 1])
    return words if words[:2] == ["phase-pipeline", "run"] and "--resume" in words else None


def _calls(root: Path) -> Counter[str]:
    path = root / "calls.txt"
    return Counter(path.read_text().split()) if path.exists() else Counter()


def _evaluated_on(run_dir: Path) -> set[str]:
    """The checkpoints statistical_eval and linear_probe say they were given."""
    found = set()
    for name in ("stats.json", "probe.json"):
        path = run_dir / name
        found.add(json.loads(path.read_text())["checkpoint"] if path.exists() else "")
    return found
