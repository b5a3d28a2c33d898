"""A plain PyTorch loop: torch.save(..., "ckpt_000010.pt") every 10 steps, up to 30.

usage: plain_loop.py --base-dir DIR [--resume-from CKPT]
With DIE_SAVING_AT=S the save of step S is cut in half and the process SIGKILLed, once.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from tests.trainers.kill_switch import die, should_die, truncate
from trainguard.progress import ProgressWriter

MAX_STEPS = 30


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base-dir", type=Path, required=True)
    parser.add_argument("--resume-from")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    step = 0
    if args.resume_from:
        state = torch.load(args.resume_from, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step = state["step"]
        print(f"resumed from {args.resume_from} at step {step}", flush=True)
    progress = ProgressWriter(args.base_dir / "status" / "progress.json", total_steps=MAX_STEPS)
    folder = args.base_dir / "checkpoints"
    folder.mkdir(exist_ok=True)
    while step < MAX_STEPS:
        x = torch.randn(8, 8)
        loss = torch.nn.functional.mse_loss(model(x), x.sum(dim=1, keepdim=True))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        step += 1
        progress.write(step, "train", loss=float(loss))
        if step % 10 == 0:
            path = folder / f"ckpt_{step:06d}.pt"
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step}
            torch.save(state, path)
            if should_die(args.base_dir, step):
                truncate(path)
                die()
    print(f"done at step {step}", flush=True)


if __name__ == "__main__":
    main()
