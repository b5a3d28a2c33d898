"""What preflight costs a step: one check in-process, and per task through `task-queue run`.

    .venv/bin/python bench/preflight_overhead.py [--tasks 40] [--repeat 3] [--nodes 4]

1. `Preflight.check` in-process, median of many: disk only; disk + N ssh nodes (a fake ssh
   client, a Python start each, all at once; a real node adds its network round trip); the
   same within `cache_seconds` (cached); a step's 5 input files.
2. `task-queue run --until-done` on N trivial tasks (`python -c pass`, one slot), with the
   default preflight (disk, gpu: no GPU here) and with `[preflight] checks = []`: the
   difference per task.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from task_queue.preflight import Preflight, StepFiles
from trainguard.config import load_config

REPO = Path(__file__).resolve().parent.parent
FAKE_SSH = REPO / "tests" / "children" / "fake_ssh.py"
BIN = Path(sys.executable).parent


def median_ms(fn: Callable[[], object], times: int) -> float:
    took = []
    for _ in range(times):
        started = time.perf_counter()
        fn()
        took.append(time.perf_counter() - started)
    return 1000 * statistics.median(took)


def in_process(root: Path, nodes: int) -> None:
    names = [f"reachable-{i}" for i in range(nodes)]
    config = root / "trainguard.toml"
    ssh_command = json.dumps([sys.executable, str(FAKE_SSH)])
    config.write_text(
        f"[health]\ndisk_min_free_gb = 0\nssh_command = {ssh_command}\n"
        f'rocm_smi_command = ["/nonexistent"]\n[preflight]\nnodes = {json.dumps(names)}\n'
        "cache_seconds = 0\n"
    )
    cfg = load_config(config, env={})
    bare = Preflight(load_config(config, env={"TRAINGUARD_PREFLIGHT__NODES": "[]"}), [root])
    ssh = Preflight(cfg, [root])
    cached = Preflight(
        load_config(config, env={"TRAINGUARD_PREFLIGHT__CACHE_SECONDS": "60"}), [root]
    )
    cached.check(step="s", worker="w")
    for i in range(5):
        (root / f"in{i}.bin").write_bytes(b"x")
    files = StepFiles(root, tuple(f"in{i}.bin" for i in range(5)))
    cases: list[tuple[str, Callable[[], object], int]] = [
        ("disk only", lambda: bare.check(step="s", worker="w"), 200),
        (f"disk + {nodes} ssh nodes (fake)", lambda: ssh.check(step="s", worker="w"), 20),
        ("the same, cached", lambda: cached.check(step="s", worker="w"), 200),
        ("disk + 5 input files", lambda: bare.check(step="s", worker="w", files=files), 200),
    ]
    for name, fn, times in cases:
        print(f"{name + ':':<28} {median_ms(fn, times):7.2f} ms")


def queue_run(root: Path, tasks: int, checks: str) -> float:
    folder = root / f"q-{len(checks)}-{time.monotonic_ns()}"
    folder.mkdir()
    (folder / "trainguard.toml").write_text(
        f"[health]\ndisk_min_free_gb = 0\n[queue]\nslots = 1\n[preflight]\nchecks = {checks}\n"
    )
    spec = json.dumps({"argv": [sys.executable, "-c", "pass"]}) + "\n"
    (folder / "tasks.jsonl").write_text(spec * tasks)
    subprocess.run([BIN / "task-queue", "submit", "--from", "tasks.jsonl"], cwd=folder, check=True,
                   capture_output=True)  # fmt: skip
    started = time.perf_counter()
    subprocess.run([BIN / "task-queue", "run", "--until-done"], cwd=folder, check=True,
                   capture_output=True)  # fmt: skip
    return time.perf_counter() - started


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--tasks", type=int, default=40)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--nodes", type=int, default=4)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="preflight-bench-") as tmp:
        root = Path(tmp)
        in_process(root, args.nodes)
        on, off = [], []
        for _ in range(args.repeat):
            on.append(
                queue_run(root, args.tasks, '["ssh", "gpu", "inputs", "ramdisk", "disk_space"]')
            )
            off.append(queue_run(root, args.tasks, "[]"))
        with_s, without_s = statistics.median(on), statistics.median(off)
        print(f"task-queue, {args.tasks} tasks: {with_s:.2f} s with preflight, {without_s:.2f} s "
              f"without: {1000 * (with_s - without_s) / args.tasks:+.1f} ms per task")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
