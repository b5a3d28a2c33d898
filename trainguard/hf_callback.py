"""A Hugging Face `TrainerCallback` that writes the progress protocol (pip install trainguard[hf]).

    from transformers import Trainer
    from trainguard.hf_callback import TrainguardCallback

    trainer = Trainer(model=model, args=args, train_dataset=ds,
                      callbacks=[TrainguardCallback("status/progress.json")])
    trainer.train(resume_from_checkpoint=resume)  # the watchdog passes --resume-from

Importing this module imports transformers; nothing else in trainguard does. The main
process of each node (local rank 0) writes: every node's watchdog watches its own progress
file. Phases: `train` after every optimizer step, `eval` while evaluating, `save` while a
checkpoint is written (the Trainer has decided to save when a step ends: `control.should_save`),
`done` at the end. Evaluation and saving are their own phases so that their long silences get
their own hang threshold (`[watchdog.phase_timeouts]`, or the one the watchdog learns) instead
of teaching the `train` phase to wait for them.

A planned stop (`daemon-watchdog stop`, systemd's stop, a scheduler's SIGTERM to the watchdog)
loses no step: the watchdog's save request makes the Trainer save at the next step's end, and
the request is removed once `on_save` says the checkpoint is written; the watchdog stops the
run then. Under torch.distributed every rank decides alike: the ranks agree at each step's
end (an all-reduce of one flag, MAX) whether any of them sees a request, since a save is
collective under FSDP and DeepSpeed and ranks that disagreed would wait on each other (each
rank looks at its own node's request file, which that node's watchdog writes).
"""

from __future__ import annotations

import os
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from trainguard.progress import ProgressWriter
from trainguard.ranks import any_rank


class TrainguardCallback(TrainerCallback):
    def __init__(self, progress_file: str | os.PathLike[str] = "status/progress.json") -> None:
        self.writer = ProgressWriter(progress_file)
        self.loss: float | None = None
        self.phase = "train"

    def _write(self, state: TrainerState, phase: str) -> None:
        # `done` stays: an evaluate() after training is not the run coming back to life.
        if not state.is_local_process_zero or (self.phase == "done" and phase != "done"):
            return
        self.phase = phase
        self.writer.total_steps = state.max_steps or None
        self.writer.write(state.global_step, phase, loss=self.loss)

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        self.phase = "train"  # a new train() after a finished one
        self._write(state, "train")

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        if any_rank(self.writer.save_requested()):
            control.should_save = True  # a planned stop: checkpoint this step first
        self._write(state, self._before_save_or_eval(control))

    def on_epoch_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        # save_strategy / eval_strategy "epoch": decided here, done right after.
        self._write(state, self._before_save_or_eval(control))

    @staticmethod
    def _before_save_or_eval(control: TrainerControl) -> str:
        """The Trainer evaluates, then saves, right after a step or an epoch ends: a save
        shows as its own phase; an evaluation shows itself (on_prediction_step)."""
        return "save" if control.should_save and not control.should_evaluate else "train"

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        **kw: Any,
    ) -> None:
        loss = (logs or {}).get("loss")
        if isinstance(loss, (int, float)):
            self.loss = float(loss)  # NaN stays NaN: a diverged run must show

    def on_prediction_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        if self.phase != "eval":  # once per evaluation: a phase change is progress
            self._write(state, "eval")

    def on_evaluate(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        # save_strategy "best" decides to save only after this evaluation: it may follow.
        best = str(getattr(getattr(args, "save_strategy", None), "value", "")) == "best"
        self._write(state, "save" if control.should_save or best else "train")

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        # After the last save the Trainer still loads the best model, logs, removes old
        # checkpoints: I/O like a save, before on_train_end says `done`.
        self._write(state, "save" if control.should_training_stop else "train")
        if state.is_local_process_zero:  # it wrote the checkpoint: complete once we are called
            self.writer.saved()

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        self._write(state, "done")
