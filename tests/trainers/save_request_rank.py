"""One rank of tests/trainers/test_save_request_ranks.py (gloo, CPU).

usage: save_request_rank.py RANK ROOT -- ROOT/nodeRANK/status is this rank's node's progress
folder; rank 0's watchdog asks for a save between steps 1 and 2. Prints the should_save
decision of each step as JSON.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import torch.distributed as dist
from transformers import TrainerControl, TrainerState

from trainguard.hf_callback import TrainguardCallback


def main() -> None:
    rank, root = int(sys.argv[1]), Path(sys.argv[2])
    dist.init_process_group("gloo", init_method=f"file://{root}/rendezvous", rank=rank,
                            world_size=2)  # fmt: skip
    try:
        node = root / f"node{rank}" / "status"
        node.mkdir(parents=True, exist_ok=True)
        callback = TrainguardCallback(node / "progress.json")
        decisions = []
        for step in (1, 2):
            if rank == 0 and step == 2:
                (node / "save_request.json").write_text('{"requested_at": "now"}')
            state, control = TrainerState(), TrainerControl()
            state.global_step = step
            callback.on_step_end(SimpleNamespace(), state, control)  # type: ignore[arg-type]
            decisions.append(control.should_save)
        print(json.dumps(decisions))
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
