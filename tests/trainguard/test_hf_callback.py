"""The Hugging Face callback against the real transformers classes (skipped without them)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from trainguard.progress import read_progress

transformers = pytest.importorskip("transformers")


def _phase(progress: Path) -> str:
    found = read_progress(progress)
    assert found is not None
    return found.phase


def test_callback_writes_steps_eval_phase_and_done(tmp_path: Path) -> None:
    from trainguard.hf_callback import TrainguardCallback

    progress = tmp_path / "status" / "progress.json"
    callback = TrainguardCallback(progress)
    state = transformers.TrainerState()
    state.max_steps = 100
    args: Any = object()  # the callback never reads TrainingArguments
    control = transformers.TrainerControl()

    callback.on_train_begin(args, state, control)
    state.global_step = 1
    callback.on_log(args, state, control, logs={"loss": 2.5})
    callback.on_step_end(args, state, control)
    first = read_progress(progress)
    assert first is not None
    assert (first.step, first.phase, first.total_steps, first.loss) == (1, "train", 100, 2.5)

    callback.on_prediction_step(args, state, control)
    assert (p := read_progress(progress)) is not None and p.phase == "eval"
    callback.on_evaluate(args, state, control)
    state.global_step = 100
    callback.on_train_end(args, state, control)
    last = read_progress(progress)
    assert last is not None and (last.step, last.phase) == (100, "done")


def test_saving_and_evaluating_show_as_their_own_phases(tmp_path: Path) -> None:
    """The Trainer decides at a step's end to evaluate and save (DefaultFlowCallback runs
    first): the silence of the save is the `save` phase's, not `train`'s (#20)."""
    from trainguard.hf_callback import TrainguardCallback

    progress = tmp_path / "progress.json"
    callback = TrainguardCallback(progress)
    state = transformers.TrainerState()
    args: Any = object()
    control = transformers.TrainerControl()

    callback.on_train_begin(args, state, control)
    state.global_step = 10
    control.should_save = True
    callback.on_step_end(args, state, control)
    assert _phase(progress) == "save"
    callback.on_save(args, state, control)
    assert _phase(progress) == "train"
    control.should_save = False
    state.global_step = 20
    control.should_evaluate = control.should_save = True
    callback.on_step_end(args, state, control)
    assert _phase(progress) == "train"  # evaluation comes first, and shows itself
    callback.on_prediction_step(args, state, control)
    assert _phase(progress) == "eval"
    callback.on_evaluate(args, state, control)
    assert _phase(progress) == "save"
    callback.on_save(args, state, control)
    assert _phase(progress) == "train"


def test_epoch_saves_best_model_saves_and_the_end_of_training_are_not_train(
    tmp_path: Path,
) -> None:
    """Saves decided at an epoch's end, by save_strategy "best" after an evaluation, and the
    work after the last save are long silences: never counted as `train`'s; `done` stays."""
    from trainguard.hf_callback import TrainguardCallback

    progress = tmp_path / "progress.json"
    callback = TrainguardCallback(progress)
    state = transformers.TrainerState()
    control = transformers.TrainerControl()
    plain: Any = object()

    callback.on_train_begin(plain, state, control)
    state.global_step = 50
    control.should_save = True
    callback.on_epoch_end(plain, state, control)
    assert _phase(progress) == "save"
    callback.on_save(plain, state, control)
    control.should_save = False
    best = transformers.TrainingArguments(
        output_dir=str(tmp_path),
        save_strategy="best",
        eval_strategy="steps",
        metric_for_best_model="loss",
    )
    callback.on_prediction_step(best, state, control)
    callback.on_evaluate(best, state, control)
    assert _phase(progress) == "save"
    control.should_training_stop = True
    callback.on_save(best, state, control)
    assert _phase(progress) == "save"
    callback.on_train_end(best, state, control)
    assert _phase(progress) == "done"
    callback.on_prediction_step(best, state, control)  # trainer.evaluate() afterwards
    callback.on_evaluate(best, state, control)
    assert _phase(progress) == "done"


def test_a_save_request_makes_the_trainer_save_and_is_answered_once_saved(
    tmp_path: Path,
) -> None:
    """#20: a planned stop's request turns on `should_save` at the step's end; `on_save` (the
    checkpoint written) removes the request, and the progress says it answers them."""
    from trainguard.hf_callback import TrainguardCallback
    from trainguard.progress import save_request_file

    progress = tmp_path / "status" / "progress.json"
    callback = TrainguardCallback(progress)
    state = transformers.TrainerState()
    args: Any = object()
    control = transformers.TrainerControl()
    callback.on_train_begin(args, state, control)
    state.global_step = 7
    callback.on_step_end(args, state, control)
    assert control.should_save is False
    request = save_request_file(progress)
    request.write_text('{"requested_at": "2026-12-06T00:00:00Z", "step": 7}')
    state.global_step = 8
    callback.on_step_end(args, state, control)
    assert control.should_save is True
    written = read_progress(progress)
    assert written is not None and (written.phase, written.saves_on_request) == ("save", True)
    callback.on_save(args, state, control)
    assert not request.exists()


def test_only_the_nodes_main_process_writes(tmp_path: Path) -> None:
    from trainguard.hf_callback import TrainguardCallback

    progress = tmp_path / "progress.json"
    state = transformers.TrainerState()
    state.is_local_process_zero = False  # another process of this node writes
    args: Any = object()
    TrainguardCallback(progress).on_step_end(args, state, transformers.TrainerControl())
    assert not progress.exists()
