"""What the executor does after a call of `fn` failed. Pure, like task_queue's retry policy:
a failure and counts in, a Decision out; no files, no model, no clock.

The rules, in order:
1. a non-retryable error (import / config / permission) stops the run at once: the same code
   fails the same way on every item;
2. the max_consecutive_failures-th failed call in a row stops the run;
3. a part of one item has been tried alone: it is recorded as an error, and the run goes on;
4. a CUDA OOM or CUDA error halves the part, not below min_batch_size (what the GPU was asked
   to do at once may be the cause); after an OOM, batches not started yet start no larger
   than that half (an OOM at a size will happen again at that size);
5. anything else, or a CUDA failure at min_batch_size, runs the part's items one by one, so a
   single bad item costs only itself.
"""

from __future__ import annotations

from dataclasses import dataclass

from study_runner.failure import Failure


@dataclass(frozen=True)
class Decision:
    # Run the failed part again in parts of this many items (1: one by one); 0: do not.
    retry_size: int = 0
    # The part was one item, tried alone: record it `[ERROR: ...]`.
    record_error: bool = False
    # Stop the run; every item not done is recorded `[ABORTED: <abort>]`.
    abort: str | None = None
    # The size of the batches not started yet, when it changes (after a CUDA OOM).
    later_batch_size: int | None = None

    def describe(self) -> str:
        """What happens next, for the log line of the failure."""
        done = "recorded as an error; " if self.record_error else ""
        if self.abort is not None:
            return f"{done}aborting the run: {self.abort}"
        if self.retry_size == 1:
            return f"{done}retrying its items one by one"
        if self.retry_size:
            later = f" (later batches: {self.later_batch_size})" if self.later_batch_size else ""
            return f"retrying in batches of {self.retry_size}{later}"
        return f"{done}going on"


def decide(
    failure: Failure,
    *,
    part_size: int,
    batch_size: int,
    min_batch_size: int,
    consecutive: int,
    max_consecutive: int,
) -> Decision:
    """After `consecutive` failed calls in a row, the last on a part of `part_size` items;
    `batch_size` is the size fresh batches start at now."""
    if not failure.retryable:
        first = failure.message.split("\n", 1)[0]
        return Decision(abort=f"non-retryable {failure.category}: {first}")
    alone = part_size == 1
    if consecutive >= max_consecutive:
        return Decision(record_error=alone, abort=f"{consecutive} consecutive failures")
    if alone:
        return Decision(record_error=True)
    if failure.gpu and part_size > min_batch_size:
        half = max(min_batch_size, (part_size + 1) // 2)
        later = min(batch_size, half) if failure.category == "cuda_oom" else None
        return Decision(retry_size=half, later_batch_size=later if later != batch_size else None)
    return Decision(retry_size=1)
