"""Chained tracebacks: the first link is the cause, the later links are its consequences."""

from __future__ import annotations

from pathlib import Path

import pytest

from crash_detector.classify import classify_text
from crash_detector.cli import main
from crash_detector.detect import detect
from crash_detector.rules import RulesError, load_rules
from crash_detector.scanner import Scanner, hyperscan, re2

SCANNER = Scanner(load_rules())
ENGINES = [
    "re",
    *(["re2"] if re2 is not None else []),
    *(["hyperscan"] if hyperscan is not None else []),
]
DIRECT = "The above exception was the direct cause of the following exception:"
DURING = "During handling of the above exception, another exception occurred:"
FILLER = "".join(f"data: shard {i} opened\n" for i in range(40))

OOM_LINK = """\
Traceback (most recent call last):
  File "/workspace/train.py", line 211, in train_step
    loss = model(**batch).loss
  File "/usr/lib/python3/dist-packages/torch/nn/modules/module.py", line 1736, in _call_impl
    return forward_call(*args, **kwargs)
torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total \
capacity of 79.15 GiB of which 1.06 GiB is free. Including non-PyTorch memory, this process has \
78.08 GiB memory in use. Of the allocated memory 75.12 GiB is allocated by PyTorch, and 1.44 GiB \
is reserved by PyTorch but unallocated. If reserved but unallocated memory is large try setting \
PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation.
"""
MISSING_SHARD_LINK = """\
Traceback (most recent call last):
  File "/workspace/data.py", line 88, in load_shard
    with open(path, "rb") as f:
FileNotFoundError: [Errno 2] No such file or directory: '/data/tokens/shard-00017.bin'
"""
KEY_ERROR_LINK = """\
Traceback (most recent call last):
  File "/workspace/collate.py", line 31, in collate
    ids = [sample["input_ids"] for sample in samples]
KeyError: 'input_ids'
"""
CUDA_ERROR_LINK = """\
Traceback (most recent call last):
  File "/workspace/train.py", line 214, in train_step
    optimizer.step()
RuntimeError: CUDA error: misaligned address
CUDA kernel errors might be asynchronously reported at some other API call, so the stacktrace \
below might be incorrect.
For debugging consider passing CUDA_LAUNCH_BLOCKING=1
Compile with `TORCH_USE_CUDA_DSA` to enable device-side assertions.
"""
NCCL_LINK = """\
Traceback (most recent call last):
  File "/workspace/train.py", line 240, in <module>
    main()
  File "/workspace/train.py", line 231, in main
    dist.all_reduce(failed)
  File "/usr/lib/python3/dist-packages/torch/distributed/distributed_c10d.py", line 2501, in \
all_reduce
    work = group.allreduce([tensor], opts)
torch.distributed.DistBackendError: NCCL error in: ../torch/csrc/distributed/c10d/NCCLUtils.hpp\
:317, remote process exited or there was a network error, NCCL version 2.21.5
"""
ABORT_LINK = """\
Traceback (most recent call last):
  File "/workspace/train.py", line 252, in <module>
    raise RuntimeError(f"rank {rank} failed, aborting the communicator") from exc
RuntimeError: NCCL communicator was aborted on rank 3.
"""


def chained(*links: str, marker: str = DURING, prefix: str = "") -> str:
    """The links of one exception chain as Python prints them, every line behind `prefix`."""
    text = f"\n{marker}\n\n".join(links)
    return "".join(f"{prefix}{line}\n" for line in text.splitlines())


def category(log: str, scanner: Scanner = SCANNER) -> str | None:
    primary = classify_text(log, scanner=scanner).primary
    return None if primary is None else primary.category


def test_the_links_used_here_match_the_rules_they_stand_for() -> None:
    # Each link alone (and so with its marker dropped, two unrelated tracebacks in a row): the
    # later NCCL error outranks the specific causes below unless the chain is read.
    assert category(OOM_LINK) == "cuda_oom"
    assert category(MISSING_SHARD_LINK) == "file_not_found"
    assert category(CUDA_ERROR_LINK) == "cuda_error"
    assert category(KEY_ERROR_LINK) == "unknown"
    assert category(NCCL_LINK) == category(ABORT_LINK) == "nccl"
    assert category(MISSING_SHARD_LINK + "\n" + NCCL_LINK) == "nccl"
    assert category(CUDA_ERROR_LINK + "\n" + NCCL_LINK) == "nccl"


@pytest.mark.parametrize("marker", [DIRECT, DURING])
@pytest.mark.parametrize("consequence", [NCCL_LINK, ABORT_LINK])
def test_a_cuda_oom_stays_the_root_cause_of_the_nccl_error_it_led_to(
    marker: str, consequence: str
) -> None:
    result = classify_text(FILLER + chained(OOM_LINK, consequence, marker=marker), scanner=SCANNER)
    assert result.primary is not None and result.primary.rule == "cuda_oom.torch"
    assert [crash.cause for crash in result.crashes] == [result.primary]
    assert "nccl" in {finding.category for finding in result.crashes[0].evidence}


@pytest.mark.parametrize("marker", [DIRECT, DURING])
def test_a_specific_first_link_outranks_a_consequence_of_higher_priority(marker: str) -> None:
    assert category(chained(MISSING_SHARD_LINK, NCCL_LINK, marker=marker)) == "file_not_found"
    assert category(chained(CUDA_ERROR_LINK, NCCL_LINK, marker=marker)) == "cuda_error"


@pytest.mark.parametrize(
    "prefix", ["[rank1]: ", "(RayTrainWorker pid=1, ip=10.0.0.7) ", "2024-05-01T10:00:00Z "]
)
def test_markers_behind_a_line_prefix_still_link_the_chain(prefix: str) -> None:
    log = chained(MISSING_SHARD_LINK, ABORT_LINK, NCCL_LINK, prefix=prefix)
    assert category(log) == "file_not_found"


def test_a_generic_first_link_leaves_the_specific_consequence_the_root_cause() -> None:
    for marker in (DIRECT, DURING):
        assert category(chained(KEY_ERROR_LINK, NCCL_LINK, marker=marker)) == "nccl"


@pytest.mark.parametrize("engine", ENGINES)
def test_a_marker_line_alone_is_never_a_finding(engine: str) -> None:
    scanner = Scanner(load_rules(), engine=engine)
    log = f"step 1 loss 0.5\n{DIRECT}\n\n[rank0]: {DURING}\nstep 2 loss 0.4\n"
    scan = scanner.scan(log.encode())
    assert scan.matches == [] and scan.chains == [1, 3]
    assert classify_text(log, scanner=scanner).crashes == ()


def test_two_chains_in_one_crash_are_each_read_on_their_own() -> None:
    # Markers more than CHAIN_SPAN lines apart make two chains, bridged into one crash by the
    # other ranks' `terminate called` lines (priority 10); each chain's NCCL consequence
    # outranks its own cause.
    bridge = "".join(
        "terminate called after throwing an instance of 'c10::Error'\n"
        if i % 100 == 0
        else f"[W] rank {i % 8} waiting for the store\n"
        for i in range(1, 301)
    )
    first = chained(CUDA_ERROR_LINK, NCCL_LINK, marker=DIRECT)
    second = chained(MISSING_SHARD_LINK, NCCL_LINK, marker=DURING)
    log = first + bridge + second
    result = classify_text(log, scanner=SCANNER)
    assert len(result.crashes) == 1, [crash.cause for crash in result.crashes]
    # Both causes are at 70, so the later one wins; read as one chain, the second cause
    # would have been a consequence of the first.
    assert result.primary is not None and result.primary.category == "file_not_found"


def test_a_chain_split_across_chunks_reads_as_it_does_whole(tmp_path: Path) -> None:
    log = tmp_path / "daemon.log"
    text = FILLER + chained(MISSING_SHARD_LINK, ABORT_LINK, NCCL_LINK) + FILLER
    log.write_text(text)
    marker = text.index(DURING)
    cause = text.index("FileNotFoundError")
    whole = detect([log], SCANNER)
    assert whole.result.primary is not None
    assert whole.result.primary.category == "file_not_found"
    lines = text.splitlines()
    assert whole.files[0].chains == tuple(i for i, line in enumerate(lines) if DURING in line)
    # The chunk that ends just before the marker, and many more that cut the chain elsewhere.
    for chunk_size in [marker, cause + 40, *range(64, len(text), 97)]:
        split = detect([log], SCANNER, chunk_size=chunk_size)
        assert split.result == whole.result, chunk_size
        assert split.files[0].chains == whole.files[0].chains


def test_a_chain_in_a_tail_reads_as_it_does_whole(tmp_path: Path) -> None:
    log = tmp_path / "daemon.log"
    chain = chained(MISSING_SHARD_LINK, NCCL_LINK)
    log.write_text(FILLER * 3 + chain)
    tail = detect([log], SCANNER, last_n_lines=chain.count("\n") + 2)
    assert tail.result.primary is not None
    assert tail.result.primary.category == "file_not_found"


@pytest.mark.parametrize("engine", ENGINES)
def test_a_rules_file_may_add_a_chain_marker(tmp_path: Path, engine: str) -> None:
    rules = tmp_path / "site-rules.toml"
    rules.write_text(
        '[[chain]]\nid = "site.caused"\npattern = "^-+ raised while handling -+$"\n'
        "ignore_case = true\n"
    )
    catalog = load_rules(rules)
    assert [chain.id for chain in catalog.chains][-1] == "site.caused"
    log = f"{MISSING_SHARD_LINK}--- RAISED WHILE HANDLING ---\n{NCCL_LINK}"
    assert category(log, Scanner(catalog, engine=engine)) == "file_not_found"
    assert category(log, Scanner(load_rules(), engine=engine)) == "nccl"


def test_a_bad_chain_entry_is_a_one_line_rules_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rules = tmp_path / "site-rules.toml"
    rules.write_text('[[chain]]\nid = "site.caused"\npattern = "raised while"\npriority = 90\n')
    with pytest.raises(RulesError, match=r"chain\[0\] \(site\.caused\)\.priority"):
        load_rules(rules)
    (tmp_path / "d.log").write_text(FILLER)
    assert main([str(tmp_path / "d.log"), "--rules", str(rules), "--no-history"]) == 2
    err = capsys.readouterr().err
    assert "chain[0] (site.caused).priority" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_a_chain_id_may_not_repeat_an_id_of_its_rules_file(tmp_path: Path) -> None:
    rules = tmp_path / "site-rules.toml"
    rules.write_text(
        '[[progress]]\nid = "site.mark"\npattern = "iter \\\\d+"\n\n'
        '[[chain]]\nid = "site.mark"\npattern = "raised while"\n'
    )
    with pytest.raises(RulesError, match=r"duplicate rule ids: site\.mark"):
        load_rules(rules)


def test_changed_chain_patterns_compile_a_new_cached_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if hyperscan is None:
        pytest.skip("hyperscan not installed")
    monkeypatch.delenv("CACHE_DIRECTORY", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    cache = tmp_path / "cache" / "trainguard"
    Scanner(load_rules(), engine="hyperscan")
    before = set(cache.glob("hyperscan-*.db"))
    rules = tmp_path / "site-rules.toml"
    rules.write_text('[[chain]]\nid = "chain.direct_cause"\npattern = "caused the following"\n')
    scanner = Scanner(load_rules(rules), engine="hyperscan")
    added = set(cache.glob("hyperscan-*.db")) - before
    assert len(added) == 1  # the rules' database; the ignore patterns' is unchanged
    assert scanner.scan(b"x\nthis caused the following\n").chains == [1]
