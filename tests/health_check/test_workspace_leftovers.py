"""health-check on what a person or a crash left in the workspace: a broken progress file, a
file where a folder should be; and the progress age it reports."""

from __future__ import annotations

import json
import os
import re
import time
from datetime import datetime, timedelta, timezone

import pytest

from tests.health_check.conftest import Example


def test_garbage_progress_with_no_daemon_is_a_warning_that_fix_clears(
    example: Example, capsys: pytest.CaptureFixture[str]
) -> None:
    progress = example.base / "status" / "progress.json"
    progress.write_bytes(b"\x00\x01garbage{")
    run = example.health(capsys, "--only", "progress", "--json")
    check = run.check("progress")
    assert check["status"] == "WARNING", check
    assert check["summary"].startswith("progress.json is not valid progress and no daemon runs")
    assert check["fix"]["action"].startswith("move the broken progress.json aside")
    fixed = example.health(capsys, "--only", "progress", "--fix", "--json")
    assert fixed.check("progress")["fix"]["applied"] is True
    assert not progress.exists()
    (aside,) = progress.parent.glob("progress.json.broken-*")
    assert aside.read_bytes() == b"\x00\x01garbage{"  # kept, never deleted
    again = example.health(capsys, "--only", "progress", "--json").check("progress")
    assert (again["status"], again["summary"]) == ("OK", "no progress yet; no daemon running")


def test_the_age_is_the_files_own_updated_at_not_its_mtime(
    example: Example, capsys: pytest.CaptureFixture[str]
) -> None:
    progress = example.base / "status" / "progress.json"
    written = datetime.now(timezone.utc) - timedelta(hours=2)
    progress.write_text(json.dumps({
        "step": 7, "phase": "train", "updated_at": written.isoformat().replace("+00:00", "Z"),
    }))  # fmt: skip
    os.utime(progress, (time.time(), time.time()))  # copied just now: mtime says fresh
    check = example.health(capsys, "--only", "progress", "--json").check("progress")
    age = next(m["value"] for m in check["metrics"] if m["name"] == "progress_age_s")
    assert age >= 7200  # two hours, as the trainer said (the mtime would say 0)


def test_a_plain_file_where_a_folder_should_be_is_named_and_fix_moves_it_aside(
    example: Example, capsys: pytest.CaptureFixture[str]
) -> None:
    logs = example.base / "logs"
    for child in logs.iterdir():
        child.unlink()
    logs.rmdir()
    logs.write_text("someone's notes\n")
    check = example.health(capsys, "--only", "directories", "--json").check("directories")
    assert check["status"] == "CRITICAL"
    assert check["summary"] == "not usable: logs (a plain file)"
    fixed = example.health(capsys, "--only", "directories", "--fix", "--json")
    assert fixed.check("directories")["fix"]["applied"] is True
    assert logs.is_dir()
    (aside,) = example.base.glob("logs.file-*")
    assert aside.read_text() == "someone's notes\n"  # kept, never deleted
    assert (
        example.health(capsys, "--only", "directories", "--json").check("directories")["status"]
        == "OK"
    )


def test_verbose_details_come_whole_on_their_own_lines(
    example: Example, capsys: pytest.CaptureFixture[str]
) -> None:
    (example.base / "config.json").write_text("{bad")
    out = example.health(capsys, "-v").out.splitlines()
    detail = f"  {example.base / 'config.json'}: not valid JSON: Expecting property name enclosed"
    start = out.index("config:")
    assert out[start + 1].startswith(detail)  # one line, however long, never folded
    table = out[1 : next(i for i, line in enumerate(out) if re.fullmatch(r"\w+:", line))]
    assert all(len(line) <= 80 for line in table)  # the table keeps to the terminal's width
