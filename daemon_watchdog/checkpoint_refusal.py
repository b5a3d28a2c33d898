"""Did the trainer die on the checkpoint it was resumed from?

A small pure class, like `RestartPolicy`: fed each crash of a resumed daemon, it answers
whether to quarantine that checkpoint so the next start uses the previous complete one,
instead of retrying the same one until FATAL (a Hugging Face run resumed from a weights-only
`checkpoint-140` dies on its missing trainer_state.json every time).
"""

from __future__ import annotations

# Crashes that say nothing against the checkpoint: the machine or the setup failed, and an
# older checkpoint would fail the same way.
NOT_THE_CHECKPOINT = frozenset(
    {"cuda_oom", "host_oom", "gpu_hardware", "nccl", "network", "disk_full", "permission_error",
     "import_error", "config_error"}
)  # fmt: skip


class CheckpointRefusal:
    """Call `progressed()` on each progress and `judge()` on each crash of a resumed daemon
    that made none; `reset()` when an operator clears FATAL."""

    def __init__(self) -> None:
        self._deaths: dict[str, int] = {}  # crashes in a row before progress, per checkpoint
        self._refused = False  # one refusal since the last progress

    def progressed(self) -> None:
        """The daemon got past loading its checkpoint."""
        self._deaths.clear()
        self._refused = False

    reset = progressed

    def judge(
        self,
        checkpoint: str,
        *,
        category: str,
        evidence: str,
        last_lines: str,
        killed: bool = False,
    ) -> str | None:
        """Why `checkpoint` should be quarantined after a crash before any progress, or None.

        A SIGKILL the trainer did not cause itself (`killed`: no error in its output) says
        nothing against the checkpoint, however often it comes.

        It is refused when the crash (its traceback) names it, or is the second in a row on it;
        a corrupt-file error that does not name it may be about another file (the base model).
        Only once until the next progress: a second checkpoint failing the same way says the
        trainer, not its checkpoints, is at fault, and refusing on would quarantine every
        checkpoint and end in a start from scratch.
        """
        if category in NOT_THE_CHECKPOINT or killed or self._refused:
            return None
        deaths = self._deaths.get(checkpoint, 0) + 1
        self._deaths[checkpoint] = deaths
        name = checkpoint.rstrip("/").rsplit("/", 1)[-1]
        named = any(
            checkpoint in text or f"{name}/" in text or text.rstrip("'\" ").endswith(name)
            for text in (evidence, last_lines)
        )
        if named:
            why = "the crash names it"
        elif deaths >= 2:
            why = f"died {deaths} times in a row on it"
        else:
            return None
        self._refused = True
        return why
