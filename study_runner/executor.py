"""ResilientExecutor: run a model over a dataset in batches, and finish whatever fails.

One CUDA error at item 64 of 100 used to lose the whole evaluation. Here a failed batch is
retried smaller (CUDA OOM / CUDA error) or item by item, an item that still fails is recorded
as an error and the run goes on, a run that fails over and over stops early with what it has,
and every prediction goes to an append-only file, fsynced batch by batch, so a rerun computes
only what is missing. What counts as a CUDA error or a non-retryable one is the crash
detector's call.

Example, with a Hugging Face pipeline::

    from transformers import pipeline
    from study_runner import ResilientExecutor

    pipe = pipeline("text2text-generation", model="google/flan-t5-large", device=0)
    ex = ResilientExecutor(batch_size=32, results="predictions.jsonl")
    records = ex.run(
        questions,  # a list of prompts; fn gets a list of them, returns one answer each
        lambda batch: [out["generated_text"] for out in pipe(batch, batch_size=len(batch))],
    )
    answers = [r["prediction"] for r in records]  # "[ERROR: ...]" where an item failed
    if ex.aborted:  # stopped early; a rerun with the same file runs only what is missing
        raise SystemExit(f"aborted: {ex.aborted}")

`batch_size=len(batch)` makes the pipeline run the batch as one forward pass, so a halved
batch asks the GPU for less. (A "text-generation" pipeline gives a list per prompt:
`out[0]["generated_text"]`.)
"""

from __future__ import annotations

import gc
import logging
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar

from study_runner.batch_policy import Decision, decide
from study_runner.failure import Failure, FailureClassifier, OutputError
from study_runner.record_writer import Chunk, RecordWriter
from study_runner.results_file import (
    Record,
    ResultsFile,
    aborted_record,
    encode,
    encode_predictions,
    error_record,
    is_failed,
    prediction_record,
    read_latest,
)
from study_runner.state_counters import EXPERIMENT_DIR_ENV, experiment_dir, state_file
from study_runner.state_counters import write_counters as write_state_counters

log = logging.getLogger("study_runner")

T = TypeVar("T")
PREDICTIONS_FILE = "predictions.jsonl"


class ResilientExecutor:
    """Runs `fn` over `items` in batches; see the module docstring for why and how.

    `results`: the JSON-lines file of records (default: `$TRAINGUARD_EXPERIMENT_DIR/
    predictions.jsonl`, set by study-runner). `fsync_interval`: a writer thread appends each
    batch's records and fsyncs them while the next batch computes, at most once per this many
    seconds (0: after every batch). None: no thread; each batch's records are appended before
    the next batch starts and fsynced only when `run` ends. Either way all is written and
    fsynced when `run` returns or raises.
    """

    def __init__(
        self,
        batch_size: int,
        min_batch_size: int = 1,
        max_consecutive_failures: int = 5,
        results: str | os.PathLike[str] | None = None,
        *,
        fsync_interval: float | None = 0.0,
    ) -> None:
        if not 1 <= min_batch_size <= batch_size:
            raise ValueError(
                f"need 1 <= min_batch_size <= batch_size, got {min_batch_size} and {batch_size}"
            )
        if max_consecutive_failures < 1:
            raise ValueError(
                f"max_consecutive_failures must be >= 1, got {max_consecutive_failures}"
            )
        if fsync_interval is not None and fsync_interval < 0:
            raise ValueError(f"fsync_interval must be >= 0 or None, got {fsync_interval}")
        if results is None:
            folder = experiment_dir()
            if folder is None:
                raise ValueError(
                    "ResilientExecutor needs a results file: pass results=PATH, or run under "
                    f"study-runner, which sets ${EXPERIMENT_DIR_ENV}"
                )
            results = folder / PREDICTIONS_FILE
        self.results = Path(results)
        self.batch_size = batch_size
        self.min_batch_size = min_batch_size
        self.max_consecutive_failures = max_consecutive_failures
        self.fsync_interval = fsync_interval
        # Why the last `run` stopped early (the text of its `[ABORTED: ...]` records), or None.
        self.aborted: str | None = None
        self._classifier = FailureClassifier()

    def run(self, items: Iterable[T], fn: Callable[[list[T]], Iterable[Any]]) -> list[Record]:
        """Run `fn` on the items not yet recorded with a prediction; return one record per item.

        `fn` takes a list of items and returns their predictions, one per item, in order (any
        iterable; JSON-serialisable values). Items are known by their index in `items` (the
        record's "idx"), so a rerun on the same file must pass the same items in the same order.

        Returns, in idx order, the latest record of every item: `{"idx", "prediction"}`, or for
        an item that failed alone `{"idx", "prediction": "[ERROR: ...]", "error"}`, or for one
        left undone when the run stopped early `{"idx", "prediction": "[ABORTED: ...]",
        "error"}` (then `self.aborted` says why). Items recorded by an earlier run are returned
        as read from the file, never computed again unless their record is an error or an abort.
        """
        seq = items if isinstance(items, Sequence) else list(items)
        latest = read_latest(self.results)
        todo = [i for i in range(len(seq)) if i not in latest or is_failed(latest[i])]
        self.aborted = None
        run = _Run(self, seq, fn, latest, todo)
        try:
            run.loop()
        finally:
            run.close()
        return [latest[i] for i in range(len(seq))]


class _Run(Generic[T]):
    """The state of one `run`: what is recorded, what is left, the failures in a row."""

    def __init__(
        self,
        ex: ResilientExecutor,
        items: Sequence[T],
        fn: Callable[[list[T]], Iterable[Any]],
        latest: dict[int, Record],
        todo: list[int],
    ) -> None:
        self.ex = ex
        self.classifier = ex._classifier  # one per executor: its rules compiled once
        self.items = items
        self.fn = fn
        self.latest = latest
        self.todo = todo
        self.complete_before = len(items) - len(todo)  # recorded by earlier runs
        self.consecutive = 0
        self.batch_size = ex.batch_size
        self.state = state_file()
        if self.state is not None:
            write_state_counters(self.state, complete=self.complete_before, total=len(items))
        self.file = ResultsFile(ex.results)
        self.writer = RecordWriter(self.file, self._after_sync, ex.fsync_interval)

    def loop(self) -> None:
        pos = 0
        while pos < len(self.todo):
            batch = self.todo[pos : pos + self.batch_size]
            pos += len(batch)
            parts = [batch]  # a stack: the part to run next is last
            while parts:
                part = parts.pop()
                failure = self._attempt(part)
                if failure is None:
                    self.consecutive = 0
                    continue
                self.consecutive += 1
                decision = self._decide(failure, part)
                if decision.record_error:
                    self._record([error_record(part[0], failure.message)])
                if decision.abort is not None:
                    left = [i for p in parts for i in p] + self.todo[pos:]
                    if not decision.record_error:
                        left += part
                    self._abort(decision.abort, failure, sorted(left))
                    return
                if decision.later_batch_size is not None:
                    self.batch_size = decision.later_batch_size
                if size := decision.retry_size:
                    parts.extend(reversed([part[i : i + size] for i in range(0, len(part), size)]))
                free_gpu_memory()

    def _attempt(self, part: list[int]) -> Failure | None:
        """One call of fn; its records handed to the writer, or why it failed."""
        try:
            predictions = _as_list(self.fn([self.items[i] for i in part]), len(part))
            chunk: Chunk = (part, predictions)
            if not all(type(p) is str for p in predictions):
                try:  # only strings are sure to encode: others are checked here, as fn's error
                    chunk = encode_predictions(part, predictions)
                except (TypeError, ValueError) as exc:
                    raise OutputError(f"fn returned a prediction JSON cannot hold: {exc}") from None
        except Exception as exc:
            return self.classifier.classify(exc)
        self.writer.put(chunk, len(part))
        for i, prediction in zip(part, predictions, strict=True):
            self.latest[i] = prediction_record(i, prediction)
        return None

    def _decide(self, failure: Failure, part: list[int]) -> Decision:
        decision = decide(
            failure,
            part_size=len(part),
            batch_size=self.batch_size,
            min_batch_size=self.ex.min_batch_size,
            consecutive=self.consecutive,
            max_consecutive=self.ex.max_consecutive_failures,
        )
        # Logged before anything is retried, with the traceback: the one place it is kept.
        log.error(
            "fn failed on %d item(s) (idx %s) [%s, failure %d in a row]: %s\n%s",
            len(part),
            _span(part),
            failure.category,
            self.consecutive,
            decision.describe(),
            failure.traceback.rstrip(),
        )
        return decision

    def _abort(self, reason: str, failure: Failure, left: list[int]) -> None:
        self.ex.aborted = reason
        self._record([aborted_record(i, reason, failure.message) for i in left])
        log.error("run aborted (%s): %d item(s) recorded as aborted", reason, len(left))
        free_gpu_memory()

    def _record(self, records: list[Record]) -> None:
        self.writer.put(encode(records), 0)
        self.latest.update((r["idx"], r) for r in records)

    def _after_sync(self, written: int) -> None:
        """On the writer's thread, after an fsync: count what is durable, nothing more."""
        if self.state is not None:
            complete = self.complete_before + written
            write_state_counters(self.state, complete=complete, total=len(self.items))

    def close(self) -> None:
        try:
            self.writer.close()
        finally:
            self.file.close()


def free_gpu_memory() -> None:
    """Free what a failed attempt left: its tensors die with the frames gc collects, and
    torch's caching allocator gives their blocks back. torch only if the caller loaded it:
    importing it here would cost seconds and a CUDA context in a process that uses none."""
    gc.collect()
    torch = sys.modules.get("torch")
    cuda = getattr(torch, "cuda", None)
    if cuda is None:
        return
    try:
        cuda.empty_cache()
    except Exception as exc:  # a CUDA error can poison the context: the next call will say
        log.warning("torch.cuda.empty_cache() failed: %s", exc)


def _as_list(predictions: Iterable[Any], expected: int) -> list[Any]:
    try:
        result = list(predictions)
    except TypeError:
        raise OutputError(
            f"fn returned {type(predictions).__name__}, not a list of predictions"
        ) from None
    if len(result) != expected:
        raise OutputError(
            f"fn returned {len(result)} prediction(s) for {expected} item(s): one per item needed"
        )
    return result


def _span(part: list[int]) -> str:
    return str(part[0]) if len(part) == 1 else f"{part[0]}..{part[-1]}"
