"""The resilient batch executor's rules, each with a fake `fn` that fails on purpose.

Items are their own indexes (`range(n)`), so a call's batch says which items it ran.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from study_runner import ResilientExecutor
from study_runner.results_file import read_latest
from tests.fakes import FakeTorch
from tests.polling import DeadlineExceeded, wait_until
from trainguard.atomicio import read_json, write_json_atomic

OOM = "CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.15 GiB total capacity)"
ILLEGAL = "CUDA error: an illegal memory access was encountered"
BNB = "Error invalid configuration argument at line 380 in file /src/csrc/ops.cu"


class Model:
    """A fake fn: keeps every call's batch and the items it answered; raises what `fail`
    returns for a batch."""

    def __init__(self, fail: Callable[[list[int]], Exception | None] = lambda batch: None):
        self.fail = fail
        self.calls: list[list[int]] = []
        self.answered: list[int] = []

    def __call__(self, batch: list[int]) -> list[str]:
        self.calls.append(list(batch))
        error = self.fail(batch)
        if error is not None:
            raise error
        self.answered.extend(batch)
        return [f"answer {i}" for i in batch]

    def sizes(self) -> list[int]:
        return [len(call) for call in self.calls]


def answers(records: list[dict[str, object]]) -> dict[int, object]:
    return {r["idx"]: r["prediction"] for r in records}  # type: ignore[misc]


@pytest.fixture
def results(tmp_path: Path) -> Path:
    return tmp_path / "predictions.jsonl"


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def study_log() -> Iterator[list[logging.LogRecord]]:
    """What the executor logs, as it logs it (not caplog: a CLI may stop propagation)."""
    handler = Collect()
    logger = logging.getLogger("study_runner")
    logger.addHandler(handler)
    yield handler.records
    logger.removeHandler(handler)


def test_cuda_oom_halves_the_batch_and_later_batches_start_at_the_size_that_fits(results):
    model = Model(lambda batch: RuntimeError(OOM) if len(batch) > 2 else None)
    records = ResilientExecutor(batch_size=8, results=results).run(range(16), model)
    # 8 and 4 run out of memory, 2 fits; a part already cut to 4 is still tried at 4, but
    # every batch after the first starts at 2 instead of running out of memory twice again.
    assert model.sizes() == [8, 4, 2, 2, 4, 2, 2, 2, 2, 2, 2]
    assert records == [{"idx": i, "prediction": f"answer {i}"} for i in range(16)]


def test_halving_stops_at_min_batch_size_then_items_run_one_by_one(results):
    model = Model(lambda batch: RuntimeError(ILLEGAL) if 5 in batch else None)
    ex = ResilientExecutor(batch_size=8, min_batch_size=4, results=results)
    records = ex.run(range(12), model)
    assert model.calls == [
        [0, 1, 2, 3, 4, 5, 6, 7],
        [0, 1, 2, 3],
        [4, 5, 6, 7],  # at the floor: no batch of 2
        [4], [5], [6], [7],
        [8, 9, 10, 11],  # a CUDA error, unlike an OOM, leaves the batch size as it was
    ]  # fmt: skip
    bad = records[5]
    assert bad["prediction"] == f"[ERROR: RuntimeError: {ILLEGAL}]"
    assert bad["error"] == f"RuntimeError: {ILLEGAL}"
    assert answers(records) == {
        i: bad["prediction"] if i == 5 else f"answer {i}" for i in range(12)
    }
    assert ex.aborted is None


@pytest.mark.parametrize(
    ("error", "calls"),
    [
        # The bitsandbytes kernel error is a CUDA error to the crash detector: halved.
        (Exception(BNB), [[0, 1, 2, 3], [0, 1], [0], [1], [2, 3]]),
        # Any other error: straight to one by one, to find the bad item.
        (ValueError("bad item"), [[0, 1, 2, 3], [0], [1], [2], [3]]),
    ],
)
def test_a_cuda_error_halves_the_batch_and_any_other_error_runs_it_one_by_one(
    results, error, calls
):
    model = Model(lambda batch: error if 1 in batch else None)
    records = ResilientExecutor(batch_size=4, results=results).run(range(4), model)
    assert model.calls == calls
    assert [r["idx"] for r in records if "error" in r] == [1]
    assert records[1]["error"].endswith(str(error))


def test_each_failed_call_counts_and_a_successful_one_resets_the_count(results):
    failing = {1, 2, 4, 5, 7, 8}  # never 3 in a row: 6 failures in all
    model = Model(lambda batch: ValueError("bad item") if batch[0] in failing else None)
    ex = ResilientExecutor(batch_size=1, max_consecutive_failures=3, results=results)
    records = ex.run(range(10), model)
    assert ex.aborted is None
    assert len(model.calls) == 10
    assert [r["idx"] for r in records if "error" in r] == sorted(failing)


def test_halved_retries_count_toward_the_limit(results):
    model = Model(lambda batch: RuntimeError(OOM))
    ex = ResilientExecutor(batch_size=4, max_consecutive_failures=3, results=results)
    records = ex.run(range(10), model)
    assert model.sizes() == [4, 2, 1]
    assert records[0]["prediction"] == f"[ERROR: RuntimeError: {OOM}]"  # tried alone: an error
    assert ex.aborted == "3 consecutive failures"
    assert {r["prediction"] for r in records[1:]} == {"[ABORTED: 3 consecutive failures]"}


def test_n_consecutive_failures_abort_the_run_and_keep_the_partial_results(results):
    model = Model(lambda batch: ValueError("bad item") if batch[0] >= 6 else None)
    ex = ResilientExecutor(batch_size=2, max_consecutive_failures=3, results=results)
    records = ex.run(range(20), model)
    assert model.calls == [[0, 1], [2, 3], [4, 5], [6, 7], [6], [7]]  # nothing after the abort
    assert ex.aborted == "3 consecutive failures"
    assert [r["idx"] for r in records] == list(range(20))
    assert answers(records[:6]) == {i: f"answer {i}" for i in range(6)}
    assert [r["prediction"] for r in records[6:8]] == ["[ERROR: ValueError: bad item]"] * 2
    for record in records[8:]:
        assert record == {
            "idx": record["idx"],
            "prediction": "[ABORTED: 3 consecutive failures]",
            "error": "ValueError: bad item",
        }
    assert read_latest(results) == {r["idx"]: r for r in records}  # all of it on disk


def test_a_non_retryable_error_aborts_at_once(results):
    missing = ModuleNotFoundError("No module named 'flash_attn'")
    model = Model(lambda batch: missing if batch[0] >= 4 else None)
    ex = ResilientExecutor(batch_size=4, max_consecutive_failures=5, results=results)
    records = ex.run(range(12), model)
    assert model.calls == [[0, 1, 2, 3], [4, 5, 6, 7]]  # no retry, no next batch
    reason = "non-retryable import_error: ModuleNotFoundError: No module named 'flash_attn'"
    assert ex.aborted == reason
    assert answers(records[:4]) == {i: f"answer {i}" for i in range(4)}
    assert {r["prediction"] for r in records[4:]} == {f"[ABORTED: {reason}]"}


def test_a_rerun_computes_only_the_items_without_a_prediction(results):
    broken = Model(lambda batch: ValueError("bad item") if batch[0] >= 6 else None)
    ResilientExecutor(batch_size=2, max_consecutive_failures=3, results=results).run(
        range(20), broken
    )
    fixed = Model()
    ex = ResilientExecutor(batch_size=2, max_consecutive_failures=3, results=results)
    records = ex.run(range(20), fixed)
    # The two ERROR items and the twelve ABORTED ones, and nothing the first run answered.
    assert [i for call in fixed.calls for i in call] == list(range(6, 20))
    assert sorted(broken.answered + fixed.answered) == list(range(20))
    # The file still holds the old error records; the latest record of each idx wins.
    assert records == [{"idx": i, "prediction": f"answer {i}"} for i in range(20)]
    assert ex.aborted is None


def test_each_batch_reaches_the_file_while_the_next_one_runs(results):
    seen: list[object] = []

    def fn(batch: list[int]) -> list[int]:
        before = set(range(batch[0]))  # the items of the batches before this one
        try:  # written by the writer's thread, not at the end of the run
            seen.append(wait_until(lambda: set(read_latest(results)) == before, timeout=5))
        except DeadlineExceeded:
            seen.append(sorted(read_latest(results)))
        return batch

    ResilientExecutor(batch_size=3, results=results).run(range(9), fn)
    assert seen == [True, True, True]


def test_a_truncated_last_line_is_ignored_and_the_next_append_starts_on_a_new_line(results):
    results.write_text(
        '{"idx": 0, "prediction": "a0"}\n{"idx": 1, "prediction": "a1"}\n{"idx": 2, "predic'
    )
    model = Model()
    records = ResilientExecutor(batch_size=4, results=results).run(range(4), model)
    assert model.calls == [[2, 3]]
    assert answers(records) == {0: "a0", 1: "a1", 2: "answer 2", 3: "answer 3"}
    lines = results.read_text().splitlines()
    assert lines[2] == '{"idx": 2, "predic'
    assert [json.loads(line) for line in lines[3:]] == records[2:]
    again = Model()  # the truncated line, now in the middle, is still no obstacle
    assert ResilientExecutor(batch_size=4, results=results).run(range(4), again) == records
    assert again.calls == []


def test_a_wrong_number_of_predictions_is_an_error_of_that_batch(tmp_path):
    model = Model()

    def drops_one(batch: list[int]) -> list[str]:
        predictions = model(batch)
        return predictions[:-1] if len(batch) > 1 else predictions

    ex = ResilientExecutor(batch_size=4, results=tmp_path / "a.jsonl")
    assert answers(ex.run(range(4), drops_one)) == {i: f"answer {i}" for i in range(4)}
    assert model.sizes() == [4, 1, 1, 1, 1]

    empty = ResilientExecutor(batch_size=1, results=tmp_path / "b.jsonl")
    records = empty.run(range(2), lambda batch: [])
    assert all("fn returned 0 prediction(s) for 1 item(s)" in r["error"] for r in records)
    assert all(r["prediction"].startswith("[ERROR: ") for r in records)


def test_a_prediction_json_cannot_hold_is_an_error_of_that_batch(results):
    def fn(batch: list[int]) -> list[object]:
        return [{"answer": i} if i != 2 else {"answer": {2, 3}} for i in batch]

    records = ResilientExecutor(batch_size=4, results=results).run(range(4), fn)
    assert [r["prediction"] for r in records if "error" not in r] == [
        {"answer": 0},
        {"answer": 1},
        {"answer": 3},
    ]
    assert "fn returned a prediction JSON cannot hold" in records[2]["error"]
    assert read_latest(results) == {r["idx"]: r for r in records}  # no half-written line


def test_any_string_is_recorded_and_read_back_exactly(results):
    odd = ['ü\n"{}', "a\ud800b", "\x00", "日本語"]  # a lone surrogate: a broken decode
    records = ResilientExecutor(batch_size=4, results=results).run(odd, lambda batch: batch)
    assert [r["prediction"] for r in records] == odd
    assert [read_latest(results)[i]["prediction"] for i in range(4)] == odd


def test_state_json_counters_stay_current_and_its_other_keys_stay(tmp_path, monkeypatch):
    folder = tmp_path / "qwen_8bit"
    folder.mkdir()
    monkeypatch.setenv("TRAINGUARD_EXPERIMENT_DIR", str(folder))
    state = folder / "state.json"
    runner_keys = {"name": "qwen_8bit", "phase": "running", "attempts": 1, "error": None}
    write_json_atomic(state, {**runner_keys, "predictions_complete": None, "total_questions": None})
    seen: list[object] = []

    def counters() -> tuple[object, object]:
        data = read_json(state)
        return data["predictions_complete"], data["total_questions"]

    def fn(batch: list[int]) -> list[int]:
        if batch[0] == 4:  # two batches done: state.json says so while the run goes on
            try:
                seen.append(wait_until(lambda: counters() == (4, 10), timeout=5) and "current")
            except DeadlineExceeded:
                seen.append(counters())
        if 9 in batch:
            raise ValueError("bad item")
        return batch

    ResilientExecutor(batch_size=2).run(range(10), fn)
    assert seen == ["current"]
    assert read_json(state) == {**runner_keys, "predictions_complete": 9, "total_questions": 10}
    assert len(read_latest(folder / "predictions.jsonl")) == 10  # the default results file


def test_no_state_json_is_created_outside_a_study(tmp_path, monkeypatch):
    folder = tmp_path / "experiment"
    monkeypatch.setenv("TRAINGUARD_EXPERIMENT_DIR", str(folder))
    ResilientExecutor(batch_size=2).run(range(4), lambda batch: batch)
    assert sorted(p.name for p in folder.iterdir()) == ["predictions.jsonl"]


def test_a_results_file_is_required_without_study_runner(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="TRAINGUARD_EXPERIMENT_DIR"):
        ResilientExecutor(batch_size=4)
    monkeypatch.setenv("TRAINGUARD_EXPERIMENT_DIR", str(tmp_path))
    assert ResilientExecutor(batch_size=4).results == tmp_path / "predictions.jsonl"


def test_gpu_memory_is_freed_between_attempts_and_only_then(tmp_path, monkeypatch):
    events: list[str] = []
    monkeypatch.setitem(sys.modules, "torch", FakeTorch(events))

    def fn(batch: list[int]) -> list[int]:
        events.append(f"fn({len(batch)})")
        if len(batch) > 2:
            raise RuntimeError(OOM)
        return batch

    ResilientExecutor(batch_size=4, results=tmp_path / "a.jsonl").run(range(4), fn)
    assert events == ["fn(4)", "empty_cache", "fn(2)", "fn(2)"]
    events.clear()
    ResilientExecutor(batch_size=2, results=tmp_path / "b.jsonl").run(range(4), fn)
    assert events == ["fn(2)", "fn(2)"]


def test_the_error_and_its_traceback_are_logged_before_the_retry(results, study_log):
    logged_at_retry: list[str] = []

    def fn(batch: list[int]) -> list[int]:
        if len(batch) > 1:
            raise RuntimeError(OOM)
        logged_at_retry.extend(r.getMessage() for r in study_log)
        return batch

    ResilientExecutor(batch_size=2, results=results).run(range(2), fn)
    first = logged_at_retry[0]
    assert "fn failed on 2 item(s) (idx 0..1) [cuda_oom" in first
    assert "Traceback (most recent call last)" in first
    assert f"RuntimeError: {OOM}" in first


def test_without_the_thread_each_batch_is_written_before_the_next_starts(results):
    on_disk_at_call: list[set[int]] = []

    def fn(batch: list[int]) -> list[int]:
        on_disk_at_call.append(set(read_latest(results)))
        return batch

    ex = ResilientExecutor(batch_size=3, results=results, fsync_interval=None)
    records = ex.run(range(9), fn)
    assert on_disk_at_call == [set(), {0, 1, 2}, {0, 1, 2, 3, 4, 5}]
    assert read_latest(results) == {r["idx"]: r for r in records}


def test_ctrl_c_in_fn_stops_the_run_with_the_done_batches_kept(results):
    def interrupted(batch: list[int]) -> list[str]:
        if batch[0] == 4:
            raise KeyboardInterrupt  # not an error of fn: the user's, never caught
        return [f"answer {i}" for i in batch]

    with pytest.raises(KeyboardInterrupt):
        ResilientExecutor(batch_size=2, results=results).run(range(8), interrupted)
    assert sorted(read_latest(results)) == [0, 1, 2, 3]
    rest = Model()
    ResilientExecutor(batch_size=2, results=results).run(range(8), rest)
    assert rest.calls == [[4, 5], [6, 7]]
