"""crash-detector as cron and the watchdog run it: a real console script, real files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from crash_detector.classify import Crash, Finding
from crash_detector.cli import main
from crash_detector.history import append_new, to_record

SCRIPT = shutil.which("crash-detector", path=str(Path(sys.executable).parent))
OOM = (
    "Traceback (most recent call last):\n"
    '  File "train.py", line 88, in step\n'
    "    loss.backward()\n"
    "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB.\n"
)
CLEAN = "".join(f"step {i} loss 0.{i % 10}\n" for i in range(50))


def _run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    assert SCRIPT, "crash-detector console script is not installed in this venv"
    return subprocess.run([SCRIPT, *args], capture_output=True, text=True, timeout=60, cwd=cwd)


def _json(*args: str, cwd: Path | None = None) -> tuple[int, dict]:  # type: ignore[type-arg]
    result = _run(*args, "--json", cwd=cwd)
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, json.loads(result.stdout)


def test_json_matches_the_contract_and_exit_code_says_crash(tmp_path: Path) -> None:
    log = tmp_path / "daemon.log"
    log.write_text(CLEAN + OOM)
    code, out = _json(str(log))
    assert code == 1
    assert set(out) >= {"crashes", "primary", "counts"}
    primary = out["primary"]
    assert {"category", "file", "line", "text", "rule", "suggestion", "retryable"} <= set(primary)
    assert primary["category"] == "cuda_oom"
    assert primary["file"] == str(log) and primary["line"] == 54
    assert primary["retryable"] is True
    assert out["counts"] == {"cuda_oom": 1}


def test_clean_log_exits_0_with_null_primary(tmp_path: Path) -> None:
    (tmp_path / "a.log").write_text(CLEAN)
    code, out = _json(str(tmp_path))
    assert (code, out["primary"], out["crashes"]) == (0, None, [])


def test_last_n_lines_reads_only_the_tail(tmp_path: Path) -> None:
    log = tmp_path / "daemon.log"
    log.write_text(OOM + CLEAN * 10)
    assert [c["category"] for c in _json(str(log))[1]["crashes"]] == ["cuda_oom"]
    code, out = _json(str(log), "--last-n-lines", "100")
    assert code == 0 and out["primary"] is None and out["crashes"] == []
    assert out["files"][0]["lines_read"] == 100


def test_exit_code_is_evidence_for_a_silent_log(tmp_path: Path) -> None:
    (tmp_path / "d.log").write_text(CLEAN)
    code, out = _json(str(tmp_path / "d.log"), "--exit-code", "-11")
    assert code == 1 and out["primary"]["category"] == "segfault"


def test_a_sigkill_on_a_silent_log_is_a_crash_but_not_host_oom(tmp_path: Path) -> None:
    """Exit status -9 or 137 alone is no evidence of an OOM kill: kill -9 sends it too."""
    (tmp_path / "d.log").write_text(CLEAN)
    for status in ("-9", "137"):
        code, out = _json(str(tmp_path / "d.log"), "--exit-code", status)
        assert code == 1 and out["primary"]["category"] == "unknown"
        assert out["primary"]["rule"] == "exit_status.sigkill"
        assert "no OOM evidence" in out["primary"]["suggestion"]
    (tmp_path / "d.log").write_text(CLEAN + "Killed\n")  # what a shell prints for its child
    code, out = _json(str(tmp_path / "d.log"), "--exit-code", "137")
    assert code == 1 and out["primary"]["category"] == "host_oom"


def test_quiet_prints_one_line(tmp_path: Path) -> None:
    (tmp_path / "d.log").write_text(CLEAN + OOM)
    result = _run(str(tmp_path / "d.log"), "--quiet")
    assert result.returncode == 1
    assert result.stdout.count("\n") == 1
    assert result.stdout.startswith("crash-detector: CRASH cuda_oom at ")


def test_human_output_names_category_place_evidence_and_suggestion(tmp_path: Path) -> None:
    (tmp_path / "d.log").write_text(CLEAN + OOM)
    out = _run(str(tmp_path / "d.log")).stdout
    assert "cuda_oom" in out and f"{tmp_path / 'd.log'}:54" in out
    assert "CUDA out of memory" in out and "suggestion:" in out


@pytest.mark.parametrize(
    "setup",
    ["missing", "fifo", "empty_dir"],
)
def test_unreadable_input_is_exit_2_with_one_line(tmp_path: Path, setup: str) -> None:
    target = tmp_path / "x.log"
    if setup == "fifo":
        os.mkfifo(target)
    elif setup == "empty_dir":
        target = tmp_path / "logs"
        target.mkdir()
        (tmp_path / "trainguard.toml").write_text('[crash_detector]\nlogs = ["logs/*.log"]\n')
    args = [str(target)] if setup != "empty_dir" else ["-c", str(tmp_path / "trainguard.toml")]
    result = _run(*args)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_bad_usage_is_exit_2(tmp_path: Path) -> None:
    assert _run("--last-n-lines", "0").returncode == 2
    assert _run("--no-such-flag").returncode == 2


def test_binary_huge_lines_and_crlf_are_handled(tmp_path: Path) -> None:
    log = tmp_path / "weird.log"
    with open(log, "wb") as fh:
        fh.write(os.urandom(200_000))
        fh.write(b"\n" + b"=" * 3_000_000 + b"\r\n")
        fh.write(b"\xff\xfe step 3\r\n" + OOM.replace("\n", "\r\n").encode())
    for extra in ([], ["--last-n-lines", "10"]):
        code, out = _json(str(log), *extra)
        assert code == 1 and out["primary"]["category"] == "cuda_oom"
        assert not out["primary"]["text"].endswith("\r")


def test_history_is_kept_with_a_config_and_rescans_do_not_double_count(tmp_path: Path) -> None:
    (tmp_path / "trainguard.toml").write_text("")
    (tmp_path / "logs").mkdir()
    log = tmp_path / "logs" / "daemon.log"
    log.write_text(CLEAN + OOM)
    code, out = _json(cwd=tmp_path)
    assert code == 1 and out["history"]["added"] == 1
    assert _json(cwd=tmp_path)[1]["history"]["added"] == 0
    with open(log, "a") as fh:
        fh.write(CLEAN * 5 + OOM)
    assert _json(cwd=tmp_path)[1]["history"]["added"] == 1
    records = [
        json.loads(line) for line in (tmp_path / ".crash_history.jsonl").read_text().splitlines()
    ]
    assert [r["category"] for r in records] == ["cuda_oom", "cuda_oom"]
    assert records[0]["fingerprint"] == records[1]["fingerprint"]


def test_recurring_pattern_is_reported(tmp_path: Path) -> None:
    (tmp_path / "trainguard.toml").write_text("")
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "daemon.log").write_text((CLEAN * 5 + OOM) * 3)
    code, out = _json("--recurring-min", "3", cwd=tmp_path)
    assert code == 1 and len(out["crashes"]) == 3
    assert [(r["category"], r["count"]) for r in out["recurring"]] == [("cuda_oom", 3)]
    assert "recurring: cuda_oom x3" in _run("--quiet", cwd=tmp_path).stdout


def test_no_history_without_a_config(tmp_path: Path) -> None:
    (tmp_path / "d.log").write_text(OOM)
    code, out = _json(str(tmp_path / "d.log"), cwd=tmp_path)
    assert code == 1 and out["history"] is None and out["recorded"] is None
    assert not (tmp_path / ".crash_history.jsonl").exists()


def _watchdog_record(n: int, category: str, exit_code: int) -> dict[str, object]:
    """A record as the watchdog appends it: its diagnosis at the crash, with the reason."""
    finding = Finding(category, "daemon-watchdog", 0, "critical", True, "s", f"evidence {n}")
    record = to_record(Crash(finding, (finding,)), source="daemon-watchdog", exit_code=exit_code)
    return {**record, "occurrence": f"daemon-watchdog:{n}", "reason": f"crash {n}"}


def test_config_mode_shows_what_the_watchdog_recorded_next_to_what_the_logs_say(
    tmp_path: Path, cli: Callable[..., Ran]
) -> None:
    (tmp_path / "trainguard.toml").write_text("")
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "daemon.log").write_text(CLEAN + OOM)
    records = [_watchdog_record(n, "unknown", -9) for n in range(11)]
    records.append(_watchdog_record(11, "host_oom", 137))
    append_new(tmp_path / ".crash_history.jsonl", records)
    config = str(tmp_path / "trainguard.toml")

    out = json.loads(cli("-c", config, "--json").stdout)
    assert out["primary"]["category"] == "cuda_oom"  # what the log says, as before
    recorded = out["recorded"]
    assert [r["reason"] for r in recorded] == [f"crash {n}" for n in range(2, 12)]  # newest 10
    assert recorded[-1] == {
        "at": records[-1]["at"],
        "category": "host_oom",
        "reason": "crash 11",
        "exit_code": 137,
        "text": "evidence 11",
        "retryable": True,
    }
    # crash-detector's own record of the log's crash, appended by the run above, is not the
    # watchdog's
    assert len(json.loads(cli("-c", config, "--json").stdout)["recorded"]) == 10

    text = cli("-c", config).stdout
    assert "recorded by the watchdog" in text
    assert "host_oom  exit 137  crash 11" in text and "evidence 11" in text
    assert "crash 1\n" not in text and "crash 2\n" in text


def test_custom_rules_add_and_override_by_id(tmp_path: Path) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text(
        "[[rule]]\n"
        'id = "mine.queue_stuck"\ncategory = "timeout"\npattern = "job queue stuck for \\\\d+ s"\n'
        'priority = 80\nretryable = true\nsuggestion = "Restart the queue broker, then resume."\n'
    )
    (tmp_path / "d.log").write_text("job queue stuck for 900 s\n")
    code, out = _json(str(tmp_path / "d.log"), "--rules", str(rules))
    assert code == 1 and out["primary"]["rule"] == "mine.queue_stuck"
    assert _json(str(tmp_path / "d.log"))[0] == 0


def test_bad_rules_file_is_exit_2_naming_the_rule(tmp_path: Path) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text('[[rule]]\nid = "x"\ncategory = "gremlins"\npattern = "("\npriority = 1\n')
    result = _run(str(rules), "--rules", str(rules))
    assert result.returncode == 2
    assert "rule[0] (x).category" in result.stderr and "Traceback" not in result.stderr


@dataclass(frozen=True)
class Ran:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., Ran]:
    """`crash-detector ARGS` in this process: the console script's `main`, minus the start-up
    of a new interpreter (the checks above run the real script)."""

    def run(*args: str) -> Ran:
        try:
            code = main(list(args))
        except SystemExit as exc:  # argparse
            code = int(exc.code or 0)
        captured = capsys.readouterr()
        return Ran(code, captured.out, captured.err)

    return run


def _one_line_error(result: Ran, code: int = 2) -> str:
    assert result.returncode == code, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    return result.stderr


def test_paths_and_rule_ids_that_look_like_markup_are_printed_as_text(
    tmp_path: Path, cli: Callable[..., Ran]
) -> None:
    folder = tmp_path / "[bold]" / "a[" / "b]"
    folder.mkdir(parents=True)
    (folder / "d.log").write_text(OOM)
    result = cli(str(folder / "d.log"))
    assert result.returncode == 1, result.stderr
    assert f"{folder / 'd.log'}:4" in result.stdout
    rules = tmp_path / "rules.toml"
    rules.write_text(
        '[[rule]]\nid = "site[/]"\ncategory = "unknown"\npattern = "queue stuck"\n'
        'priority = 80\nretryable = true\nsuggestion = "Restart [red]the broker[/red]."\n'
    )
    (folder / "q.log").write_text("queue stuck [/]\n")
    result = cli(str(folder / "q.log"), "--rules", str(rules))
    assert result.returncode == 1, result.stderr
    assert "rule site[/]" in result.stdout and "[red]the broker[/red]" in result.stdout


@pytest.mark.parametrize("history", ["a folder", "below a file"])
def test_a_history_that_cannot_be_written_is_a_warning_not_a_failure(
    tmp_path: Path, history: str, cli: Callable[..., Ran]
) -> None:
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "daemon.log").write_text(CLEAN + OOM)
    if history == "a folder":
        (tmp_path / ".crash_history.jsonl").mkdir()
        (tmp_path / "trainguard.toml").write_text("")
    else:
        (tmp_path / "afile").write_text("")
        (tmp_path / "trainguard.toml").write_text(
            '[crash_detector]\nhistory_file = "afile/h.jsonl"\n'
        )
    config = str(tmp_path / "trainguard.toml")
    result = cli("-c", config, "--json")
    _one_line_error(result, code=1)
    assert "warning" in result.stderr and "history" in result.stderr
    out = json.loads(result.stdout)
    assert out["primary"]["category"] == "cuda_oom" and out["history"]["added"] == 0
    text = cli("-c", config, "--quiet")
    assert text.returncode == 1 and text.stdout.startswith("crash-detector: CRASH cuda_oom")


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("rule = [5]\n", "rule[0]"),
        ('ignore = ["x"]\n', "ignore[0]"),
        (
            '[[rule]]\nid = "x"\ncategory = "unknown"\npattern = "(?i)step"\npriority = 1\n'
            'retryable = true\nsuggestion = "s"\n',
            "ignore_case = true",
        ),
        ('[[ignore]]\nid = "y"\npattern = "(?x) step # a comment"\n', "ignore[0] (y).pattern"),
        ('[[progress]]\nid = "z"\npattern = "(?s)step.+"\n', "progress[0] (z).pattern"),
    ],
)
def test_bad_rules_are_one_line_errors(
    tmp_path: Path, content: str, expected: str, cli: Callable[..., Ran]
) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text(content)
    (tmp_path / "d.log").write_text(CLEAN)
    assert expected in _one_line_error(cli(str(tmp_path / "d.log"), "--rules", str(rules)))


@pytest.mark.parametrize("window", ["nan", "inf", "-1", "0", "1e300", "soon"])
def test_a_recurring_window_that_is_not_a_sane_number_of_hours_is_bad_usage(
    tmp_path: Path, window: str, cli: Callable[..., Ran]
) -> None:
    (tmp_path / "trainguard.toml").write_text("")
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "daemon.log").write_text(OOM)
    result = cli("-c", str(tmp_path / "trainguard.toml"), f"--recurring-window={window}")
    assert result.returncode == 2, result.stderr
    assert "--recurring-window" in result.stderr


def test_a_workspace_whose_path_has_glob_characters_is_read(
    tmp_path: Path, cli: Callable[..., Ran]
) -> None:
    base = tmp_path / "run[1]"
    (base / "logs").mkdir(parents=True)
    (base / "trainguard.toml").write_text("")
    (base / "logs" / "daemon.log").write_text(CLEAN + OOM)
    result = cli("-c", str(base / "trainguard.toml"), "--json")
    assert result.returncode == 1, result.stderr
    assert json.loads(result.stdout)["primary"]["category"] == "cuda_oom"


def test_a_folder_is_read_past_entries_that_are_not_files(
    tmp_path: Path, cli: Callable[..., Ran]
) -> None:
    (tmp_path / "sub.log").mkdir()
    os.mkfifo(tmp_path / "pipe.log")
    (tmp_path / "daemon.log").write_text(CLEAN + OOM)
    result = cli(str(tmp_path), "--json")
    assert result.returncode == 1, result.stderr
    files = json.loads(result.stdout)["files"]
    assert [f["path"] for f in files] == [str(tmp_path / "daemon.log")]
    (tmp_path / "daemon.log").unlink()
    stderr = _one_line_error(cli(str(tmp_path)))
    assert f"no *.log files in {tmp_path}" in stderr


def test_an_exit_status_blames_the_end_of_the_log_not_an_old_crash(
    tmp_path: Path, cli: Callable[..., Ran]
) -> None:
    log = tmp_path / "daemon.log"
    log.write_text(OOM + "".join(f"loading shard {i}\n" for i in range(5000)))
    result = cli(str(log), "--exit-code", "-9", "--json")
    out = json.loads(result.stdout)
    assert result.returncode == 1 and out["primary"]["rule"] == "exit_status.sigkill"
    assert [c["category"] for c in out["crashes"]] == ["cuda_oom", "unknown"]


def test_a_survived_error_is_listed_but_exits_0(tmp_path: Path, cli: Callable[..., Ran]) -> None:
    log = tmp_path / "daemon.log"
    log.write_text(CLEAN + OOM + CLEAN)
    result = cli(str(log), "--json")
    out = json.loads(result.stdout)
    assert result.returncode == 0 and out["primary"] is None
    assert [(c["category"], c["survived"]) for c in out["crashes"]] == [("cuda_oom", True)]
    quiet = cli(str(log), "--quiet")
    assert quiet.returncode == 0
    assert quiet.stdout == "crash-detector: OK: no crash in 1 log file; survived: cuda_oom 1\n"
    assert "survived" in cli(str(log)).stdout


def test_each_crash_only_the_exit_status_shows_is_recorded_once(
    tmp_path: Path, cli: Callable[..., Ran]
) -> None:
    (tmp_path / "trainguard.toml").write_text("")
    (tmp_path / "logs").mkdir()
    log = tmp_path / "logs" / "daemon.log"
    log.write_text(CLEAN)

    def added() -> int:
        result = cli("-c", str(tmp_path / "trainguard.toml"), "--exit-code", "-9", "--json")
        return int(json.loads(result.stdout)["history"]["added"])

    assert added() == 1
    assert added() == 0
    with open(log, "a") as fh:
        fh.write(CLEAN)  # restarted, trained a while, killed again
    assert added() == 1
