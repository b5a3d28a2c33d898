"""Scanner and classifier on hand-made catalogs: root cause, blocks, exit status, both engines."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crash_detector.classify import BLOCK_GAP, SURVIVAL_LINES, classify_text
from crash_detector.rules import Catalog, IgnoreRule
from crash_detector.scanner import Scanner, hyperscan, re2
from tests.crash_detector.catalogs import SMALL, SURVIVAL, rule

ENGINES = [
    "re",
    *(["re2"] if re2 is not None else []),
    *(["hyperscan"] if hyperscan is not None else []),
]


@pytest.fixture(params=ENGINES)
def scanner(request: pytest.FixtureRequest) -> Scanner:
    return Scanner(SMALL, engine=request.param)


def test_final_exception_line_wins_over_the_source_line_a_frame_quotes(scanner: Scanner) -> None:
    log = (
        "Traceback (most recent call last):\n"
        '  File "train.py", line 10, in <module>\n'
        "    raise RuntimeError('CUDA out of memory')  # quoted code, not what happened\n"
        "ModuleNotFoundError: No module named 'flash_attn'\n"
    )
    result = classify_text(log, scanner=scanner)
    assert result.primary is not None
    assert result.primary.category == "import_error"
    assert result.primary.line == 4
    assert [f.rule for f in result.crashes[0].evidence] == ["import_error.module"]


def test_root_cause_beats_its_consequence_in_one_block(scanner: Scanner) -> None:
    log = (
        "step 5 loss 1.0\n"
        "RuntimeError: CUDA error: an illegal memory access\n"
        "terminate called after throwing an instance of 'c10::Error'\n"
    )
    primary = classify_text(log, scanner=scanner).primary
    assert primary is not None and primary.category == "cuda_error"
    assert primary.retryable


def test_most_recent_crash_is_primary_when_blocks_are_far_apart(scanner: Scanner) -> None:
    early = "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2 GiB\n"
    training = "".join(f"step {i} loss 0.5\n" for i in range(BLOCK_GAP + 5))
    result = classify_text(early + training + "Killed\n", scanner=scanner)
    assert [c.cause.category for c in result.crashes] == ["cuda_oom", "host_oom"]
    assert result.primary is not None and result.primary.category == "host_oom"
    assert result.counts == {"cuda_oom": 1, "host_oom": 1}


def test_ignored_and_benign_lines_are_not_crashes(scanner: Scanner) -> None:
    log = "oom_score_adj=0 CUDA out of memory watch\nepoch 3 error_rate=0.1\nall good\n"
    result = classify_text(log, scanner=scanner)
    assert result.primary is None and result.crashes == ()


def test_case_insensitive_rules_and_crlf_lines(scanner: Scanner) -> None:
    primary = classify_text("step 1\r\nLOSS IS NAN at step 12\r\n", scanner=scanner).primary
    assert primary is not None and primary.category == "nan_loss"
    assert primary.text == "LOSS IS NAN at step 12"


def test_a_rule_hyperscan_cannot_compile_still_matches(scanner: Scanner) -> None:
    primary = classify_text("socket: Connection refused by peer\n", scanner=scanner).primary
    assert primary is not None and primary.rule == "network.lookahead"


@pytest.mark.parametrize(
    ("code", "category"),
    [
        (-9, "unknown"),  # SIGKILL alone is not evidence of an OOM kill
        (137, "unknown"),
        (-11, "segfault"),
        (139, "segfault"),
        (-6, "segfault"),
        (2, "unknown"),
    ],
)
def test_exit_status_is_evidence_when_the_log_says_nothing(
    scanner: Scanner, code: int, category: str
) -> None:
    result = classify_text("step 1 loss 0.3\n", exit_code=code, scanner=scanner)
    assert result.primary is not None and result.primary.category == category
    assert result.primary.file is None


def test_exit_status_zero_or_absent_adds_nothing(scanner: Scanner) -> None:
    assert classify_text("step 1\n", exit_code=0, scanner=scanner).primary is None
    assert classify_text("step 1\n", scanner=scanner).primary is None


def test_exit_status_loses_to_a_real_cause_but_beats_a_wrapper(scanner: Scanner) -> None:
    oom = "torch.OutOfMemoryError: CUDA out of memory.\n"
    assert classify_text(oom, exit_code=-9, scanner=scanner).primary.category == "cuda_oom"  # type: ignore[union-attr]
    wrapper = "terminate called after throwing an instance of 'std::bad_alloc'\n"
    assert classify_text(wrapper, exit_code=-11, scanner=scanner).primary.category == "segfault"  # type: ignore[union-attr]


def test_non_retryable_category_is_never_marked_retryable(scanner: Scanner) -> None:
    primary = classify_text("ModuleNotFoundError: No module named 'x'\n", scanner=scanner).primary
    assert primary is not None and primary.retryable is False


def test_binary_and_invalid_utf8_do_not_break_matching(scanner: Scanner) -> None:
    log = b"\x00\xff\xfe garbage \x80\n\xc3(CUDA out of memory\xff\n"
    primary = classify_text(log, scanner=scanner).primary
    assert primary is not None and primary.category == "cuda_oom" and primary.line == 2


lines = st.lists(
    st.sampled_from(
        [
            "step 1 loss 0.5",
            "Killed",
            "CUDA out of memory",
            "oom_score 3",
            "x CUDA error: y",
            "",
            "ValueError: z",
        ]
    ),
    max_size=30,
)


@settings(max_examples=60, deadline=None)
@given(lines)
def test_all_engines_agree_on_every_log(log_lines: list[str]) -> None:
    text = "\n".join(log_lines)
    results = [classify_text(text, scanner=Scanner(SMALL, engine=e)) for e in ENGINES]
    assert all(result == results[0] for result in results)


@settings(max_examples=60, deadline=None)
@given(lines, st.booleans())
def test_a_match_is_numbered_by_the_newlines_before_it(
    log_lines: list[str], pass_newlines: bool
) -> None:
    buffer = "\n".join(log_lines).encode()
    newlines = buffer.count(b"\n") if pass_newlines else None
    for engine in ENGINES:
        matches = Scanner(SMALL, engine=engine).scan(buffer, newlines=newlines).matches
        assert [m.index for m in matches] == [buffer.count(b"\n", 0, m.offset) for m in matches]
        assert all(m.offset == 0 or buffer[m.offset - 1] == ord("\n") for m in matches)


def test_the_engine_in_use_is_named() -> None:
    assert Scanner(SMALL, engine="re").engine == "re"
    if re2 is not None:
        assert Scanner(SMALL, engine="re2").engine == "re2"
    if hyperscan is not None:
        assert Scanner(SMALL).engine == "hyperscan"


def test_compiled_rules_are_cached_and_a_corrupt_cache_is_rebuilt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if hyperscan is None:
        pytest.skip("hyperscan not installed")
    monkeypatch.delenv("CACHE_DIRECTORY")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    log = "x\nRuntimeError: CUDA error: misaligned address\n"
    expected = classify_text(log, scanner=Scanner(SMALL, engine="hyperscan"))
    cached = sorted((tmp_path / "cache" / "trainguard").glob("hyperscan-*.db"))
    assert len(cached) == 2  # the rules, and the ignore patterns' line filter
    assert classify_text(log, scanner=Scanner(SMALL, engine="hyperscan")) == expected
    assert sorted((tmp_path / "cache" / "trainguard").glob("hyperscan-*.db")) == cached
    for path in cached:
        path.write_bytes(b"not a database")
    assert classify_text(log, scanner=Scanner(SMALL, engine="hyperscan")) == expected
    assert all(path.read_bytes() != b"not a database" for path in cached)


@pytest.fixture(params=ENGINES)
def survival(request: pytest.FixtureRequest) -> Scanner:
    return Scanner(SURVIVAL, engine=request.param)


OOM_LINE = "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2 GiB\n"


def _steps(n: int, first: int = 1) -> str:
    return "".join(f"step {i} loss: 0.5\n" for i in range(first, first + n))


def test_exit_status_does_not_join_a_crash_that_ended_long_before_the_process(
    scanner: Scanner,
) -> None:
    """The exit status is evidence of how the process ended: at the end of the log."""
    chatter = "".join(f"loading shard {i}\n" for i in range(BLOCK_GAP + 50))
    result = classify_text(OOM_LINE + chatter, exit_code=-9, scanner=scanner)
    assert [c.cause.category for c in result.crashes] == ["cuda_oom", "unknown"]
    assert result.primary is not None and result.primary.rule == "exit_status.sigkill"


def test_exit_status_joins_a_crash_that_ends_near_the_end(scanner: Scanner) -> None:
    chatter = "".join(f"loading shard {i}\n" for i in range(BLOCK_GAP - 5))
    result = classify_text(OOM_LINE + chatter, exit_code=-9, scanner=scanner)
    assert [c.cause.category for c in result.crashes] == ["cuda_oom"]
    assert [f.rule for f in result.crashes[0].evidence] == ["cuda_oom.torch", "exit_status.sigkill"]


def test_an_error_training_outlived_is_survived_not_the_primary(survival: Scanner) -> None:
    result = classify_text(_steps(5) + OOM_LINE + _steps(50, 6), scanner=survival)
    assert [(c.cause.category, c.survived) for c in result.crashes] == [("cuda_oom", True)]
    assert result.primary is None


def test_an_error_at_the_very_end_is_the_primary(survival: Scanner) -> None:
    result = classify_text(_steps(50) + OOM_LINE, scanner=survival)
    assert [(c.cause.category, c.survived) for c in result.crashes] == [("cuda_oom", False)]
    assert result.primary is not None and result.primary.category == "cuda_oom"


@pytest.mark.parametrize(
    "after",
    [
        _steps(SURVIVAL_LINES - 1),  # progress, but too few lines to tell
        "".join(f"saving shard {i}\n" for i in range(50)),  # lines, but no progress
    ],
    ids=["few-lines", "no-progress"],
)
def test_an_error_is_survived_only_with_progress_and_enough_lines_after_it(
    survival: Scanner, after: str
) -> None:
    result = classify_text(OOM_LINE + after, scanner=survival)
    assert result.primary is not None and result.primary.category == "cuda_oom"


def test_the_last_crash_that_was_not_survived_is_the_primary(survival: Scanner) -> None:
    log = OOM_LINE + _steps(BLOCK_GAP + 5) + "Killed\n" + _steps(30)
    result = classify_text(log, scanner=survival)
    assert [(c.cause.category, c.survived) for c in result.crashes] == [
        ("cuda_oom", True),
        ("host_oom", True),
    ]
    assert result.primary is None
    result = classify_text(log + "x CUDA error: an illegal memory access\n", scanner=survival)
    assert result.primary is not None and result.primary.category == "cuda_error"


def test_an_exit_status_after_a_survived_error_is_its_own_crash(survival: Scanner) -> None:
    result = classify_text(OOM_LINE + _steps(50), exit_code=-11, scanner=survival)
    assert [(c.cause.category, c.survived) for c in result.crashes] == [
        ("cuda_oom", True),
        ("segfault", False),
    ]
    assert result.primary is not None and result.primary.rule == "exit_status.sigsegv"


def test_an_ignored_line_is_not_progress(survival: Scanner) -> None:
    retrying = "".join(f"step {i} Connection refused, retrying\n" for i in range(50))
    result = classify_text(OOM_LINE + retrying, scanner=survival)
    assert result.primary is not None and result.primary.category == "cuda_oom"


def test_a_lookaround_ignore_still_ignores_and_still_spares_what_it_excludes(
    survival: Scanner,
) -> None:
    assert classify_text("Connection refused, retrying\n", scanner=survival).primary is None
    primary = classify_text("Connection refused, retrying: gave up\n", scanner=survival).primary
    assert primary is not None and primary.rule == "network.lookahead"


def test_state_rules_clear_within_the_same_log(survival: Scanner) -> None:
    assert classify_text("step 1 loss: nan\nstep 2 loss: 0.4\n", scanner=survival).primary is None
    primary = classify_text("step 1 loss: 0.4\nstep 2 loss: nan\n", scanner=survival).primary
    assert primary is not None and primary.category == "nan_loss"


survival_lines = st.lists(
    st.sampled_from(
        [
            "step 1 loss: 0.5",
            "step 2 loss: nan",
            "Killed",
            "CUDA out of memory",
            "Connection refused, retrying",
            "Connection refused by peer",
            "oom_score 3",
            "saving",
            "",
        ]
    ),
    max_size=60,
)


@settings(max_examples=60, deadline=None)
@given(survival_lines, st.sampled_from([None, -9, 1]))
def test_all_engines_agree_on_state_progress_and_survival(
    log_lines: list[str], exit_code: int | None
) -> None:
    text = "\n".join(log_lines)
    results = [
        classify_text(text, exit_code=exit_code, scanner=Scanner(SURVIVAL, engine=e))
        for e in ENGINES
    ]
    assert all(result == results[0] for result in results)


@pytest.mark.parametrize("engine", ENGINES[1:])
def test_python_re_confirms_only_the_rules_the_fast_engine_names(engine: str) -> None:
    """Dense candidate lines must not cost a Python search per rule: patterns that backtrack
    exponentially on this line, but that the linear engines rule out, are never run on it."""
    redos = rule("unknown.redos", "unknown", r"(a+)+$", 5)
    slow_ignore = IgnoreRule(id="ignore.redos", pattern=r"^(?!x)(b+)+$")
    scanner = Scanner(Catalog((*SMALL.rules, redos), (*SMALL.ignores, slow_ignore)), engine=engine)
    line = "b" * 40 + "! CUDA out of memory " + "a" * 40 + "!\n"
    started = time.monotonic()
    matches = scanner.scan(line.encode() * 50).matches
    assert [m.rules[0].id for m in matches] == ["cuda_oom.torch"] * 50
    assert time.monotonic() - started < 5
