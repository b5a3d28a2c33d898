"""From matched lines (and an exit status) to crashes and their root cause. Pure: no I/O.

A crash is a block of findings with no more than BLOCK_GAP lines between neighbours; its root
cause is the finding of highest rule priority, the latest on a tie. So the CUDA error beats the
`terminate called` line it caused, and a launcher's "exits with return code = 1" loses to the
OOM above it. A block that training outlived (a progress line after it, and SURVIVAL_LINES
more lines in its file) was survived: a warning, a retried OOM, not what stopped the run. The
primary is the root cause of the last crash that was not survived.

A chained Python traceback is read the way Python prints it: the first link is the cause, each
"The above exception was the direct cause of the following exception:" (or "During handling of
the above exception, ...") line leads to a consequence. Markers no more than CHAIN_SPAN lines
apart make one chain. When the findings in the CAUSE_WINDOW lines above a chain's first marker
include one of priority ROOT_CAUSE_PRIORITY or more (a CUDA OOM, an NCCL or CUDA error, a
missing file: not a generic `KeyError`), the findings of its later links, up to CHAIN_SPAN lines
after its last marker, rank below every other finding of the block: the NCCL error (72) that a
missing data shard (70) led to stays evidence but is not the root cause. A generic first link
changes nothing: its specific consequence is the best explanation there is.
"""

from __future__ import annotations

import signal
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from crash_detector.rules import NON_RETRYABLE, Catalog, load_rules
from crash_detector.scanner import Match, Scanner

BLOCK_GAP = 200  # lines: a restart and hours of training in between make two crashes
SURVIVAL_LINES = 20  # lines after a block, one of them progress, that make it survived
CHAIN_SPAN = 200  # lines: at most this far from one marker to the next, or to a consequence
CAUSE_WINDOW = 12  # lines above a chain's first marker: a CUDA error's message runs over several
ROOT_CAUSE_PRIORITY = 64  # a first link this specific keeps its consequences from outranking it

# SIGKILL alone is no evidence of an OOM kill (an operator's kill -9, a scheduler, a userspace
# OOM daemon send it too): it stays `unknown` unless a line says more ("Killed", an OOM-kill line).
_SIGNAL_CATEGORY = {
    signal.SIGKILL: "unknown",
    signal.SIGSEGV: "segfault",
    signal.SIGBUS: "segfault",
    signal.SIGABRT: "segfault",
    signal.SIGILL: "segfault",
    signal.SIGFPE: "segfault",
}
SIGKILL_RULE = "exit_status.sigkill"
_SIGNAL_SUGGESTION = {
    "unknown": "Killed by SIGKILL, with no error of its own and no OOM evidence in the log: the "
    "kernel OOM killer (look for its pid in `dmesg -T | grep -i -e oom -e killed` or "
    "`journalctl -k | grep -i oom`), a cgroup or container memory limit, a userspace OOM daemon "
    "(systemd-oomd, earlyoom), a scheduler, or someone's kill -9.",
    "segfault": "A native crash (signal) without a Python error: run with PYTHONFAULTHANDLER=1 "
    "to get a stack, and check that CUDA, driver, NCCL and extension builds match.",
}


@dataclass(frozen=True)
class Finding:
    category: str
    rule: str
    priority: int
    severity: str
    retryable: bool
    suggestion: str
    text: str
    file: str | None = None
    line: int | None = None  # 1-based, when known (a tail of a big file knows only offsets)
    offset: int | None = None  # byte offset of the line in its file
    index: int = 0  # position among the lines read, for ordering and gaps


@dataclass(frozen=True)
class Crash:
    cause: Finding
    evidence: tuple[Finding, ...]  # every finding of the block, in order, the cause included
    survived: bool = False  # training went on after it: reported, but not the primary


@dataclass(frozen=True)
class Span:
    """The lines [start, end) of one file among those read, and its last progress line."""

    start: int
    end: int
    last_progress: int | None = None


@dataclass(frozen=True)
class Result:
    crashes: tuple[Crash, ...]
    primary: Finding | None

    @property
    def counts(self) -> dict[str, int]:
        return dict(Counter(crash.cause.category for crash in self.crashes))


def to_findings(
    matches: Iterable[Match],
    *,
    clears: Mapping[str, int] | None = None,
    file: str | None = None,
    first_line: int | None = None,
    base_offset: int = 0,
    base_index: int = 0,
) -> list[Finding]:
    """One finding per matched line: the line's highest-priority rule speaks for it.

    `clears` maps a state rule's id to the index (counted like `base_index + match.index`) of
    the last line that clears it: the rule does not hold on that line or any before it.
    """
    clears = clears or {}
    findings = []
    for match in matches:
        index = base_index + match.index
        rules = [r for r in match.rules if not r.cleared_by or clears.get(r.id, -1) < index]
        if not rules:
            continue
        rule = max(rules, key=lambda r: r.priority)
        findings.append(
            Finding(
                category=rule.category,
                rule=rule.id,
                priority=rule.priority,
                severity=rule.severity,
                retryable=rule.retryable and rule.category not in NON_RETRYABLE,
                suggestion=rule.suggestion,
                text=match.text.strip()[:2000],
                file=file,
                line=None if first_line is None else first_line + match.index,
                offset=base_offset + match.offset,
                index=index,
            )
        )
    return findings


def exit_status_finding(returncode: int, *, index: int) -> Finding | None:
    """Evidence from how the process ended: negative = killed by that signal, 128+N likewise."""
    if returncode == 0:
        return None
    signum = -returncode if returncode < 0 else returncode - 128 if returncode > 128 else 0
    category = _SIGNAL_CATEGORY.get(signal.Signals(signum)) if _is_signal(signum) else None
    if category is not None:
        name = signal.Signals(signum).name
        text = f"process ended by {name} (exit status {returncode})"
        return Finding(
            category, f"exit_status.{name.lower()}", 15, "critical", True,
            _SIGNAL_SUGGESTION[category], text, index=index,
        )  # fmt: skip
    return Finding(
        "unknown", "exit_status.nonzero", 1, "error", True,
        "The process failed without a recognizable error: read the end of its log.",
        f"process exited with status {returncode}", index=index,
    )  # fmt: skip


def _is_signal(signum: int) -> bool:
    return signum > 0 and signum in {s.value for s in signal.Signals}


def group(findings: Sequence[Finding], gap: int = BLOCK_GAP) -> list[list[Finding]]:
    blocks: list[list[Finding]] = []
    for finding in sorted(findings, key=lambda f: f.index):
        if blocks and finding.index - blocks[-1][-1].index <= gap:
            blocks[-1].append(finding)
        else:
            blocks.append([finding])
    return blocks


def root_cause(block: Sequence[Finding], chains: Sequence[tuple[int, int]] = ()) -> Finding:
    """The finding of highest priority, the latest on a tie; consequences of `chains` last."""
    after = consequences(block, chains)
    return max(block, key=lambda f: (f.index not in after, f.priority, f.index))


def link(markers: Iterable[int], span: int = CHAIN_SPAN) -> list[tuple[int, int]]:
    """(first, last) marker index of each chain: markers within `span` lines of the previous
    one link the tracebacks of one chained exception."""
    chains: list[tuple[int, int]] = []
    for marker in sorted(markers):
        if chains and marker - chains[-1][1] <= span:
            chains[-1] = (chains[-1][0], marker)
        else:
            chains.append((marker, marker))
    return chains


def consequences(block: Sequence[Finding], chains: Sequence[tuple[int, int]]) -> set[int]:
    """Indexes of the findings of `block` that a specific first link of a chain explains."""
    explained: set[int] = set()
    for first, last in chains:
        cause = [f.priority for f in block if first - CAUSE_WINDOW <= f.index < first]
        if cause and max(cause) >= ROOT_CAUSE_PRIORITY:
            explained.update(f.index for f in block if first < f.index <= last + CHAIN_SPAN)
    return explained


def survived(block: Sequence[Finding], spans: Sequence[Span]) -> bool:
    """Did training go on after `block`, in the same file, for SURVIVAL_LINES lines or more?"""
    last = block[-1].index
    for span in spans:
        if span.start <= last < span.end:
            after = span.end - 1 - last
            progress = span.last_progress
            return progress is not None and progress > last and after >= SURVIVAL_LINES
    return False


def classify(
    findings: Sequence[Finding],
    *,
    end_index: int,
    exit_code: int | None = None,
    spans: Sequence[Span] = (),
    chains: Sequence[int] = (),
) -> Result:
    """Crashes in `findings` among the lines [0, end_index) that were read.

    The exit status, if given, is evidence found at `end_index`, when the process ended: it
    joins the last crash only if that one ends within BLOCK_GAP lines of the end and was not
    survived, so an old crash thousands of lines up never takes the blame for a new exit.
    `spans` (one per file) tell where training showed progress; without them nothing is
    survived. `chains` are the indexes of chained-traceback markers (see the module's doc).
    """
    linked = link(chains)
    blocks = group(findings)
    outlived = [survived(block, spans) for block in blocks]
    evidence = None if exit_code is None else exit_status_finding(exit_code, index=end_index)
    if evidence is not None:
        joins = blocks and not outlived[-1] and end_index - blocks[-1][-1].index <= BLOCK_GAP
        if joins:
            blocks[-1].append(replace(evidence, file=blocks[-1][-1].file))
        else:
            blocks.append([evidence])
            outlived.append(False)
    crashes = tuple(
        Crash(root_cause(block, linked), tuple(block), gone_on)
        for block, gone_on in zip(blocks, outlived, strict=True)
    )
    live = [crash for crash in crashes if not crash.survived]
    return Result(crashes, live[-1].cause if live else None)


def classify_text(
    text: str | bytes,
    *,
    exit_code: int | None = None,
    catalog: Catalog | None = None,
    scanner: Scanner | None = None,
) -> Result:
    """Classify a log excerpt held in memory (the watchdog's log tail, a test's log)."""
    data = text.encode("utf-8", "replace") if isinstance(text, str) else text
    scanner = scanner or Scanner(catalog or load_rules())
    scan = scanner.scan(data)
    findings = to_findings(scan.matches, clears=scan.clears, first_line=1)
    lines = data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)
    spans = [Span(0, lines, scan.last_progress)]
    return classify(findings, end_index=lines, exit_code=exit_code, spans=spans, chains=scan.chains)
