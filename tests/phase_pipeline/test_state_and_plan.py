"""The state file's INI both ways and the plan, without processes."""

from __future__ import annotations

from pathlib import Path

import pytest

from phase_pipeline.pipeline_file import Pipeline, load_pipeline
from phase_pipeline.plan import blocked_by, next_phase, plan, statuses_for, wanted, with_checkpoint
from phase_pipeline.state_file import PipelineState, StateFileError, parse_state, render
from task_queue.backends.local import plan_slots, whole_machine
from trainguard.errors import UsageError

SEED = """[metadata]
version=3.1.0
start_time=1736201422
base_output_dir=runs/latentwire_unified_20240115_143022
[phases]
training=completed
phase1_statistical=in_progress
[checkpoints]
checkpoint_path=runs/latentwire_unified_20240115_143022/checkpoint/epoch23
[failures]
failure_count=1
last_failure=phase2_linear_probe
last_failure_time=2024-01-15T22:45:22Z
"""

PIPELINE = """
name = "p"
[[phases]]
name = "training"
command = ["{python}", "t.py"]
provides_checkpoint = "checkpoint/*"
[[phases]]
name = "aggregate"
command = ["a"]
depends_on = ["stats", "probe"]
[[phases]]
name = "stats"
command = ["s", "{checkpoint}"]
depends_on = ["training"]
[[phases]]
name = "probe"
command = ["p"]
depends_on = ["training"]
[[phases]]
name = "efficiency"
command = ["e"]
"""


def test_the_seed_s_state_file_reads_as_written_and_writes_back_in_its_shape() -> None:
    state = parse_state(SEED, "s")
    assert state.phases == {"training": "completed", "phase1_statistical": "in_progress"}
    assert state.start_time == 1736201422 and state.failure_count == 1
    assert state.last_failure == "phase2_linear_probe"
    assert state.checkpoint_path.endswith("checkpoint/epoch23")
    text = render(state)
    assert parse_state(text, "again") == state
    sections = [line for line in text.splitlines() if line.startswith("[")]
    assert sections == ["[metadata]", "[phases]", "[checkpoints]", "[failures]"]
    assert "training=completed\n" in text and "failure_count=1\n" in text


def test_hand_added_metadata_and_case_of_phase_names_survive() -> None:
    state = parse_state(SEED.replace("[phases]", "note=seed 3\n[phases]\nLinearProbe=pending"), "s")
    assert state.extra == {"note": "seed 3"} and "LinearProbe" in state.phases
    assert parse_state(render(state), "again") == state


@pytest.mark.parametrize(
    ("edit", "says"),
    [
        (("training=completed", "training=complete"), "s:6: training='complete': must be one of"),
        (("failure_count=1", "failure_count=one"), "s:11: failure_count must be a whole number"),
        (("start_time=1736201422", "start_time=yesterday"), "s:3: start_time must be epoch"),
        (("training=completed", "training=completed\ntraining=failed"), "s:7: option 'training'"),
        (("[checkpoints]", "[phases]"), "s:8: section 'phases' already exists"),
        (("training=completed", "training completed"), "s:6: cannot parse 'training completed'"),
    ],
)
def test_a_bad_edit_names_its_line(edit: tuple[str, str], says: str) -> None:
    with pytest.raises(StateFileError) as caught:
        parse_state(SEED.replace(*edit), "s")
    assert says in str(caught.value)
    assert caught.value.exit_code == 78


def test_a_phase_the_pipeline_lacks_is_refused_where_the_pipeline_is_known() -> None:
    with pytest.raises(StateFileError, match=r"s:7: no phase 'phase1_statistical'"):
        parse_state(SEED, "s", ["training", "phase2"])


@pytest.fixture
def pipeline(tmp_path: Path) -> Pipeline:
    (tmp_path / "PIPELINE.toml").write_text(PIPELINE)
    return load_pipeline(tmp_path / "PIPELINE.toml")


def test_phases_run_after_what_they_depend_on_else_in_file_order(pipeline: Pipeline) -> None:
    assert pipeline.names == ["training", "stats", "probe", "aggregate", "efficiency"]
    assert pipeline.dependants("training") == ["stats", "probe", "aggregate"]
    assert pipeline.dependants("probe") == ["aggregate"]


def test_a_failure_blocks_its_dependants_and_nothing_else(pipeline: Pipeline) -> None:
    statuses = statuses_for(pipeline, {"training": "completed"})
    want = wanted(pipeline, statuses, ())
    assert want == ["stats", "probe", "aggregate", "efficiency"]
    statuses["stats"] = "completed"
    statuses["probe"] = "failed"
    tried = ["stats", "probe"]
    assert next_phase(pipeline, statuses, want, tried) == "efficiency"
    assert next_phase(pipeline, statuses, want, [*tried, "efficiency"]) is None
    assert blocked_by(pipeline, statuses, "aggregate") == "probe"
    failed_training = statuses_for(pipeline, {"training": "failed"})
    assert blocked_by(pipeline, failed_training, "aggregate") == "training"


def test_the_plan_says_why(pipeline: Pipeline) -> None:
    statuses = statuses_for(
        pipeline, {"training": "completed", "stats": "in_progress", "probe": "failed"}
    )
    steps = {s.phase: (s.action, s.why) for s in plan(pipeline, statuses)}
    assert steps["training"] == ("skip", "completed")
    assert steps["stats"][0] == "run" and "did not finish" in steps["stats"][1]
    assert steps["probe"] == ("run", "failed: run again")
    assert steps["aggregate"] == ("run", "pending")
    only = {s.phase: s.action for s in plan(pipeline, statuses, ("training",))}
    assert only == dict.fromkeys(pipeline.names, "skip") | {"training": "run"}


def test_checkpoint_marks_the_providers_completed_and_phase_checks_needs(
    pipeline: Pipeline,
) -> None:
    fresh = statuses_for(pipeline, {})
    with pytest.raises(UsageError, match="--phase stats: it depends on training, which is pending"):
        wanted(pipeline, fresh, ("stats",))
    given = with_checkpoint(pipeline, fresh)
    assert given["training"] == "completed" and given["stats"] == "pending"
    assert wanted(pipeline, given, ("stats",)) == ["stats"]
    assert wanted(pipeline, fresh, ("stats", "training")) == ["training", "stats"]


def test_a_pipeline_worker_sees_every_gpu_not_excluded_a_queue_slot_one() -> None:
    whole = whole_machine(host="h", visible=[0, 1, 2, 3], excluded=[2])
    assert whole.gpus == (0, 1, 3) and whole.visible == "0,1,3"
    assert whole_machine(host="h", visible=[], excluded=[]).visible == ""
    slots = plan_slots("auto", host="h", visible=[0, 1, 2], excluded=[1])
    assert [(s.name, s.visible) for s in slots] == [("h/slot0", "0"), ("h/slot1", "2")]
    assert [s.gpus for s in plan_slots(2, host="h", visible=[], excluded=[])] == [(), ()]


def test_state_render_keeps_empty_values_readable() -> None:
    state = PipelineState("p", "/x/P.toml", "", 1, "/x/runs/p_1", {"a": "pending"})
    text = render(state)
    assert "checkpoint_path=\n" in text and "last_failure=\n" in text
    assert parse_state(text, "s") == state
