from __future__ import annotations

from dataclasses import dataclass

from task_queue.retry_policy import excluded_workers, judge, may_run


@dataclass(frozen=True)
class Tried:
    worker: str
    outcome: str | None
    counted: bool = True


def _judge(earlier: list[Tried], outcome: str = "failed", **kw: object) -> tuple[str, str]:
    args: dict[str, object] = {
        "counted": True, "retryable": True, "category": "runtime_error", "max_retries": 3,
    }  # fmt: skip
    args.update(kw)
    verdict = judge(earlier, outcome=outcome, **args)  # type: ignore[arg-type]
    return verdict.status, verdict.reason


def test_an_ok_attempt_is_done_whatever_failed_before() -> None:
    assert _judge([Tried("a", "failed"), Tried("b", "failed")], "ok")[0] == "done"


def test_a_first_and_second_failure_go_back_to_pending_the_third_fails_for_good() -> None:
    assert _judge([]) == ("pending", "attempt 1 of 3 failed: retried, elsewhere if it can be")
    assert _judge([Tried("a", "failed")])[0] == "pending"
    status, reason = _judge([Tried("a", "failed"), Tried("b", "timeout")])
    assert (status, reason) == ("failed", "3 failed attempts (max_retries 3)")


def test_a_non_retryable_crash_fails_at_once() -> None:
    status, reason = _judge([], retryable=False, category="import_error")
    assert (status, reason) == ("failed", "non-retryable crash (import_error): failed at once")


def test_interrupted_lost_with_the_runner_and_pre_retry_attempts_do_not_count() -> None:
    earlier = [Tried("a", "interrupted", counted=False), Tried("a", "worker_lost", counted=False),
               Tried("b", "failed", counted=False), Tried("c", "failed")]  # fmt: skip
    assert _judge(earlier)[0] == "pending"  # 2 counted failures of 3
    assert _judge([Tried("a", "failed"), Tried("b", "failed")], counted=False)[0] == "pending"


def test_a_retry_avoids_the_workers_that_failed_it_until_all_have() -> None:
    workers = ["a", "b", "c"]
    assert not may_run("a", {"a"}, workers)
    assert may_run("b", {"a"}, workers)
    assert not may_run("b", {"a", "b"}, workers)
    assert may_run("a", {"a", "b", "c"}, workers)  # nowhere else is left
    assert excluded_workers({"a"}, workers) == {"a"}
    assert excluded_workers({"a", "b", "c"}, workers) == frozenset()
    # a worker that failed it and then went away does not hold the task back
    assert may_run("b", {"a", "b", "gone"}, ["b"])
