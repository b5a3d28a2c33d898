"""A planned stop's save decision under torch.distributed: two real ranks (gloo, CPU), each
with its own node's progress folder; only one of them sees the watchdog's save request, and
both must save at that step (a save is collective under FSDP and DeepSpeed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.trainers]  # torch: `make test-trainers` only

RANK = Path(__file__).with_name("save_request_rank.py")
ROOT = Path(__file__).resolve().parents[2]


def test_every_rank_saves_when_any_rank_sees_the_request(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    ranks = [
        subprocess.Popen(
            [sys.executable, str(RANK), str(rank), str(tmp_path)],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for rank in (0, 1)
    ]
    try:
        outputs = [proc.communicate(timeout=120)[0] for proc in ranks]
    finally:
        for proc in ranks:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert [proc.returncode for proc in ranks] == [0, 0], outputs
    decisions = [json.loads(out.strip().splitlines()[-1]) for out in outputs]
    assert decisions == [[False, True], [False, True]]
