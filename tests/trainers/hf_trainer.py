"""A real Hugging Face Trainer on a tiny GPT-2 built in code (CPU, no download).

usage: hf_trainer.py --base-dir DIR [--resume-from CHECKPOINT]
Saves checkpoint-N/ in place every 10 steps up to 30, reports progress with trainguard's
callback. With DIE_SAVING_AT=N it is SIGKILLed during that save, after the weights and the
optimizer and before trainer_state.json, once.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

from tests.trainers.kill_switch import die, should_die
from trainguard.hf_callback import TrainguardCallback

MAX_STEPS = 30
SAVE_STEPS = 10


class Tokens(torch.utils.data.Dataset[dict[str, torch.Tensor]]):
    def __init__(self) -> None:
        generator = torch.Generator().manual_seed(0)
        self.rows = torch.randint(0, 64, (256, 16), generator=generator)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        row = self.rows[index]
        return {"input_ids": row, "labels": row}


class DyingTrainer(Trainer):
    def _save_rng_state(self, output_dir: Any) -> None:  # after weights+optimizer, before state
        super()._save_rng_state(output_dir)
        if should_die(BASE, self.state.global_step):
            die()


def main() -> None:
    global BASE
    parser = argparse.ArgumentParser()
    parser.add_argument("--base-dir", type=Path, required=True)
    parser.add_argument("--resume-from")
    args = parser.parse_args()
    BASE = args.base_dir
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=64, n_positions=16, n_embd=16, n_layer=1, n_head=2)
    training = TrainingArguments(
        output_dir=str(args.base_dir / "checkpoints"),
        max_steps=MAX_STEPS,
        save_steps=SAVE_STEPS,
        per_device_train_batch_size=4,
        report_to=[],
        use_cpu=True,
        logging_steps=5,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    trainer = DyingTrainer(
        model=GPT2LMHeadModel(config),
        args=training,
        train_dataset=Tokens(),
        callbacks=[TrainguardCallback(args.base_dir / "status" / "progress.json")],
    )
    trainer.train(resume_from_checkpoint=args.resume_from)
    print(f"done at step {trainer.state.global_step}", flush=True)


BASE = Path()

if __name__ == "__main__":
    main()
