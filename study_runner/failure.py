"""What went wrong in a call of `fn`, in the crash detector's words.

The executor checks no exception strings itself: the exception, formatted with its traceback as
it would stand in a log, goes through the rules that classify a crashed run's log. So "a CUDA
error" and "non-retryable" mean here what they mean to crash-detector and task-queue (the
bitsandbytes `Error invalid configuration argument at line 380 in file .../ops.cu` included).
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from crash_detector.scanner import Scanner

# Failures that depend on what the GPU was asked to do at once: a smaller batch may pass.
GPU_CATEGORIES = frozenset({"cuda_oom", "cuda_error"})
BAD_OUTPUT = "bad_output"  # our own category: fn's return value cannot be recorded
_CLASSIFIED_CHARS = 1 << 18  # the end of a huge message (a tensor's repr) is where the error is


class OutputError(Exception):
    """fn returned something other than one JSON-serialisable prediction per item."""


@dataclass(frozen=True)
class Failure:
    category: str  # a crash-detector category, `unknown` when no rule matched, or BAD_OUTPUT
    retryable: bool
    message: str  # the exception as its last traceback line says it: `RuntimeError: ...`
    traceback: str  # the whole of it, for the log (a string: no frame keeps GPU tensors alive)

    @property
    def gpu(self) -> bool:
        return self.category in GPU_CATEGORIES


class FailureClassifier:
    """Compiles the crash detector's rules at the first failure, not before: a run that never
    fails never pays for them (nor imports the crash detector)."""

    def __init__(self) -> None:
        self._scanner: Scanner | None = None

    def classify(self, exc: BaseException) -> Failure:
        text = "".join(traceback.format_exception(exc))
        message = "".join(traceback.format_exception_only(exc)).strip()
        if isinstance(exc, OutputError):
            return Failure(BAD_OUTPUT, True, message, text)
        from crash_detector.classify import classify_text

        result = classify_text(text[-_CLASSIFIED_CHARS:], scanner=self._rules())
        cause = result.primary or (result.crashes[-1].cause if result.crashes else None)
        if cause is None:
            return Failure("unknown", True, message, text)
        return Failure(cause.category, cause.retryable, message, text)

    def _rules(self) -> Scanner:
        if self._scanner is None:
            from crash_detector.rules import load_rules
            from crash_detector.scanner import Scanner

            self._scanner = Scanner(load_rules())
        return self._scanner
