"""Checkpoint discovery, validation, quarantine and pruning, on real files in tmp dirs."""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import socket
import struct
import threading
import zipfile
import zlib
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save, save_file

from tests.polling import wait_until
from trainguard import checkpoint_validation, checkpoints, safetensors_header, torch_zip
from trainguard.checkpoints import (
    list_checkpoints,
    newest_valid,
    prune,
    quarantine,
    validate_checkpoint,
)
from trainguard.config import CheckpointsSection

RULES = CheckpointsSection()


def keep(n: int, **more: Any) -> CheckpointsSection:
    return CheckpointsSection(keep_last=n, **more)


TENSOR_PAYLOAD = np.arange(64, dtype=np.float32)


def make_checkpoint(root: Path, step: int, *, name: str | None = None) -> Path:
    """A checkpoint as a Hugging Face trainer leaves it: weights plus trainer_state.json."""
    folder = root / (name or f"checkpoint-{step}")
    folder.mkdir(parents=True)
    rng = np.random.default_rng(step)
    tensors: dict[str, npt.NDArray[Any]] = {
        "layer.weight": rng.standard_normal((4, 3)).astype(np.float32),
        "layer.bias": rng.standard_normal(3).astype(np.float16),
        "steps": np.arange(5, dtype=np.int64),
    }
    save_file(tensors, folder / "model.safetensors", metadata={"format": "np"})
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step, "epoch": 1.0}))
    return folder


def write_torch_zip(path: Path) -> None:
    """The layout torch.save (>= 1.6) writes: a stored zip with data.pkl and raw storages."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({"state": {}}, protocol=2))
        archive.writestr("archive/data/0", TENSOR_PAYLOAD.tobytes())
        archive.writestr("archive/version", "3\n")


def write_raw_safetensors(path: Path, header: dict[str, Any], data: bytes) -> None:
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + data)


def f32(begin: int, count: int) -> dict[str, Any]:
    return {"dtype": "F32", "shape": [count], "data_offsets": [begin, begin + 4 * count]}


SPEC_HEADERS = [
    pytest.param({"t": {"dtype": "F4", "shape": [2, 3], "data_offsets": [0, 3]}}, 3, id="f4"),
    pytest.param({"t": {"dtype": "F6_E2M3", "shape": [4], "data_offsets": [0, 3]}}, 3, id="f6"),
    pytest.param(
        {"empty": {"dtype": "BF16", "shape": [0, 7], "data_offsets": [0, 0]}, "a": f32(0, 1)},
        4,
        id="zero-size-tensor",
    ),
    pytest.param(
        {"__metadata__": {"k": "v"}, "b": f32(4, 1), "a": f32(0, 1)}, 8, id="metadata-unsorted"
    ),
    pytest.param(
        {
            "s": {"dtype": "C64", "shape": [], "data_offsets": [0, 8]},
            "x": {"dtype": "BOOL", "shape": [1], "data_offsets": [8, 9]},
        },
        9,
        id="scalar-and-bool",
    ),
    pytest.param({}, 0, id="no-tensors"),
]

BROKEN_HEADERS = [
    pytest.param({"a": f32(0, 2), "b": f32(4, 2)}, 12, "overlaps", id="overlap"),
    pytest.param(
        {"a": f32(0, 1), "b": f32(8, 1)}, 12, "gap in the data before tensor 'b'", id="hole"
    ),
    pytest.param({"a": f32(4, 1)}, 8, "gap in the data before tensor 'a'", id="hole-at-start"),
    pytest.param({"a": f32(0, 1)}, 8, "4 trailing data bytes belong to no tensor", id="tail"),
    pytest.param({"a": f32(0, 2)}, 4, "truncated", id="past-end"),
    pytest.param(
        {"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, 8, "needs 12", id="size"
    ),
    pytest.param(
        {"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}},
        4,
        "begin 4 > end 0",
        id="reversed-offsets",
    ),
    pytest.param(
        {"a": {"dtype": "F31", "shape": [1], "data_offsets": [0, 4]}},
        4,
        "unknown dtype 'F31'",
        id="unknown-dtype",
    ),
    pytest.param(
        {"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}},
        4,
        "shape [-1]",
        id="negative-dim",
    ),
    pytest.param(
        {"a": {"dtype": "F32", "shape": [True], "data_offsets": [0, 4]}},
        4,
        "shape [True]",
        id="bool-dim",
    ),
    pytest.param(
        {"a": {"dtype": "F32", "shape": [1], "data_offsets": [0]}},
        4,
        "data_offsets [0]",
        id="one-offset",
    ),
    pytest.param(
        {"a": {"dtype": "F4", "shape": [3], "data_offsets": [0, 1]}},
        1,
        "whole bytes",
        id="subbyte-misaligned",
    ),
    pytest.param({"a": [1, 2]}, 0, "entry is not an object", id="entry-not-object"),
    pytest.param(
        {"__metadata__": {"k": 1}, "a": f32(0, 1)}, 4, "__metadata__", id="metadata-not-strings"
    ),
]


@pytest.fixture
def ckpt(tmp_path: Path) -> Path:
    return make_checkpoint(tmp_path / "checkpoints", 10)


def reason_of(folder: Path) -> str:
    valid, reason = validate_checkpoint(folder)
    assert not valid
    assert reason is not None
    return reason


# --- valid checkpoints -------------------------------------------------------------------------


def test_checkpoint_written_by_safetensors_is_valid(ckpt: Path) -> None:
    assert validate_checkpoint(ckpt) == (True, None)


def test_checkpoint_with_torch_zip_legacy_pickle_and_shards_is_valid(ckpt: Path) -> None:
    write_torch_zip(ckpt / "optimizer.pt")
    (ckpt / "rng_state.pth").write_bytes(pickle.dumps({"seed": 1}, protocol=2))
    (ckpt / "config.json").write_text("{}")
    shards = ckpt / "shards"
    shards.mkdir()
    save_file({"a": np.ones(3, dtype=np.float32)}, shards / "model-00001-of-00002.safetensors")
    save_file({"b": np.ones(2, dtype=np.uint8)}, shards / "model-00002-of-00002.safetensors")
    index = {
        "weight_map": {
            "a": "model-00001-of-00002.safetensors",
            "b": "model-00002-of-00002.safetensors",
        }
    }
    (shards / "model.safetensors.index.json").write_text(json.dumps(index))
    assert validate_checkpoint(ckpt) == (True, None)


def test_folder_without_a_required_file_is_an_unfinished_save(ckpt: Path) -> None:
    (ckpt / "trainer_state.json").unlink()  # Hugging Face writes it after weights and optimizer
    assert reason_of(ckpt) == "trainer_state.json missing: an unfinished save (required_files)"
    assert validate_checkpoint(ckpt, CheckpointsSection(required_files=[])) == (True, None)
    done = CheckpointsSection(required_files=["model.safetensors", "done.flag"])
    assert validate_checkpoint(ckpt, done) == (
        False,
        "done.flag missing: an unfinished save (required_files)",
    )


@pytest.mark.parametrize(("header", "data_size"), SPEC_HEADERS)
def test_hand_written_headers_following_the_spec_are_valid(
    ckpt: Path, header: dict[str, Any], data_size: int
) -> None:
    write_raw_safetensors(ckpt / "model.safetensors", header, b"\0" * data_size)
    assert validate_checkpoint(ckpt) == (True, None)


# --- damaged safetensors -----------------------------------------------------------------------


def test_truncated_safetensors_is_invalid_with_reason(ckpt: Path) -> None:
    weights = ckpt / "model.safetensors"
    blob = weights.read_bytes()
    (header_len,) = struct.unpack("<Q", blob[:8])
    data_start = 8 + header_len
    cuts = [3, 8, 9, 8 + header_len // 2, data_start - 1, data_start, data_start + 5, len(blob) - 1]
    for cut in cuts:
        weights.write_bytes(blob[:cut])
        reason = reason_of(ckpt)
        assert reason.startswith("model.safetensors: "), (cut, reason)


def test_safetensors_cut_inside_the_data_is_reported_as_truncated(ckpt: Path) -> None:
    weights = ckpt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1])
    assert "truncated" in reason_of(ckpt)


@settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_any_truncation_of_a_valid_safetensors_file_is_detected(
    tmp_path: Path, data: st.DataObject
) -> None:
    blob = save({"w": np.ones((3, 5), dtype=np.float32), "i": np.arange(7, dtype=np.int16)})
    cut = data.draw(st.integers(min_value=0, max_value=len(blob) - 1), label="cut")
    folder = tmp_path / "checkpoint-1"
    folder.mkdir(exist_ok=True)
    (folder / "model.safetensors").write_bytes(blob[:cut])
    valid, reason = validate_checkpoint(folder, CheckpointsSection(required_files=[]))
    assert not valid
    assert reason is not None and reason.startswith("model.safetensors: ")


def test_zero_length_weights_file_is_invalid(ckpt: Path) -> None:
    (ckpt / "model.safetensors").write_bytes(b"")
    assert reason_of(ckpt) == "model.safetensors: empty file"


def test_garbage_bytes_in_place_of_safetensors_are_invalid(ckpt: Path) -> None:
    (ckpt / "model.safetensors").write_bytes(b"this is not a safetensors file at all\n" * 20)
    assert reason_of(ckpt).startswith("model.safetensors: header length")


def test_header_length_larger_than_the_file_is_invalid(ckpt: Path) -> None:
    (ckpt / "model.safetensors").write_bytes(struct.pack("<Q", 9999) + b"{" * 112)
    assert reason_of(ckpt) == "model.safetensors: header length 9999 exceeds file size 120"


def test_header_length_over_the_100mb_cap_is_refused_before_reading(ckpt: Path) -> None:
    (ckpt / "model.safetensors").write_bytes(struct.pack("<Q", 100_000_001) + b"{}")
    assert "100000000-byte limit" in reason_of(ckpt)


@pytest.mark.parametrize(("header", "data_size", "expected"), BROKEN_HEADERS)
def test_inconsistent_header_is_invalid(
    ckpt: Path, header: dict[str, Any], data_size: int, expected: str
) -> None:
    write_raw_safetensors(ckpt / "model.safetensors", header, b"\0" * data_size)
    assert expected in reason_of(ckpt)


@pytest.mark.parametrize(
    ("header", "data_size", "valid"),
    [pytest.param(*p.values, True, id=p.id) for p in SPEC_HEADERS]
    + [pytest.param(*p.values[:2], False, id=p.id) for p in BROKEN_HEADERS],
)
def test_verdict_agrees_with_the_reference_safetensors_reader(
    tmp_path: Path, header: dict[str, Any], data_size: int, valid: bool
) -> None:
    weights = tmp_path / "model.safetensors"
    write_raw_safetensors(weights, header, b"\0" * data_size)
    try:
        with safe_open(weights, "np") as reader:
            reader.keys()
        reference_accepts = True
    except SafetensorError:
        reference_accepts = False
    ours = safetensors_header.check(io.BytesIO(weights.read_bytes()), weights.stat().st_size)
    assert (ours is None, reference_accepts) == (valid, valid)


@pytest.mark.parametrize(
    ("header_bytes", "expected"),
    [
        (b"\xff\xfe{}    ", "not UTF-8"),
        (b"{not json", "not valid JSON"),
        (b"[1, 2]  ", "not a JSON object"),
    ],
)
def test_unparseable_header_is_invalid(ckpt: Path, header_bytes: bytes, expected: str) -> None:
    (ckpt / "model.safetensors").write_bytes(struct.pack("<Q", len(header_bytes)) + header_bytes)
    assert expected in reason_of(ckpt)


# --- other files -------------------------------------------------------------------------------


def test_folder_without_weights_is_invalid(ckpt: Path) -> None:
    (ckpt / "model.safetensors").unlink()
    assert reason_of(ckpt) == "no weights file"


def test_path_that_is_neither_file_nor_folder_is_invalid(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "checkpoint-3")
    assert reason_of(tmp_path / "checkpoint-3") == "not a regular file or folder"
    assert "No such file or directory" in reason_of(tmp_path / "checkpoint-4")


def run_with_deadline(folder: Path, fifo: Path) -> tuple[bool, str | None]:
    """Validate in a thread; if it blocked on the FIFO, open the write end to free it and fail."""
    result: list[tuple[bool, str | None]] = []
    worker = threading.Thread(
        target=lambda: result.append(validate_checkpoint(folder)), daemon=True
    )
    worker.start()
    try:
        wait_until(lambda: not worker.is_alive(), timeout=5, message="validation to return")
    finally:
        if worker.is_alive():
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            worker.join(5)
    return result[0]


@pytest.mark.parametrize(
    "name", ["model.safetensors", "optimizer.pt", "trainer_state.json", "config.json"]
)
def test_fifo_in_place_of_a_file_is_invalid_without_blocking(ckpt: Path, name: str) -> None:
    fifo = ckpt / name
    fifo.unlink(missing_ok=True)
    os.mkfifo(fifo)
    assert run_with_deadline(ckpt, fifo) == (False, f"{name}: not a regular file")


def test_fifo_swapped_in_after_the_stat_check_still_does_not_block(
    ckpt: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Simulate losing the race: the stat pass saw a regular file, the open meets a FIFO.
    monkeypatch.setattr(checkpoint_validation, "_stat_problem", lambda file: None)
    fifo = ckpt / "model.safetensors"
    fifo.unlink()
    os.mkfifo(fifo)
    assert run_with_deadline(ckpt, fifo) == (False, "model.safetensors: not a regular file")


def test_os_error_while_reading_is_reported_not_raised(
    ckpt: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(file: Path) -> None:
        raise PermissionError(13, "Permission denied", str(file))

    monkeypatch.setattr(checkpoint_validation, "_open_regular", refuse)
    assert validate_checkpoint(ckpt) == (False, "model.safetensors: Permission denied")


def test_socket_in_place_of_weights_is_invalid(ckpt: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (ckpt / "model.safetensors").unlink()
    monkeypatch.chdir(ckpt)  # a relative bind path dodges the 108-byte AF_UNIX path limit
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind("model.safetensors")
        assert reason_of(ckpt) == "model.safetensors: not a regular file"


def test_dangling_symlink_is_invalid_with_the_os_error(ckpt: Path) -> None:
    (ckpt / "extra.bin").symlink_to(ckpt / "gone.bin")
    assert reason_of(ckpt) == "extra.bin: No such file or directory"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file_is_invalid_not_an_exception(ckpt: Path) -> None:
    (ckpt / "model.safetensors").chmod(0)
    assert reason_of(ckpt) == "model.safetensors: Permission denied"


def test_zip_with_a_corrupted_member_byte_fails_its_crc(ckpt: Path) -> None:
    optimizer = ckpt / "optimizer.pt"
    write_torch_zip(optimizer)
    raw = bytearray(optimizer.read_bytes())
    raw[raw.find(TENSOR_PAYLOAD.tobytes()) + 10] ^= 0xFF
    optimizer.write_bytes(bytes(raw))
    reason = reason_of(ckpt)
    assert reason.startswith("optimizer.pt: zip member 'archive/data/0' is corrupt")


@pytest.mark.parametrize("keep", [0.25, 0.5, 0.99])
def test_truncated_torch_zip_is_invalid(ckpt: Path, keep: float) -> None:
    optimizer = ckpt / "optimizer.pt"
    write_torch_zip(optimizer)
    raw = optimizer.read_bytes()
    optimizer.write_bytes(raw[: int(len(raw) * keep)])
    assert reason_of(ckpt).startswith("optimizer.pt: corrupt zip archive")


def test_zip_without_data_pkl_is_not_a_torch_file(ckpt: Path) -> None:
    with zipfile.ZipFile(ckpt / "pytorch_model.bin", "w") as archive:
        archive.writestr("readme.txt", "hello")
    assert "no data.pkl" in reason_of(ckpt)


def test_torch_file_that_is_neither_zip_nor_pickle_is_invalid(ckpt: Path) -> None:
    (ckpt / "optimizer.pt").write_bytes(b"\0" * 4096)
    assert reason_of(ckpt) == "optimizer.pt: not a torch zip or pickle file"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"\x00\x13garbage{", "trainer_state.json: not valid JSON"),
        (b"[1, 2, 3]", "trainer_state.json: not a JSON object"),
        (b'{"global_step": "ten"}', "trainer_state.json: global_step 'ten' is not an integer"),
        (
            b'{"global_step": 9}',
            "trainer_state.json: global_step 9 does not match the folder's step 10",
        ),
    ],
    ids=["garbage", "not-object", "step-not-int", "step-mismatch"],
)
def test_bad_trainer_state_is_invalid(ckpt: Path, content: bytes, expected: str) -> None:
    (ckpt / "trainer_state.json").write_bytes(content)
    assert reason_of(ckpt) == expected


def test_shard_missing_from_an_index_is_invalid(ckpt: Path) -> None:
    index = {"weight_map": {"a": "model.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (ckpt / "model.safetensors.index.json").write_text(json.dumps(index))
    assert "shard 'model-00002-of-00002.safetensors'" in reason_of(ckpt)


# --- discovery ---------------------------------------------------------------------------------


def test_staged_folder_is_listed_as_staged_and_invalid(tmp_path: Path) -> None:
    make_checkpoint(tmp_path, 20, name="tmp-checkpoint-20")
    [info] = list_checkpoints(tmp_path, RULES)
    assert info.staged
    assert not info.valid
    assert info.reason == "staged (incomplete) checkpoint"
    assert info.step == 20


def set_mtime(path: Path, when: float) -> None:
    for item in [*path.rglob("*"), path]:
        os.utime(item, (when, when))


def test_list_sorts_by_step_and_places_unnumbered_ones_by_time(tmp_path: Path) -> None:
    now = 1_700_000_000.0
    for step, age in ((100, 100), (9, 300), (10, 200)):
        set_mtime(make_checkpoint(tmp_path, step), now - age)
    set_mtime(make_checkpoint(tmp_path, 0, name="checkpoint-best"), now - 250)
    set_mtime(make_checkpoint(tmp_path, 0, name="checkpoint-latest"), now - 50)
    make_checkpoint(tmp_path, 5, name="quarantine/checkpoint-5")
    make_checkpoint(tmp_path, 7, name="other-7")
    (tmp_path / ".pruning-checkpoint-8-x1y2").mkdir()
    infos = list_checkpoints(tmp_path, RULES)
    assert [info.path.name for info in infos] == [
        "checkpoint-9",
        "checkpoint-best",  # written after checkpoint-9, before checkpoint-10
        "checkpoint-10",
        "checkpoint-100",
        "checkpoint-latest",
    ]
    assert [info.step for info in infos] == [9, None, 10, 100, None]
    assert infos[0].mtime == now - 300


def test_folder_that_vanishes_during_the_scan_is_left_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for step in (1, 2, 3):
        make_checkpoint(tmp_path, step)
    real_problem_of = checkpoints.problem_of

    def renamed_by_trainer_meanwhile(path: Path, **kwargs: Any) -> str | None:
        if path.name == "checkpoint-2":
            path.rename(tmp_path / "elsewhere")
        return real_problem_of(path, **kwargs)

    monkeypatch.setattr(checkpoints, "problem_of", renamed_by_trainer_meanwhile)
    assert [info.step for info in list_checkpoints(tmp_path, RULES)] == [1, 3]


def test_missing_directory_has_no_checkpoints(tmp_path: Path) -> None:
    assert list_checkpoints(tmp_path / "nope", RULES) == []
    assert newest_valid(tmp_path / "nope", RULES) is None


def test_custom_pattern_also_finds_its_staged_folders(tmp_path: Path) -> None:
    make_checkpoint(tmp_path, 1, name="step_1")
    make_checkpoint(tmp_path, 2, name="tmp-step_2")
    make_checkpoint(tmp_path, 3)
    rules = CheckpointsSection(pattern="step_*")
    names = [info.path.name for info in list_checkpoints(tmp_path, rules)]
    assert names == ["step_1", "tmp-step_2"]


def test_newest_valid_skips_a_corrupt_newest_and_returns_the_previous(tmp_path: Path) -> None:
    for step in (10, 20, 30):
        make_checkpoint(tmp_path, step)
    weights = tmp_path / "checkpoint-30" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-3])
    make_checkpoint(tmp_path, 40, name="tmp-checkpoint-40")
    best = newest_valid(tmp_path, RULES)
    assert best is not None
    assert best.path == tmp_path / "checkpoint-20"
    assert best.step == 20
    assert best.valid and best.reason is None and not best.staged


def test_newest_valid_is_none_when_nothing_is_valid(tmp_path: Path) -> None:
    make_checkpoint(tmp_path, 1, name="tmp-checkpoint-1")
    (make_checkpoint(tmp_path, 2) / "model.safetensors").write_bytes(b"")
    assert newest_valid(tmp_path, RULES) is None


# --- quarantine --------------------------------------------------------------------------------


def test_quarantine_renames_and_keeps_the_bytes(tmp_path: Path) -> None:
    folder = make_checkpoint(tmp_path, 5)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    moved = quarantine(folder)
    assert not folder.exists()
    assert moved.parent == tmp_path / "quarantine"
    assert re.fullmatch(r"checkpoint-5\.\d{8}T\d{6}Z", moved.name)
    assert {p.name: p.read_bytes() for p in moved.iterdir()} == before
    assert list_checkpoints(tmp_path, RULES) == []


def test_quarantine_never_overwrites_an_earlier_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(checkpoints, "_utc_stamp", lambda: "20250101T000000Z")
    first = quarantine(make_checkpoint(tmp_path, 5))
    second = quarantine(make_checkpoint(tmp_path, 5))
    third = quarantine(make_checkpoint(tmp_path, 5))
    assert [first.name, second.name, third.name] == [
        "checkpoint-5.20250101T000000Z",
        "checkpoint-5.20250101T000000Z.1",
        "checkpoint-5.20250101T000000Z.2",
    ]
    assert all((p / "model.safetensors").is_file() for p in (first, second, third))


# --- prune -------------------------------------------------------------------------------------


def test_prune_keeps_the_newest_valid_and_leaves_invalid_and_staged_alone(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    for step in (1, 2, 3, 4, 5):
        make_checkpoint(root, step)
    (root / "checkpoint-2" / "model.safetensors").write_bytes(b"")  # invalid
    (root / "checkpoint-5" / "trainer_state.json").write_text("{")  # invalid, newest
    make_checkpoint(root, 6, name="tmp-checkpoint-6")
    make_checkpoint(root, 0, name="checkpoint-best")

    removed = prune(root, keep(2), settle=0)

    assert removed == [root / "checkpoint-1"]
    left = sorted(p.name for p in root.iterdir())
    assert left == [
        "checkpoint-2",
        "checkpoint-3",
        "checkpoint-4",
        "checkpoint-5",
        "checkpoint-best",
        "tmp-checkpoint-6",
    ]


def test_prune_dry_run_removes_nothing_but_names_what_prune_removes(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    for step in (1, 2, 3):
        make_checkpoint(root, step)
    would = prune(root, keep(1), settle=0, dry_run=True)
    assert would == [root / "checkpoint-1", root / "checkpoint-2"]
    assert all(path.is_dir() for path in would)
    assert prune(root, keep(1), settle=0) == would
    assert [p.name for p in root.iterdir()] == ["checkpoint-3"]


def test_prune_refuses_to_remove_every_valid_checkpoint(tmp_path: Path) -> None:
    make_checkpoint(tmp_path, 1)
    with pytest.raises(ValueError, match="keep_last"):
        prune(tmp_path, keep(0), settle=0)
    assert (tmp_path / "checkpoint-1").is_dir()


def test_prune_never_follows_a_symlink_out_of_the_directory(tmp_path: Path) -> None:
    outside = make_checkpoint(tmp_path / "elsewhere", 1)
    root = tmp_path / "checkpoints"
    root.mkdir()
    (root / "checkpoint-1").symlink_to(outside, target_is_directory=True)
    make_checkpoint(root, 2)
    make_checkpoint(root, 3)
    assert prune(root, keep(1), settle=0) == [root / "checkpoint-2"]
    assert (outside / "model.safetensors").is_file()
    assert (root / "checkpoint-1").is_symlink()


def test_a_settled_torch_zip_is_read_once_and_a_rewritten_one_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "checkpoint-7"
    folder.mkdir()
    weights = folder / "pytorch_model.bin"
    write_torch_zip(weights)
    settled = weights.stat().st_mtime - 60  # written a minute ago
    os.utime(weights, (settled, settled))
    reads: list[str] = []
    real_check = torch_zip.check

    def counting_check(fh: BinaryIO, **kwargs: Any) -> str | None:  # a spy: the real one runs
        reads.append(fh.name)
        return real_check(fh, **kwargs)

    monkeypatch.setattr(torch_zip, "check", counting_check)
    weights_only = CheckpointsSection(required_files=[])
    assert validate_checkpoint(folder, weights_only) == (True, None)
    assert validate_checkpoint(folder, weights_only) == (True, None)
    assert len(reads) == 1  # the CRC pass over every byte ran once

    with open(weights, "r+b") as fh:  # damaged in place: new size, new version
        fh.truncate(weights.stat().st_size - 10)
    os.utime(weights, (settled + 1, settled + 1))
    valid, reason = validate_checkpoint(folder, weights_only)
    assert not valid and reason is not None
    assert len(reads) == 2


# --- layouts real trainers write -----------------------------------------------------------------


def write_sparse_torch_zip(path: Path, size: int, *, crc: int = 0) -> None:
    """A torch zip whose one big member is `size` zero bytes, stored as a hole: a multi-GB file
    that costs no disk. A CRC of 0 is wrong for any size > 0, so the deep check reads every
    byte and then calls it corrupt."""
    small = pickle.dumps({"state": {}}, protocol=2)
    entries = [
        ("archive/data.pkl", small, zlib.crc32(small), len(small)),
        ("archive/data/0", None, crc, size),
    ]
    central = b""
    with open(path, "wb") as fh:
        for name, data, member_crc, length in entries:
            offset = fh.tell()
            encoded = name.encode()
            fh.write(struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 0, 0, 0x21, member_crc,
                                 length, length, len(encoded), 0) + encoded)  # fmt: skip
            if data is None:
                fh.seek(length, os.SEEK_CUR)  # the hole
            else:
                fh.write(data)
            central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 0, 0, 0x21,
                                   member_crc, length, length, len(encoded), 0, 0, 0, 0, 0,
                                   offset) + encoded  # fmt: skip
        start = fh.tell()
        fh.write(central)
        fh.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 2, 2, len(central), start, 0))


def write_lightning_ckpt(path: Path) -> None:
    """What Lightning's ModelCheckpoint writes: one torch.save zip, `.ckpt`."""
    write_torch_zip(path)


@pytest.mark.parametrize(
    ("name", "step"),
    [
        ("checkpoint-400", 400),
        ("epoch=3-step=400.ckpt", 400),
        ("epoch=3-step=400-v1.ckpt", 400),
        ("ckpt_000400.pt", 400),
        ("global_step400", 400),
        ("model_epoch3.pt", 3),
        ("epoch=3.ckpt", 3),
        ("epoch=2-val_loss=0.31.ckpt", 2),  # the metric's digits are never the step
        ("epoch=10-val_loss=0.05.ckpt", 10),
        ("epoch=4-val_acc=91.ckpt", 4),
        ("checkpoint_000020.pth.tar", 20),
        ("last.ckpt", None),
        ("last-v2.ckpt", None),
        ("checkpoint-best", None),
    ],
)
def test_the_step_comes_from_the_name_in_every_trainers_naming(name: str, step: int | None) -> None:
    assert checkpoints.step_of(name) == step


def test_half_written_hf_checkpoint_is_never_resumed_counted_or_kept_over_a_complete_one(
    tmp_path: Path,
) -> None:
    root = tmp_path / "checkpoints"
    make_checkpoint(root, 120)
    partial = make_checkpoint(root, 140)
    (partial / "trainer_state.json").unlink()  # killed after the weights, before the state
    write_torch_zip(partial / "optimizer.pt")
    best = newest_valid(root, RULES)
    assert best is not None and best.path.name == "checkpoint-120"
    assert prune(root, keep(1), settle=0) == []  # keep_last=1 keeps the complete one
    assert sorted(p.name for p in root.iterdir()) == ["checkpoint-120", "checkpoint-140"]


def test_checkpoint_still_being_written_is_in_flight_never_pruned_or_counted(
    tmp_path: Path,
) -> None:
    root = tmp_path / "checkpoints"
    an_hour_ago = 1_700_000_000.0
    for step in (10, 20, 30):
        set_mtime(make_checkpoint(root, step), an_hour_ago + step)
    make_checkpoint(root, 40)  # complete, written just now
    (make_checkpoint(root, 50) / "trainer_state.json").unlink()  # being written just now
    infos = list_checkpoints(root, RULES, settle=60)
    assert [(i.path.name, i.valid, i.in_flight) for i in infos][-2:] == [
        ("checkpoint-40", True, False),
        ("checkpoint-50", False, True),
    ]
    best = newest_valid(root, RULES, settle=60)
    assert best is not None and best.path.name == "checkpoint-40"
    # Neither fresh one counts toward keep_last=2 until it settles: 30 and 20 are kept.
    assert prune(root, keep(2), settle=60) == [root / "checkpoint-10"]
    assert sorted(p.name for p in root.iterdir())[-2:] == ["checkpoint-40", "checkpoint-50"]
    # Settled, the incomplete one is plain invalid: no longer in flight.
    set_mtime(root / "checkpoint-50", an_hour_ago + 50)
    assert list_checkpoints(root, RULES, settle=60)[-1].in_flight is False


def test_lightning_and_plain_torch_file_checkpoints_are_found_ordered_and_validated(
    tmp_path: Path,
) -> None:
    root = tmp_path / "checkpoints"
    root.mkdir()
    now = 1_700_000_000.0
    for step in (100, 200, 300):
        write_lightning_ckpt(root / f"epoch=0-step={step}.ckpt")
        os.utime(root / f"epoch=0-step={step}.ckpt", (now + step, now + step))
    write_lightning_ckpt(root / "last.ckpt")
    os.utime(root / "last.ckpt", (now + 301, now + 301))
    rules = CheckpointsSection(pattern="*.ckpt", keep_last=1)
    names = [i.path.name for i in list_checkpoints(root, rules)]
    assert names == ["epoch=0-step=100.ckpt", "epoch=0-step=200.ckpt", "epoch=0-step=300.ckpt",
                     "last.ckpt"]  # fmt: skip
    best = newest_valid(root, rules)
    assert best is not None and best.path.name == "last.ckpt"
    assert prune(root, rules, settle=0) == [root / "epoch=0-step=100.ckpt",
                                            root / "epoch=0-step=200.ckpt"]  # fmt: skip
    assert sorted(p.name for p in root.iterdir()) == ["epoch=0-step=300.ckpt", "last.ckpt"]


def test_truncated_file_checkpoint_is_invalid_and_the_previous_one_is_resumed(
    tmp_path: Path,
) -> None:
    root = tmp_path / "checkpoints"
    root.mkdir()
    for step in (25, 50):
        write_torch_zip(root / f"ckpt_{step:06d}.pt")
    newest = root / "ckpt_000050.pt"
    newest.write_bytes(newest.read_bytes()[:100])
    rules = CheckpointsSection(pattern="ckpt_*.pt")
    [older, broken] = list_checkpoints(root, rules)
    assert older.valid and not broken.valid
    assert broken.reason is not None and broken.reason.startswith("corrupt zip archive")
    best = newest_valid(root, rules)
    assert best is not None and best.path == root / "ckpt_000025.pt"
    assert best.step == 25


def test_ckpt_inside_a_folder_counts_as_its_weights(ckpt: Path) -> None:
    (ckpt / "model.safetensors").unlink()
    write_lightning_ckpt(ckpt / "model.ckpt")
    assert validate_checkpoint(ckpt) == (True, None)


def test_multi_gb_checkpoint_quick_check_reads_only_the_directory_and_deep_check_can_stop(
    tmp_path: Path,
) -> None:
    big = tmp_path / "checkpoint-1"
    big.mkdir()
    (big / "trainer_state.json").write_text('{"global_step": 1}')
    write_sparse_torch_zip(big / "optimizer.pt", 3 * 2**30)
    save_file({"w": np.ones(2, dtype=np.float32)}, big / "model.safetensors")
    assert (big / "optimizer.pt").stat().st_blocks * 512 < 2**20  # really sparse
    assert validate_checkpoint(big, deep=False) == (True, None)
    calls: list[int] = []

    def cancelled() -> bool:
        calls.append(1)
        return len(calls) > 3  # after ~3 MiB of 3 GiB

    with pytest.raises(checkpoints.Cancelled):
        checkpoint_validation.problem_of(big, step=1, cancelled=cancelled)
    assert len(calls) == 4


def test_prune_stopped_midway_leaves_no_checkpoint_half_deleted_and_next_prune_cleans_up(
    tmp_path: Path,
) -> None:
    root = tmp_path / "checkpoints"
    for step in (1, 2, 3, 4):
        make_checkpoint(root, step)
    leftover = root / ".pruning-checkpoint-0-abc123"  # from a prune killed with SIGKILL
    (leftover / "checkpoint-0").mkdir(parents=True)
    (leftover / "checkpoint-0" / "model.safetensors").write_bytes(b"x" * 100)
    with pytest.raises(checkpoints.Cancelled):
        prune(root, keep(1), settle=0, cancelled=lambda: True)
    assert not leftover.exists()
    assert sorted(p.name for p in root.iterdir()) == [f"checkpoint-{s}" for s in (1, 2, 3, 4)]
    assert prune(root, keep(1), settle=0) == [root / f"checkpoint-{s}" for s in (1, 2, 3)]
    assert [p.name for p in root.iterdir()] == ["checkpoint-4"]


def test_files_that_are_no_checkpoint_format_are_not_checkpoints(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    make_checkpoint(root, 10)
    (root / "checkpoint-notes.txt").write_text("lr 3e-4 looked better")  # newer than all
    write_torch_zip(root / "checkpoint_000020.pth.tar")  # torch.save's old habit
    infos = list_checkpoints(root, CheckpointsSection(pattern="checkpoint*"))
    assert [(i.path.name, i.step, i.valid) for i in infos] == [
        ("checkpoint-10", 10, True),
        ("checkpoint_000020.pth.tar", 20, True),
    ]


def test_lightning_metric_names_are_ordered_by_epoch_and_the_newest_kept(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    root.mkdir()
    losses = [0.91, 0.55, 0.31, 0.12, 0.07]  # falling loss: the digits shrink as epochs grow
    for epoch, loss in enumerate(losses):
        write_torch_zip(root / f"epoch={epoch}-val_loss={loss:.2f}.ckpt")
    rules = CheckpointsSection(pattern="*.ckpt", keep_last=2)
    best = newest_valid(root, rules)
    assert best is not None and best.path.name == "epoch=4-val_loss=0.07.ckpt"
    assert [p.name for p in prune(root, rules, settle=0)] == [
        "epoch=0-val_loss=0.91.ckpt",
        "epoch=1-val_loss=0.55.ckpt",
        "epoch=2-val_loss=0.31.ckpt",
    ]


def test_lightning_v1_file_of_the_same_step_is_the_newer(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    root.mkdir()
    write_torch_zip(root / "epoch=0-step=400-v1.ckpt")  # saved after the original
    write_torch_zip(root / "epoch=0-step=400.ckpt")
    write_torch_zip(root / "epoch=0-step=300.ckpt")
    rules = CheckpointsSection(pattern="*.ckpt", keep_last=1)
    best = newest_valid(root, rules)
    assert best is not None and best.path.name == "epoch=0-step=400-v1.ckpt"
    assert [p.name for p in prune(root, rules, settle=0)] == [
        "epoch=0-step=300.ckpt",
        "epoch=0-step=400.ckpt",
    ]


def test_global_step_is_checked_only_where_the_name_gives_it(tmp_path: Path) -> None:
    epoch_named = make_checkpoint(tmp_path, 3, name="model_epoch3")  # global_step 3: matches
    (epoch_named / "trainer_state.json").write_text(json.dumps({"global_step": 3000}))
    assert validate_checkpoint(epoch_named) == (True, None)
    hf = make_checkpoint(tmp_path, 30)
    (hf / "trainer_state.json").write_text(json.dumps({"global_step": 3000}))
    assert validate_checkpoint(hf)[1] == (
        "trainer_state.json: global_step 3000 does not match the folder's step 30"
    )
