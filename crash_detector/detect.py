"""Read log files (their tail, or all of them in big chunks) and classify what they show."""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from crash_detector.classify import BLOCK_GAP, Finding, Result, Span, classify, to_findings
from crash_detector.scanner import Match, Scanner
from crash_detector.tail import iter_chunks, last_lines
from trainguard.errors import TrainguardError

CHUNK_SIZE = 8 * 1024 * 1024  # bytes per read of a full scan


class InputError(TrainguardError):
    """A path that cannot be read: exit code 2, as the contract says."""

    exit_code = 2


@dataclass(frozen=True)
class FileScan:
    path: str
    findings: list[Finding]
    lines_read: int
    bytes_read: int
    truncated: bool  # the file shrank or was rotated while it was read
    last_progress: int | None = None  # index (like findings') of its last progress line
    size: int = 0  # the file's size and mtime when it was read: says "this log, unchanged"
    mtime_ns: int = 0
    chains: tuple[int, ...] = ()  # indexes (like findings') of its chained-traceback markers


@dataclass(frozen=True)
class Detection:
    result: Result
    files: list[FileScan]


def log_files(paths: Sequence[str], *, base_dir: Path, default_globs: Sequence[str]) -> list[Path]:
    """PATHs as given (a folder means its *.log), or else the config's globs under base_dir."""
    found: list[Path] = []
    if paths:
        for text in paths:
            path = Path(text)
            if path.is_dir():
                # A folder's entries are whatever is there: a sub-folder or FIFO named x.log is
                # skipped, while a file named on the command line must be readable.
                logs = sorted(p for p in path.glob("*.log") if p.is_file())
                if not logs:
                    raise InputError(f"no *.log files in {text}")
                found.extend(logs)
            elif path.exists():
                found.append(path)
            else:
                raise InputError(f"{text}: no such file or directory")
        return found
    for pattern in default_globs:
        # base_dir is a path, not a pattern: a workspace named `run[1]` must still match.
        matches = sorted(
            glob.glob(os.path.join(glob.escape(str(base_dir)), pattern), recursive=True)
        )
        found.extend(Path(m) for m in matches if Path(m).is_file())
    if not found:
        shown = ", ".join(default_globs)
        raise InputError(
            f"no log files match {shown} in {base_dir} (give PATHs or set [crash_detector].logs)"
        )
    return found


def scan_file(
    path: Path,
    scanner: Scanner,
    *,
    last_n_lines: int | None,
    base_index: int = 0,
    chunk_size: int = CHUNK_SIZE,
) -> FileScan:
    """Findings of one file; OSError means the file cannot be read at all.

    A tail that turns out to hold the whole file is scanned as a full read instead, so line
    numbers always count b"\\n" only (as grep -n and editors do), whichever way was taken.
    Either way the answer does not depend on where chunks or the tail begin: the line before
    each is context for the quoted-source check, and a state rule (`loss: nan`) cleared
    anywhere later in the file is dropped.
    """
    info = os.stat(path)
    if last_n_lines is not None:
        # One line more than asked: the context of the first, never a finding itself.
        tail = last_lines(path, last_n_lines + 1)
        if tail.start_offset > 0 or len(tail.lines) > last_n_lines:
            context, kept = b"", tail.lines
            offset = tail.start_offset
            if len(kept) > last_n_lines:
                context, kept = kept[0], kept[1:]
                offset += len(context) + 1
            buffer = b"\n".join(kept)
            scan = scanner.scan(buffer, previous_line=context)
            # Offsets are exact for \n-terminated logs; CRLF or cut lines shift them a little.
            findings = to_findings(
                scan.matches,
                clears={rule: base_index + i for rule, i in scan.clears.items()},
                file=str(path),
                first_line=None,
                base_offset=offset,
                base_index=base_index,
            )
            progress = None if scan.last_progress is None else base_index + scan.last_progress
            return FileScan(
                str(path), findings, len(kept), len(buffer), tail.truncated, progress,
                info.st_size, info.st_mtime_ns, tuple(base_index + i for i in scan.chains),
            )  # fmt: skip
    # Matches wait for the end of the file: a later chunk may clear a state rule.
    pending: list[tuple[list[Match], int, int, int]] = []
    clears: dict[str, int] = {}
    chains: list[int] = []
    track: set[str] = set()  # state rules matched so far, whose clearing later chunks report
    progress = None
    previous = b""
    last = None
    truncated = False
    # The next chunk is read and its lines counted in a thread while Hyperscan scans this one
    # (a file of one chunk has nothing to overlap).
    read_ahead = info.st_size > chunk_size
    with iter_chunks(path, chunk_size=chunk_size, read_ahead=read_ahead) as reader:
        for chunk in reader:
            index = base_index + chunk.first_line_number - 1
            scan = scanner.scan(
                chunk.data,
                previous_line=previous,
                track=track,
                newlines=chunk.newlines,
                # A full scan reads lines as written, whatever the file's size; a tail that
                # turned out to hold the whole file is still a tail (see Scanner.scan).
                views=last_n_lines is not None,
            )
            pending.append((scan.matches, chunk.first_line_number, chunk.offset, index))
            track.update(r.id for m in scan.matches for r in m.rules if r.cleared_by)
            clears.update({rule: index + i for rule, i in scan.clears.items()})
            chains.extend(index + i for i in scan.chains)
            if scan.last_progress is not None:
                progress = index + scan.last_progress
            previous = chunk.data[chunk.data.rfind(b"\n", 0, len(chunk.data) - 1) + 1 :]
            last = chunk
            truncated = truncated or chunk.truncated
    findings = [
        finding
        for matches, first_line, offset, index in pending
        for finding in to_findings(
            matches,
            clears=clears,
            file=str(path),
            first_line=first_line,
            base_offset=offset,
            base_index=index,
        )
    ]
    if last is None:
        return FileScan(str(path), findings, 0, 0, truncated, None, info.st_size, info.st_mtime_ns)
    unterminated = bool(last.data) and not last.data.endswith(b"\n")
    lines = last.first_line_number - 1 + last.newlines + unterminated
    return FileScan(
        str(path), findings, lines, last.offset + len(last.data), truncated, progress,
        info.st_size, info.st_mtime_ns, tuple(chains),
    )  # fmt: skip


def detect(
    files: Sequence[Path],
    scanner: Scanner,
    *,
    last_n_lines: int | None = None,
    exit_code: int | None = None,
    chunk_size: int = CHUNK_SIZE,
) -> Detection:
    """Scan `files` oldest first (by mtime), so the most recent crash is the primary one."""
    ordered = sorted(files, key=_mtime)
    scans: list[FileScan] = []
    spans: list[Span] = []
    base_index = end_index = 0
    for path in ordered:
        try:
            scan = scan_file(
                path,
                scanner,
                last_n_lines=last_n_lines,
                base_index=base_index,
                chunk_size=chunk_size,
            )
        except (OSError, ValueError) as exc:
            raise InputError(
                f"{path}: cannot read: {getattr(exc, 'strerror', None) or exc}"
            ) from None
        scans.append(scan)
        end_index = base_index + scan.lines_read
        spans.append(Span(base_index, end_index, scan.last_progress))
        # Files never share a crash block: leave a gap wider than BLOCK_GAP between them.
        base_index = end_index + BLOCK_GAP + 1
    findings = [finding for scan in scans for finding in scan.findings]
    chains = [marker for scan in scans for marker in scan.chains]
    result = classify(
        findings, end_index=end_index, exit_code=exit_code, spans=spans, chains=chains
    )
    return Detection(result, scans)


def _mtime(path: Path) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return 0.0
