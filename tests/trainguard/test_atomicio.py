from __future__ import annotations

import os
from pathlib import Path

import pytest

from trainguard.atomicio import write_json_atomic


@pytest.mark.parametrize(("durable", "fsyncs"), [(True, 2), (False, 0)])
def test_a_write_fsyncs_the_file_and_its_folder_only_when_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, durable: bool, fsyncs: int
) -> None:
    (tmp_path / "status").mkdir()
    target = tmp_path / "status" / "state.json"
    target.write_text('{"old": true}\n')
    synced: list[int] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    write_json_atomic(target, {"new": 1}, durable=durable)
    assert len(synced) == fsyncs
    assert target.read_text() == '{\n  "new": 1\n}\n'
    assert [p.name for p in target.parent.iterdir()] == ["state.json"]  # no temp file left
