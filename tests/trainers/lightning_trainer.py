"""A real Lightning Trainer with ModelCheckpoint files (CPU, tiny model built in code).

usage: lightning_trainer.py --base-dir DIR [--resume-from CKPT]
Saves `epoch=E-step=S.ckpt` every 10 steps and `last.ckpt`, up to 30 steps. With
DIE_SAVING_AT=S the save of step S is cut in half and the process SIGKILLed, before
last.ckpt is updated, once.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from tests.trainers.kill_switch import die, should_die, truncate
from trainguard.progress import ProgressWriter

MAX_STEPS = 30


class Tiny(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(8, 1)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return torch.nn.functional.mse_loss(self.layer(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=0.01)


class Progress(Callback):
    def __init__(self, base: Path) -> None:
        self.writer = ProgressWriter(base / "status" / "progress.json", total_steps=MAX_STEPS)

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        self.writer.write(trainer.global_step, "train")


class DyingCheckpoint(ModelCheckpoint):
    def __init__(self, base: Path, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.base = base

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        super()._save_checkpoint(trainer, filepath)
        if not filepath.endswith("last.ckpt") and should_die(self.base, trainer.global_step):
            truncate(Path(filepath))
            die()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base-dir", type=Path, required=True)
    parser.add_argument("--resume-from")
    args = parser.parse_args()
    pl.seed_everything(0)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(512, 8, generator=generator)
    data = torch.utils.data.TensorDataset(x, x.sum(dim=1, keepdim=True))
    loader = torch.utils.data.DataLoader(data, batch_size=8)
    checkpoint = DyingCheckpoint(
        args.base_dir,
        dirpath=args.base_dir / "checkpoints",
        filename="{epoch}-{step}",
        every_n_train_steps=10,
        save_top_k=-1,
        save_last=True,
    )
    trainer = pl.Trainer(
        max_steps=MAX_STEPS,
        accelerator="cpu",
        callbacks=[checkpoint, Progress(args.base_dir)],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(Tiny(), loader, ckpt_path=args.resume_from)
    print(f"done at step {trainer.global_step}", flush=True)


if __name__ == "__main__":
    main()
