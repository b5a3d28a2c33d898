"""Recovery by crash type (`[watchdog.recovery]`), one action at a time, on real workspaces: the
real config.json rewritten, the real GPU survey reading a FakeNvml (no GPU here) and a kernel
log, and every knob put back by a reset."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from daemon_watchdog.crash_actions import CrashActions, action_for
from daemon_watchdog.knobs import previous_config
from daemon_watchdog.recovery import choose_after_rewind
from daemon_watchdog.workspace_init import init_workspace
from health_check.checks.gpu import survey
from health_check.checks.gpu_model import GpuReading
from tests.fakes import FakeGpu, FakeNvml
from tests.health_check.test_repairs import make_checkpoint, settle
from trainguard.config import HealthSection, load_config
from trainguard.watchdog_status import KnobChange, RecoveryState, WatchdogStatus
from trainguard.workspace import Workspace

BUS0, BUS1 = "00000000:3B:00.0", "00000000:86:00.0"
XID_79_ON_GPU1 = "[ 512.1] NVRM: Xid (PCI:0000:86:00): 79, pid=1, name=python, GPU has fallen off"


def workspace(tmp_path: Path, recovery: str, **job: Any) -> Workspace:
    base = tmp_path / "ws"
    init_workspace(base, job=job or None)
    config = base / "trainguard.toml"
    text = config.read_text().replace(
        "[checkpoints]\n", f"[watchdog.recovery]\n{recovery}\n\n[checkpoints]\n"
    )
    config.write_text(text)
    return Workspace(load_config(config, env={}))


def no_gpus() -> Sequence[GpuReading]:
    return []


def gpus(kernel_log: str = "", *fakes: FakeGpu) -> Any:
    nvml = FakeNvml(list(fakes) or [FakeGpu(bus_id=BUS0), FakeGpu(bus_id=BUS1)])
    health = HealthSection(rocm_smi_command=["/nonexistent/rocm-smi"])

    def read() -> Sequence[GpuReading]:
        return survey(health, budget=5, ours=lambda _p: True, nvml=nvml,
                      kernel_log=lambda: kernel_log).gpus  # fmt: skip

    return read


def job(ws: Workspace) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(ws.job_config.read_text())
    return data


# --- cuda_oom / host_oom: halve a knob ----------------------------------------------------------


def test_an_oom_halves_the_batch_size_in_config_json_keeping_the_file_as_it_was(
    tmp_path: Path,
) -> None:
    ws = workspace(tmp_path, 'cuda_oom = { halve = "config:batch_size", floor = 1 }', batch_size=64)
    before = ws.job_config.read_text()
    actions = CrashActions(ws, no_gpus)
    done = actions.apply(RecoveryState(), category="cuda_oom", evidence="", step=29)
    assert done.fatal is None and done.changed
    assert job(ws)["batch_size"] == 32
    assert previous_config(ws).read_text() == before  # the previous file, kept beside it
    after = ws.job_config.read_text()
    assert [line.split(":")[0] for line in after.splitlines()] == [
        line.split(":")[0] for line in before.splitlines()
    ]  # same keys, same order, same indentation
    assert done.state.knobs == {"config:batch_size": KnobChange(64, 32)}
    assert [e.text for e in done.events] == ["cuda_oom after step 29: config:batch_size 64 -> 32"]
    assert done.state.totals == {"halve": 1}

    again = actions.apply(done.state, category="cuda_oom", evidence="", step=29)
    assert job(ws)["batch_size"] == 16
    assert again.state.knobs == {"config:batch_size": KnobChange(64, 16)}  # the first original
    assert again.state.totals == {"halve": 2}


def test_halving_stops_at_the_floor_and_then_says_fatal(tmp_path: Path) -> None:
    ws = workspace(tmp_path, 'cuda_oom = { halve = "config:batch_size", floor = 5 }', batch_size=9)
    actions = CrashActions(ws, no_gpus)
    first = actions.apply(RecoveryState(), category="cuda_oom", evidence="", step=3)
    assert job(ws)["batch_size"] == 5  # 4 would be below the floor
    assert first.fatal is None
    second = actions.apply(first.state, category="cuda_oom", evidence="", step=3)
    assert second.fatal == (
        "cuda_oom after step 3 with config:batch_size = 5, already at its floor (5): "
        "halving it again cannot help"
    )
    assert job(ws)["batch_size"] == 5 and not second.changed


def test_gradient_accumulation_doubles_with_the_halved_batch(tmp_path: Path) -> None:
    ws = workspace(
        tmp_path,
        'cuda_oom = { halve = "config:batch_size", double = "config:train.grad_accum" }',
        batch_size=64,
    )
    data = job(ws)
    data["train"] = {"grad_accum": 3}
    ws.job_config.write_text(json.dumps(data))  # compact, one line: kept compact
    done = CrashActions(ws, no_gpus).apply(RecoveryState(), category="cuda_oom", evidence="",
                                          step=7)  # fmt: skip
    assert (job(ws)["batch_size"], job(ws)["train"]) == (32, {"grad_accum": 6})
    assert len(ws.job_config.read_text().splitlines()) == 1
    assert [e.action for e in done.events] == ["halve", "double"]


def test_the_backup_is_the_file_as_it_was_before_both_keys_changed(tmp_path: Path) -> None:
    ws = workspace(
        tmp_path,
        'cuda_oom = { halve = "config:batch_size", double = "config:grad_accum" }',
        batch_size=64,
    )
    ws.job_config.write_text(json.dumps({**job(ws), "grad_accum": 3}, indent=2) + "\n")
    before = ws.job_config.read_text()
    CrashActions(ws, no_gpus).apply(RecoveryState(), category="cuda_oom", evidence="", step=7)
    assert (job(ws)["batch_size"], job(ws)["grad_accum"]) == (32, 6)
    assert previous_config(ws).read_text() == before


def test_an_environment_knob_is_halved_in_the_daemons_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws = workspace(tmp_path, 'host_oom = { halve = "env:BATCH_SIZE", floor = 1 }')
    actions = CrashActions(ws, no_gpus)
    monkeypatch.delenv("BATCH_SIZE", raising=False)
    unset = actions.apply(RecoveryState(), category="host_oom", evidence="", step=5)
    assert unset.fatal is None and not unset.changed
    assert [e.text for e in unset.events] == [
        "host_oom after step 5: cannot halve: env:BATCH_SIZE is unset, not a number; "
        "restarting unchanged"
    ]
    monkeypatch.setenv("BATCH_SIZE", "12")
    done = actions.apply(RecoveryState(), category="host_oom", evidence="", step=5)
    assert done.state.env() == {"BATCH_SIZE": "6"}
    again = actions.apply(done.state, category="host_oom", evidence="", step=5)
    assert again.state.env() == {"BATCH_SIZE": "3"}
    assert again.state.knobs["env:BATCH_SIZE"] == KnobChange("12", "3")


@pytest.mark.parametrize(
    ("content", "why"),
    [
        ("{not json", "config:batch_size: {path} is not JSON (Expecting property name"),
        ('{"lr": 0.1}', "config:batch_size: no key 'batch_size' in {path}"),
        ('{"batch_size": "big"}', 'config:batch_size is "big", not a number'),
    ],
)
def test_a_knob_that_cannot_be_changed_is_one_line_and_the_restart_goes_on(
    tmp_path: Path, content: str, why: str
) -> None:
    ws = workspace(tmp_path, 'cuda_oom = { halve = "config:batch_size" }')
    ws.job_config.write_text(content)
    done = CrashActions(ws, no_gpus).apply(RecoveryState(), category="cuda_oom", evidence="",
                                          step=1)  # fmt: skip
    assert done.fatal is None and not done.changed and done.state.knobs == {}
    (event,) = done.events
    assert event.action == "skipped" and "\n" not in event.text
    assert why.format(path=ws.job_config) in event.text
    assert event.text.endswith("restarting unchanged")
    assert ws.job_config.read_text() == content  # never rewritten
    assert not previous_config(ws).exists()


def test_a_config_json_replaced_by_a_fifo_is_never_opened_for_reading(tmp_path: Path) -> None:
    ws = workspace(tmp_path, 'cuda_oom = { halve = "config:batch_size" }')
    ws.job_config.unlink()
    os.mkfifo(ws.job_config)  # no writer: a plain open would wait forever
    done = CrashActions(ws, no_gpus).apply(RecoveryState(), category="cuda_oom", evidence="",
                                          step=1)  # fmt: skip
    (event,) = done.events
    assert event.action == "skipped" and "not a regular file (a FIFO)" in event.text, event.text


def test_no_action_is_taken_unless_configured(tmp_path: Path) -> None:
    ws = workspace(tmp_path, 'host_oom = { halve = "config:batch_size" }', batch_size=64)
    for category in ("cuda_oom", "nan_loss", "gpu_hardware", "segfault", "unknown"):
        done = CrashActions(ws, gpus(XID_79_ON_GPU1)).apply(
            RecoveryState(), category=category, evidence=XID_79_ON_GPU1, step=1
        )
        assert done.events == [] and done.state == RecoveryState()
    assert job(ws)["batch_size"] == 64


# --- gpu_hardware: leave the failed GPU out -----------------------------------------------------


def test_an_xid_79_on_gpu_1_restarts_without_gpu_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("CUDA_DEVICE_ORDER", raising=False)
    ws = workspace(tmp_path, "gpu_hardware = { exclude_gpu = true, min_gpus = 1 }")
    done = CrashActions(ws, gpus(XID_79_ON_GPU1)).apply(
        RecoveryState(), category="gpu_hardware", evidence="GPU has fallen off the bus", step=12
    )
    assert done.fatal is None
    assert done.state.env() == {"CUDA_VISIBLE_DEVICES": "0", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    assert done.state.totals == {"exclude_gpu": 1}  # the device order is part of it
    assert done.events[0].text == (
        "gpu_hardware after step 12: GPU1 (Xid 79: GPU has fallen off the bus): "
        "env:CUDA_VISIBLE_DEVICES unset -> 0"
    )


def test_a_gpu_left_out_below_min_gpus_is_fatal_and_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    ws = workspace(tmp_path, "gpu_hardware = { min_gpus = 2 }")
    done = CrashActions(ws, gpus(XID_79_ON_GPU1)).apply(
        RecoveryState(), category="gpu_hardware", evidence="", step=12
    )
    assert done.fatal == (
        "gpu_hardware after step 12: GPU1 (Xid 79: GPU has fallen off the bus) failed; without "
        "it 1 GPU(s) would remain, fewer than min_gpus (2)"
    )
    assert done.state.knobs == {}


def test_a_cuda_error_with_ecc_evidence_is_treated_as_a_gpu_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    ws = workspace(tmp_path, "gpu_hardware = { min_gpus = 1 }")
    rules = ws.config.watchdog.recovery
    ecc = "RuntimeError: CUDA error: uncorrectable ECC error encountered"
    assert action_for(rules, "cuda_error", ecc) == "gpu_hardware"
    assert action_for(rules, "cuda_error", "CUDA error: an illegal memory access") is None
    broken = FakeGpu(bus_id=BUS1, ecc_volatile_uncorrected=2)
    done = CrashActions(ws, gpus("", FakeGpu(bus_id=BUS0), broken)).apply(
        RecoveryState(), category="cuda_error", evidence=ecc, step=4
    )
    assert done.state.env()["CUDA_VISIBLE_DEVICES"] == "0", done.events
    assert "GPU1 (2 volatile uncorrected ECC errors" in done.events[0].text, done.events


def test_with_no_gpu_reporting_a_fault_the_gpus_stay(tmp_path: Path) -> None:
    ws = workspace(tmp_path, "gpu_hardware = { min_gpus = 1 }")
    done = CrashActions(ws, gpus("")).apply(
        RecoveryState(), category="gpu_hardware", evidence="", step=4
    )
    assert done.state.knobs == {} and done.fatal is None
    assert "no GPU reports a hardware fault" in done.events[0].text


# --- nan_loss: rewind, scale ---------------------------------------------------------------------


def test_a_rewind_moves_the_newest_valid_checkpoints_aside_but_keeps_one(tmp_path: Path) -> None:
    ws = workspace(tmp_path, "nan_loss = { rewind = 1 }")
    for step in (10, 20, 30):
        make_checkpoint(ws.checkpoints_dir, step)
    settle(ws.checkpoints_dir)
    chosen, rewound = choose_after_rewind(ws, 1)
    assert rewound == ["checkpoint-30"]
    assert chosen is not None and chosen.path.name == "checkpoint-20"
    assert (ws.checkpoints_dir / "quarantine").is_dir()
    assert choose_after_rewind(ws, 5)[1] == ["checkpoint-20"]  # never the last one
    assert sorted(p.name for p in ws.checkpoints_dir.glob("checkpoint-*")) == ["checkpoint-10"]


def test_nan_loss_scales_the_learning_rate_and_names_the_rewind(tmp_path: Path) -> None:
    ws = workspace(
        tmp_path, 'nan_loss = { rewind = 1, scale = "config:learning_rate", factor = 0.5 }'
    )
    lr = job(ws)["learning_rate"]
    done = CrashActions(ws, no_gpus).apply(
        RecoveryState(), category="nan_loss", evidence="", step=40, rewound=["checkpoint-30"]
    )
    assert job(ws)["learning_rate"] == lr * 0.5
    assert [e.action for e in done.events] == ["rewind", "scale"]
    assert "rewound past checkpoint-30" in done.events[0].text


# --- reset ----------------------------------------------------------------------------------------


def test_a_reset_puts_every_knob_back_but_not_over_someone_elses_edit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BATCH_SIZE", "8")
    ws = workspace(
        tmp_path,
        'cuda_oom = { halve = "config:batch_size" }\nhost_oom = { halve = "env:BATCH_SIZE" }\n'
        'nan_loss = { rewind = 0, scale = "config:learning_rate" }',
        batch_size=64,
    )
    lr = job(ws)["learning_rate"]
    actions = CrashActions(ws, no_gpus)
    state = actions.apply(RecoveryState(), category="cuda_oom", evidence="", step=1).state
    state = actions.apply(state, category="host_oom", evidence="", step=1).state
    state = actions.apply(state, category="nan_loss", evidence="", step=1).state
    assert set(state.knobs) == {"config:batch_size", "env:BATCH_SIZE", "config:learning_rate"}
    data = job(ws)
    data["learning_rate"] = 0.001  # the operator's own change since
    ws.job_config.write_text(json.dumps(data, indent=2))

    reset = actions.reset(state)
    assert job(ws)["batch_size"] == 64 and job(ws)["learning_rate"] == 0.001 != lr
    assert reset.state.knobs == {} and reset.state.env() == {}
    texts = [e.text for e in reset.events]
    assert "reset: config:batch_size 32 -> 64" in texts
    assert "reset: env:BATCH_SIZE 4 -> 8" in texts
    assert any("config:learning_rate is 0.001 now" in t and "left as it is" in t for t in texts)
    assert reset.state.totals["reset"] == 2


def test_the_recovery_record_survives_the_state_file_round_trip(tmp_path: Path) -> None:
    ws = workspace(tmp_path, 'cuda_oom = { halve = "config:batch_size" }', batch_size=64)
    state = CrashActions(ws, no_gpus).apply(RecoveryState(), category="cuda_oom", evidence="",
                                            step=1).state  # fmt: skip
    written = WatchdogStatus("RUNNING", recovery=state).write(tmp_path / "w.json")
    read = WatchdogStatus.from_json(json.loads((tmp_path / "w.json").read_text()))
    assert read is not None and read.recovery == written.recovery == state
    garbage = WatchdogStatus.from_json(
        {"state": "RUNNING", "recovery": {"knobs": [1], "events": 3}}
    )
    assert garbage is not None and garbage.recovery == RecoveryState()


@pytest.mark.parametrize("own", [False, True])
def test_the_init_templates_recovery_examples_are_valid_once_uncommented(
    tmp_path: Path, own: bool
) -> None:
    base = tmp_path / "ws"
    if own:
        from daemon_watchdog.workspace_init import init_own_workspace

        init_own_workspace(base, ["python3", "train.py"])
    else:
        init_workspace(base)
    config = base / "trainguard.toml"
    lines = config.read_text().splitlines()
    start = lines.index("# [watchdog.recovery]")
    n = start + 1
    while lines[n].startswith("# ") and " = { " in lines[n]:
        lines[n] = lines[n][2:]
        n += 1
    lines[start] = "[watchdog.recovery]"
    config.write_text("\n".join(lines) + "\n")
    rules = load_config(config, env={}).watchdog.recovery
    configured = [name for name in ("cuda_oom", "host_oom", "gpu_hardware", "nan_loss",
                                    "disk_full") if getattr(rules, name) is not None]  # fmt: skip
    assert configured == (
        ["cuda_oom", "gpu_hardware", "nan_loss", "disk_full"] if own else
        ["cuda_oom", "host_oom", "gpu_hardware", "nan_loss", "disk_full"]
    )  # fmt: skip


def test_a_reset_that_cannot_write_keeps_the_knob_for_the_next_reset(tmp_path: Path) -> None:
    ws = workspace(tmp_path, 'cuda_oom = { halve = "config:batch_size" }', batch_size=64)
    actions = CrashActions(ws, no_gpus)
    state = actions.apply(RecoveryState(), category="cuda_oom", evidence="", step=1).state
    good = ws.job_config.read_text()
    ws.job_config.write_text("{half a file")
    failed = actions.reset(state)
    assert failed.state.knobs == state.knobs
    last = failed.events[-1].text
    assert last.startswith("reset: config:batch_size: ") and "is not JSON" in last, last
    assert last.endswith("; still changed"), last
    ws.job_config.write_text(good)
    done = actions.reset(failed.state)
    assert done.state.knobs == {} and job(ws)["batch_size"] == 64
    noop = actions.reset(done.state)
    assert [e.action for e in noop.events] == ["noop"] and noop.state.totals == done.state.totals


def test_config_json_keeps_its_permissions_and_its_symlink(tmp_path: Path) -> None:
    ws = workspace(tmp_path, 'cuda_oom = { halve = "config:batch_size" }', batch_size=64)
    real = tmp_path / "elsewhere.json"
    real.write_text(ws.job_config.read_text())
    real.chmod(0o600)
    ws.job_config.unlink()
    ws.job_config.symlink_to(real)
    CrashActions(ws, no_gpus).apply(RecoveryState(), category="cuda_oom", evidence="", step=1)
    assert ws.job_config.is_symlink() and json.loads(real.read_text())["batch_size"] == 32
    assert real.stat().st_mode & 0o777 == 0o600
    assert previous_config(ws).stat().st_mode & 0o777 == 0o600


def test_an_action_that_breaks_half_way_keeps_and_says_what_it_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws = workspace(
        tmp_path,
        'cuda_oom = { halve = "config:batch_size", double = "config:learning_rate" }',
        batch_size=64,
    )
    from daemon_watchdog import crash_actions, knobs

    real_write = knobs.write_config_key
    calls: list[str] = []

    def second_write_breaks(ws_: Workspace, knob: str, value: object, *, backup: bool) -> None:
        calls.append(knob)
        if len(calls) == 2:
            raise RuntimeError("disk on fire")
        real_write(ws_, knob, value, backup=backup)  # type: ignore[arg-type]

    monkeypatch.setattr(crash_actions, "write_config_key", second_write_breaks)
    done = CrashActions(ws, no_gpus).apply(RecoveryState(), category="cuda_oom", evidence="",
                                          step=3)  # fmt: skip
    assert job(ws)["batch_size"] == 32 and done.state.knobs["config:batch_size"].value == 32
    assert done.events[-1].text == (
        "cuda_oom after step 3: the recovery action failed (RuntimeError: disk on fire); "
        "restarting with what it changed so far"
    )


def test_a_rewind_past_lightning_files_takes_last_ckpt_with_it(tmp_path: Path) -> None:
    from tests.trainguard.test_checkpoints import write_lightning_ckpt

    workspace(tmp_path, "nan_loss = { rewind = 1 }")
    config = tmp_path / "ws" / "trainguard.toml"
    config.write_text(
        config.read_text().replace('pattern = "checkpoint-*"', 'pattern = "*.ckpt"')
        .replace('required_files = ["trainer_state.json"]', "required_files = []")
    )  # fmt: skip
    ws = Workspace(load_config(config, env={}))
    now = 1_700_000_000.0
    for step in (10, 20):
        path = ws.checkpoints_dir / f"epoch=0-step={step}.ckpt"
        write_lightning_ckpt(path)
        os.utime(path, (now + step, now + step))
    write_lightning_ckpt(ws.checkpoints_dir / "last.ckpt")
    os.utime(ws.checkpoints_dir / "last.ckpt", (now + 21, now + 21))
    chosen, rewound = choose_after_rewind(ws, 1)
    assert rewound == ["last.ckpt", "epoch=0-step=20.ckpt"]
    assert chosen is not None and chosen.path.name == "epoch=0-step=10.ckpt"


def test_the_original_is_on_record_before_config_json_changes(tmp_path: Path) -> None:
    ws = workspace(tmp_path, 'cuda_oom = { halve = "config:batch_size" }', batch_size=64)
    seen: list[tuple[dict[str, KnobChange], int]] = []

    def record(state: RecoveryState) -> None:  # what the watchdog's state file gets, and when
        seen.append((dict(state.knobs), job(ws)["batch_size"]))

    CrashActions(ws, no_gpus, record).apply(RecoveryState(), category="cuda_oom", evidence="",
                                            step=1)  # fmt: skip
    assert seen == [({"config:batch_size": KnobChange(64, 32)}, 64)]
    assert job(ws)["batch_size"] == 32
    previous_config(ws).unlink()
    previous_config(ws).mkdir()  # where the previous file goes: the write fails, even as root
    seen.clear()
    done = CrashActions(ws, no_gpus, record).apply(RecoveryState(), category="cuda_oom",
                                                  evidence="", step=1)  # fmt: skip
    assert [knobs for knobs, _ in seen] == [{"config:batch_size": KnobChange(32, 16)}, {}]
    assert not done.changed and done.state.knobs == {} and job(ws)["batch_size"] == 32


def test_a_hugging_face_arguments_file_is_the_job_config_it_halves(tmp_path: Path) -> None:
    """HF example scripts take one JSON file of arguments (`python run_clm.py args.json`)."""
    base = tmp_path / "hf"
    base.mkdir()
    args = {"output_dir": "checkpoints", "per_device_train_batch_size": 16,
            "gradient_accumulation_steps": 2, "learning_rate": 5e-5}  # fmt: skip
    (base / "args.json").write_text(json.dumps(args, indent=2))
    (base / "trainguard.toml").write_text(
        '[daemon]\ncommand = ["python3", "run_clm.py", "args.json"]\n\n'
        '[watchdog.recovery]\ncuda_oom = { halve = "config:per_device_train_batch_size", '
        'double = "config:gradient_accumulation_steps" }\n\n'
        '[health]\njob_config = "args.json"\njob_config_required_keys = ["output_dir"]\n'
    )
    ws = Workspace(load_config(base / "trainguard.toml", env={}))
    CrashActions(ws, no_gpus).apply(RecoveryState(), category="cuda_oom", evidence="", step=9)
    now = json.loads((base / "args.json").read_text())
    assert now == {**args, "per_device_train_batch_size": 8, "gradient_accumulation_steps": 4}
