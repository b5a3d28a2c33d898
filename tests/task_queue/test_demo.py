"""`task-queue demo` for real: the console script, its report, what it leaves, its own checks."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from task_queue import demo
from task_queue.ledger import Ledger

SCRIPT = shutil.which("task-queue", path=str(Path(sys.executable).parent))


def _demo(*args: str) -> subprocess.CompletedProcess[str]:
    assert SCRIPT, "task-queue console script is not installed in this venv"
    return subprocess.run(
        [SCRIPT, "demo", *args], capture_output=True, text=True, timeout=100, check=False
    )


def _attempts(out: str, task: str) -> list[tuple[str, str, str]]:
    """(slot, outcome, error) of each attempt the report lists under `task`."""
    block = re.search(rf"^  task \d+ {task}: \w+\n((?:    attempt .*\n)+)", out, re.M)
    assert block, out
    found = re.findall(r"    attempt \d+ on \S+/(slot\d+): (\w+)(.*)", block.group(1))
    return [(slot, outcome, error.strip()) for slot, outcome, error in found]


@pytest.mark.e2e
def test_demo_reports_a_retry_elsewhere_a_task_failed_for_good_and_a_killed_worker() -> None:
    result = _demo()
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    download = _attempts(out, "download")
    assert [(slot, outcome) for slot, outcome, _ in download] == [
        ("slot0", "failed"),
        ("slot1", "ok"),
    ]
    assert download[0][2].endswith("OSError: dataset download failed (connection reset by peer)")
    assert re.search(r"^  task \d+ evaluate: failed$", out, re.M), out
    assert [outcome for _, outcome, _ in _attempts(out, "evaluate")] == ["failed"] * 3
    killed, retried = _attempts(out, "train")
    assert killed[1] == "failed" and killed[2].startswith("terminated by SIGKILL")
    assert retried[1] == "ok" and retried[0] != killed[0]
    assert "evaluate ran 3 times in all" in out
    assert "counts: 0 pending, 0 running, 2 done, 1 failed, 0 cancelled" in out
    assert "  NO " not in out and out.rstrip().endswith("demo: OK")
    folder = re.search(r"a throwaway queue in (\S+):", out)
    assert folder and not Path(folder.group(1)).exists()  # removed without --keep


@pytest.mark.e2e
def test_demo_keep_leaves_a_ledger_that_shows_the_same_story() -> None:
    result = _demo("--keep")
    assert result.returncode == 0, result.stdout + result.stderr
    last = result.stdout.strip().splitlines()[-1]
    kept = Path(re.sub(r"^queue kept in (\S+) .*$", r"\1", last))
    try:
        with Ledger.open(kept / "queue" / "ledger.db") as ledger:
            tasks = {task.name: task for task in ledger.tasks()}
        assert {name: task.status for name, task in tasks.items()} == {
            "download": "done", "evaluate": "failed", "train": "done",
        }  # fmt: skip
        assert len(tasks["evaluate"].attempts) == 3
        assert len((kept / "evaluate.runs").read_text().splitlines()) == 3
        train = tasks["train"].attempts
        assert [a.outcome for a in train] == ["failed", "ok"] and train[0].exit_code == -9
        assert train[0].worker != train[1].worker
        log = (kept / "queue" / "logs" / f"task-{tasks['download'].id}.log").read_text()
        assert "dataset download failed" in log and "dataset downloaded on" in log
    finally:
        shutil.rmtree(kept)


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("fault", "failed_check"),
    [
        ("download never fails", "download failed on slot0 and succeeded on slot1"),
        ("max_retries 4", "evaluate failed for good after 3 attempts, never run a 4th time"),
    ],
)
def test_demo_exits_1_when_what_it_shows_did_not_happen(
    fault: str,
    failed_check: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if fault == "download never fails":  # nothing to retry elsewhere
        monkeypatch.setitem(demo.TASKS, "download", "print('downloaded')\n")
    else:  # the queue runs the failing task a 4th time
        monkeypatch.setattr(
            demo, "CONFIG", demo.CONFIG.replace("max_retries = 3", "max_retries = 4")
        )
    assert demo.run_demo() == 1
    out = capsys.readouterr().out
    assert f"  NO   {failed_check}" in out, out
    assert out.rstrip().endswith("demo: FAILED")
