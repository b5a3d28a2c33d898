"""When a resumed daemon's crash means its checkpoint is unusable: every rule, no processes."""

from __future__ import annotations

import pytest

from daemon_watchdog.checkpoint_refusal import CheckpointRefusal

CKPT = "/runs/a/checkpoints/checkpoint-140"
HF_ERROR = f"FileNotFoundError: [Errno 2] No such file or directory: '{CKPT}/trainer_state.json'"


def judge(r: CheckpointRefusal, category: str = "unknown", evidence: str = "",
          last: str = "") -> str | None:  # fmt: skip
    return r.judge(CKPT, category=category, evidence=evidence, last_lines=last)


def test_a_crash_naming_the_checkpoint_refuses_it_at_once() -> None:
    assert judge(CheckpointRefusal(), "file_not_found", evidence=HF_ERROR) == "the crash names it"


def test_the_name_at_the_end_of_the_last_lines_is_enough() -> None:
    last = "Traceback (most recent call last):\nValueError: cannot resume from checkpoint-140"
    assert judge(CheckpointRefusal(), last=last) == "the crash names it"


def test_a_corrupt_file_crash_that_does_not_name_it_waits_for_a_second_one() -> None:
    # torch.load's "PytorchStreamReader failed" names no file: it may be the base model's
    refusal = CheckpointRefusal()
    assert judge(refusal, "checkpoint_corrupt") is None
    assert judge(refusal, "checkpoint_corrupt") == "died 2 times in a row on it"


def test_a_silent_crash_refuses_it_only_the_second_time_in_a_row() -> None:
    refusal = CheckpointRefusal()
    assert judge(refusal, last="RuntimeError: boom") is None
    assert judge(refusal, last="RuntimeError: boom") == "died 2 times in a row on it"


def test_a_bare_sigkill_never_blames_the_checkpoint() -> None:
    """An operator's kill -9 (or an OOM kill nothing proved) before the first progress, twice:
    not the checkpoint's doing, as when such a kill was filed under host_oom."""
    refusal = CheckpointRefusal()
    for _ in range(3):
        assert (
            refusal.judge(CKPT, category="unknown", evidence="", last_lines="", killed=True) is None
        )
    assert judge(refusal, last="RuntimeError: boom") is None  # the count did not grow meanwhile


def test_progress_between_crashes_starts_the_count_again() -> None:
    refusal = CheckpointRefusal()
    assert judge(refusal) is None
    refusal.progressed()
    assert judge(refusal) is None


@pytest.mark.parametrize("category", ["cuda_oom", "host_oom", "nccl", "config_error"])
def test_crashes_of_the_machine_or_setup_never_blame_the_checkpoint(category: str) -> None:
    refusal = CheckpointRefusal()
    assert judge(refusal, category, evidence=HF_ERROR) is None
    assert judge(refusal, category, evidence=HF_ERROR) is None


def test_only_one_refusal_until_the_next_progress() -> None:
    refusal = CheckpointRefusal()
    assert judge(refusal, evidence=HF_ERROR) is not None
    # the previous checkpoint fails the same way: the trainer is at fault, keep the rest
    other = "/runs/a/checkpoints/checkpoint-120"
    assert refusal.judge(other, category="unknown", evidence=f"{other} bad", last_lines="") is None
    refusal.progressed()
    assert refusal.judge(other, category="unknown", evidence=f"{other} bad", last_lines="")


def test_an_unrelated_checkpoint_name_is_not_a_match() -> None:
    assert judge(CheckpointRefusal(), last="loading checkpoint-1400 from cache\nboom") is None
