"""`study-runner demo`: a small study whose 8-bit Qwen experiments fail, finishing anyway.

The seed's story: Qwen 2.5-7B in 8-bit fails (a bitsandbytes CUDA error) while the rest of the
study goes on; once the kernel is fixed, `--force --filter "*_8bit"` runs the 8-bit ones again
and nothing else. Real processes, a throwaway folder, the installed commands only.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

EXPERIMENT = """
import json, os, pathlib, sys
model, quantization, dataset = sys.argv[1:4]
here = pathlib.Path(os.environ["TRAINGUARD_EXPERIMENT_DIR"])
with open("calls.txt", "a") as fh:
    fh.write(f"{model}_{dataset}_{quantization}\\n")
if model == "qwen2.5-7b" and quantization == "8bit" and not pathlib.Path("kernel-fixed").exists():
    raise RuntimeError(
        "Error invalid configuration argument at line 380 in file /src/csrc/ops.cu"
    )
with open(here / "predictions.jsonl", "a") as fh:
    for idx in range(4):
        fh.write(json.dumps({"idx": idx, "prediction": f"answer {idx}"}) + "\\n")
print(f"evaluated {model} ({quantization}) on {dataset}")
"""

STUDY = """
name = "eval-demo"
command = ["{python}", "evaluate.py", "{model}", "{quantization}", "{dataset}"]
name_template = "{model}_{dataset}_{quantization}"
[grid]
model = ["qwen2.5-7b", "llama3-8b"]
quantization = ["8bit", "fp16"]
dataset = ["squad", "gsm8k"]
"""


def run_demo(*, keep: bool = False) -> int:
    root = Path(tempfile.mkdtemp(prefix="trainguard-study-demo-"))
    try:
        return _demo(root)
    finally:
        if keep:
            print(f"\nkept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def _demo(root: Path) -> int:
    (root / "evaluate.py").write_text(EXPERIMENT)
    (root / "STUDY.toml").write_text(STUDY)
    # The demo writes kilobytes: its preflight needs 1 GB free, not a training run's 50 GB.
    (root / "trainguard.toml").write_text("[queue]\nslots = 2\n[health]\ndisk_min_free_gb = 1\n")
    print(f"study-runner demo: 8 experiments (2 models x 2 quantizations x 2 datasets) in {root}")
    checks: list[tuple[str, bool]] = []

    first = _cli(root, "run", "STUDY.toml")
    status = _status(root)
    failed = sorted(e["name"] for e in status["experiments"] if e["phase"] == "failed")
    print(f"\n1. study-runner run STUDY.toml: exit {first.returncode}")
    _show(status)
    error_log = root / "eval-demo" / "qwen2.5-7b_squad_8bit" / "error.log"
    cuda = (
        "invalid configuration argument" in error_log.read_text() if error_log.exists() else False
    )
    checks.append(("the 8-bit Qwen experiments failed, every other one completed (exit 1)",
                   first.returncode == 1 and failed == ["qwen2.5-7b_gsm8k_8bit",
                                                        "qwen2.5-7b_squad_8bit"]))  # fmt: skip
    checks.append(("their error.log holds the CUDA error, the spec and the traceback", cuda))

    (root / "kernel-fixed").touch()
    before = _calls(root)
    second = _cli(root, "run", "STUDY.toml", "--force", "--filter", "*_8bit")
    status = _status(root)
    print(f'\n2. the kernel fixed; study-runner run STUDY.toml --force --filter "*_8bit": exit '
          f"{second.returncode}")  # fmt: skip
    _show(status)
    again = _calls(root) - before
    print(f"   run again: {', '.join(sorted(again)) or 'nothing'}")
    checks.append(("all 8 completed (exit 0)", second.returncode == 0
                   and all(e["phase"] == "completed" for e in status["experiments"])))  # fmt: skip
    checks.append(("only the 8-bit ones ran again, each once",
                   sorted(again) == sorted(n for n in _calls(root) if n.endswith("_8bit"))
                   and set(again.values()) == {1}))  # fmt: skip

    print("\nchecks:")
    for text, ok in checks:
        print(f"  {'yes' if ok else 'NO '}  {text}")
    good = all(ok for _, ok in checks)
    if not good:
        print("\nthe runs' output:\n" + first.stdout + second.stdout)
    print("demo: OK" if good else "demo: FAILED")
    return 0 if good else 1


def _cli(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINGUARD_")}
    return subprocess.run(
        [sys.executable, "-m", "study_runner", *args, "-c", "trainguard.toml"],
        cwd=root, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


def _status(root: Path) -> dict[str, Any]:
    done = _cli(root, "status", str(root / "eval-demo"), "--json")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def _show(status: dict[str, Any]) -> None:
    counts = status["counts"]
    print("   " + ", ".join(f"{counts[p]} {p}" for p in ("completed", "failed")))
    for exp in status["experiments"]:
        error = f"  {exp['error']}" if exp["error"] else ""
        print(f"   {exp['phase']:<10} {exp['name']}{error}")


def _calls(root: Path) -> Counter[str]:
    path = root / "calls.txt"
    return Counter(path.read_text().split()) if path.exists() else Counter()
