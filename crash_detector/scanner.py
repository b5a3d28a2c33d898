"""Match every rule against a buffer of log lines in one pass.

Hyperscan (x86-64) runs all patterns over a whole chunk at hundreds of MB/s and says which
lines may match which rules; Python's `re` then confirms those few (line, rule) pairs. Where
Hyperscan is missing, one combined RE2 alternation (linear time, ~100 MB/s) finds the
candidate lines and an RE2 Set names the rules that match each of them. Neither engine takes
lookarounds: such a pattern is searched without them (a wider net) and confirmed as written.
What they still refuse (a backreference) is searched with Python's `re`, whose backtracking
manages well under 1 MB/s on a 140-way alternation. Same answers from all three.

Besides findings, a scan reports three facts a caller needs across chunks: where each state
rule (`cleared_by`) was last cleared, the last line that shows training going on, and the lines
that link the tracebacks of a chained exception. The chain patterns are searched by the same
engine in the same pass as the rules, so on a big log they cost next to nothing.

A tail is also read as `log_views` shows it (colour codes inside lines
removed, glued lines cut apart, wrapped ones joined), keeping what that adds; and the lines of
an exception Python printed and ignored (`unraisable`) are no finding.
"""

from __future__ import annotations

import bisect
import hashlib
import os
import re
from collections.abc import Callable, Collection, Iterable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from crash_detector import db_cache, log_views, unraisable
from crash_detector.rules import Catalog, CatalogPattern, Rule

hyperscan: Any
re2: Any
try:  # the fast engine; wheels exist for x86-64 Linux
    import hyperscan
except ImportError:  # pragma: no cover - depends on the platform
    hyperscan = None
try:  # the portable linear-time engine; wheels for aarch64 and macOS too
    import re2 as _re2
except ImportError:  # pragma: no cover - depends on the platform
    _re2 = None
re2 = _re2

ENGINES = ("auto", "hyperscan", "re2", "re")

# A traceback frame line, maybe behind a rank prefix (`[rank0]:`, `node3: `). Python quotes the
# frame's source on the next line, behind the same prefix and indented deeper (4 spaces against
# the frame's 2): code, not an error that happened. Frames without source (`<string>`, frozen
# importlib) are followed directly by the exception, which must stay evidence.
_FRAME = re.compile(rb'(?P<prefix>.*?)(?P<indent>[ \t]*)File "[^"]*", line \d+')
_ANSI = re.compile(log_views.ANSI.decode())
_WINDOW = 4096  # bytes at the end of a buffer where the last progress line is sought first


@dataclass(frozen=True)
class Match:
    """A line that matched at least one rule and no ignore pattern."""

    index: int  # 0-based line index within the scanned buffer
    offset: int  # byte offset of the line within the buffer
    text: str
    rules: tuple[Rule, ...]  # every rule that matched it, in catalog order


@dataclass(frozen=True)
class ScanResult:
    """What one buffer shows. State rules are not dropped here: a later buffer may clear them."""

    matches: list[Match]
    # state rule id -> line index of the last line in the buffer that clears it (rules that
    # matched in this buffer, and those the caller asked to `track`); absent: never cleared
    clears: dict[str, int] = field(default_factory=dict)
    last_progress: int | None = None  # line index of the last progress line
    chains: list[int] = field(default_factory=list)  # line indexes of chain markers, ascending


class NotCached(Exception):
    """A Hyperscan database is not in the cache, and the caller asked not to compile it."""


class Scanner:
    def __init__(self, catalog: Catalog, *, engine: str = "auto", may_compile: bool = True) -> None:
        """`may_compile=False`: load Hyperscan databases from the cache only, else NotCached."""
        for name, module in (("hyperscan", hyperscan), ("re2", re2)):
            if engine == name and module is None:
                pkg = "google-re2" if name == "re2" else name
                raise RuntimeError(f"the {name} engine is not installed (pip install {pkg})")
        self.rules = catalog.rules
        self._order = {rule.id: position for position, rule in enumerate(self.rules)}
        self.chains = catalog.chains
        # Chain markers ride in the rules' finder, after the rules (pattern index >=
        # len(rules)): a separate finder would be a second pass over every buffer.
        searched = (*self.rules, *self.chains, unraisable.HEADER_PATTERN)
        self._header = len(searched) - 1  # so does the header of an ignored exception
        self._rule_re = _Compiled(searched)
        self._ignore_re = _Compiled(catalog.ignores)
        self._progress_re = _Compiled(catalog.progress)
        self._rules = _Finder(searched, engine, may_compile)
        ignores = [_searched(ignore) for ignore in catalog.ignores]
        self._ignores = _LineFilter(ignores, engine, may_compile)
        self._progress = None
        if catalog.progress:
            self._progress = _Finder(catalog.progress, engine, may_compile)
        self._clear_re: dict[str, Any] = {}
        for rule in self.rules:
            if rule.cleared_by:
                self._clear_re[rule.id] = _compile_one(rule.cleared_by, engine)
        self.engine = self._rules.engine

    def scan(
        self,
        buffer: bytes,
        *,
        previous_line: bytes = b"",
        track: Collection[str] = (),
        newlines: int | None = None,
        views: bool = True,
    ) -> ScanResult:
        """What `buffer` (whole lines separated by b"\\n") shows, in line order.

        `previous_line` is the line just before the buffer (the end of the previous chunk), so
        a traceback frame there still marks the buffer's first line as quoted source. `track`
        names state rules matched in earlier buffers whose clearing the caller still needs.
        `newlines`, the count of b"\\n" in `buffer` if the caller has it, saves counting them.
        `views`: also read the buffer as `log_views` shows it (a tail); a full scan's chunks
        are read as written, so that its answer never depends on where a chunk ends.
        """
        total = buffer.count(b"\n") if newlines is None else newlines
        found, chains, headers = self._matches(buffer, previous_line, total)
        plain = unwrapped = None
        if views:
            plain = log_views.decolour(buffer)
            lines = buffer if plain is None else plain.buffer  # as many lines as the buffer
            unwrapped = log_views.unwrap(lines)
            for view in (plain, log_views.unglue(lines), unwrapped):
                if view is not None:
                    found = self._with_view(buffer, found, view, previous_line)
        if headers:  # exceptions Python printed and went on from
            ignored = unraisable.spans(buffer, headers)
            if unwrapped is not None:  # a wrapped header or frame must not end one early
                ignored += [
                    (unwrapped.pieces(a).start, unwrapped.pieces(b).stop - 1)
                    for a, b in unraisable.spans(unwrapped.buffer)
                ]
            found = [m for m in found if not any(a <= m.index <= b for a, b in ignored)]
            chains = [i for i in chains if not any(a <= i <= b for a, b in ignored)]

        def line_of(offset: int) -> int:  # offsets sought are near the end: count from there
            return total - buffer.count(b"\n", offset)

        stateful = {rule.id for match in found for rule in match.rules if rule.cleared_by}
        clears = {}
        for rule_id in sorted(stateful | (set(track) & self._clear_re.keys())):
            offset = _last_line(buffer, partial(self._last_clear, rule_id, buffer))
            if offset is not None:
                clears[rule_id] = line_of(offset)
        progress = None
        if self._progress is not None:
            progress = _last_line(buffer, partial(self._last_progress, buffer))
        return ScanResult(found, clears, None if progress is None else line_of(progress), chains)

    def _matches(
        self, buffer: bytes, previous_line: bytes, total: int
    ) -> tuple[list[Match], list[int], list[tuple[int, int]]]:
        """The lines that match a rule; the indexes of the chain markers, and of the headers of
        ignored exceptions."""
        confirmed: list[tuple[int, str, tuple[Rule, ...], str]] = []
        for start, candidates in sorted(self._rules.lines(buffer).items()):
            end = buffer.find(b"\n", start)
            match = self._confirm(
                buffer, start, len(buffer) if end < 0 else end, candidates, previous_line
            )
            if match is not None:
                confirmed.append((start, *match))
        indexes = _line_indexes(buffer, [start for start, *_ in confirmed], total)
        found = [
            Match(index, start, text, rules)
            for index, (start, text, rules, _marker) in zip(indexes, confirmed, strict=True)
            if rules
        ]
        marked = list(zip(indexes, (marker for *_, marker in confirmed), strict=True))
        chains = [index for index, marker in marked if marker == "chain"]
        headers = [
            (index, start)
            for index, (start, *_, marker) in zip(indexes, confirmed, strict=True)
            if marker == "header"
        ]
        return found, chains, headers

    def _with_view(
        self, buffer: bytes, found: list[Match], view: log_views.View, previous_line: bytes
    ) -> list[Match]:
        """`found` and what the view's changed lines match that their own lines did not."""
        changed = sorted(view.changed)  # only they are scanned: the others were already
        part = b"\n".join(view.lines[i] for i in changed)
        seen, _, _ = self._matches(part, b"", part.count(b"\n"))
        by_index = {match.index: match for match in found}
        starts: list[int] | None = None
        for match in seen:
            pieces = view.pieces(changed[match.index])
            known = {r.id for i in pieces if i in by_index for r in by_index[i].rules}
            new = [rule for rule in match.rules if rule.id not in known]
            if not new:
                continue
            if starts is None:  # rare: the offsets of the lines, counted once
                starts = [0, *(m.end() for m in re.finditer(b"\n", buffer))]
            first = pieces.start
            if _quotes_source(buffer, starts[first], previous_line):
                continue  # source quoted under a frame, however it was printed
            before = by_index[first].rules if first in by_index else ()
            rules = tuple(sorted((*before, *new), key=lambda rule: self._order[rule.id]))
            by_index[first] = Match(first, starts[first], match.text, rules)
        return [by_index[index] for index in sorted(by_index)]

    def _confirm(
        self,
        buffer: bytes,
        start: int,
        end: int,
        candidates: _Hits,
        previous_line: bytes,
    ) -> tuple[str, tuple[Rule, ...], str] | None:
        """(text, the rules it matches, "chain" or "header" if it is such a marker, else ""), or
        None if it is none of these."""
        if _quotes_source(buffer, start, previous_line):
            return None
        text = _clean(buffer[start:end])
        encoded = text.encode("utf-8")
        if self._ignored(text, encoded):  # first: fewer patterns than rules, and often dense
            return None
        indexes = self._rules.candidates(candidates, encoded)
        hits = [i for i in sorted(indexes) if self._rule_re[i].search(text)]
        rules = len(self.rules)
        matched = tuple(self.rules[i] for i in hits if i < rules)
        marker = "header" if self._header in hits else "chain" if hits and hits[-1] >= rules else ""
        return (text, matched, marker) if matched or marker else None

    def _ignored(self, text: str, encoded: bytes) -> bool:
        return any(self._ignore_re[i].search(text) for i in self._ignores.candidates(encoded))

    def _last_progress(self, buffer: bytes, lo: int, hi: int) -> int | None:
        """Start of the last line in buffer[lo:hi] that shows progress (and is not ignored)."""
        assert self._progress is not None  # only called when the catalog has progress patterns
        for start, candidates in sorted(self._progress.lines(buffer, lo, hi).items(), reverse=True):
            end = buffer.find(b"\n", start, hi)
            text = _clean(buffer[start : hi if end < 0 else end])
            encoded = text.encode("utf-8")
            indexes = self._progress.candidates(candidates, encoded)
            if any(self._progress_re[i].search(text) for i in indexes) and not self._ignored(
                text, encoded
            ):
                return start
        return None

    def _last_clear(self, rule_id: str, buffer: bytes, lo: int, hi: int) -> int | None:
        last = None
        for hit in self._clear_re[rule_id].finditer(buffer, lo, hi):
            last = hit.start()
        return None if last is None else buffer.rfind(b"\n", 0, last) + 1


class _Compiled:
    """The Python `re` form of each pattern, compiled when first asked for: a scan confirms
    only the few patterns the fast engine named on a line, so most are never compiled."""

    def __init__(self, patterns: Sequence[CatalogPattern]) -> None:
        self._patterns = patterns
        self._compiled: list[re.Pattern[str] | None] = [None] * len(patterns)

    def __getitem__(self, index: int) -> re.Pattern[str]:
        compiled = self._compiled[index]
        if compiled is None:
            compiled = self._compiled[index] = self._patterns[index].compiled()
        return compiled


def _clean(line: bytes) -> str:
    """The text rules are confirmed on: decoded, without colour codes or a trailing b"\\r"."""
    return _ANSI.sub("", line.decode("utf-8", "replace")).rstrip("\r")


def _line_indexes(buffer: bytes, offsets: Sequence[int], total: int) -> list[int]:
    """The line index of each of the sorted `offsets`, given `total`, the b"\\n" in `buffer`.

    Only the bytes between neighbours are counted: from the start for offsets in the first
    half, from the end for the others. A buffer costs at most half a count, however its
    matches lie, and nothing when it has none.
    """
    split = bisect.bisect_left(offsets, len(buffer) // 2)
    forward: list[int] = []
    before = at = 0
    for offset in offsets[:split]:
        before += buffer.count(b"\n", at, offset)
        forward.append(before)
        at = offset
    backward: list[int] = []
    before, at = total, len(buffer)
    for offset in reversed(offsets[split:]):
        before -= buffer.count(b"\n", offset, at)
        backward.append(before)
        at = offset
    return forward + backward[::-1]


def _last_line(buffer: bytes, last_in: Callable[[int, int], int | None]) -> int | None:
    """`last_in(lo, hi)` over windows from the end of `buffer`, each twice the last, aligned
    to line starts: the cost follows the distance from the end to the line sought."""
    hi, size = len(buffer), _WINDOW
    while hi > 0:
        lo = 0 if hi <= size else buffer.rfind(b"\n", 0, hi - size) + 1
        found = last_in(lo, hi)
        if found is not None:
            return found
        hi, size = lo, size * 2
    return None


def _quotes_source(buffer: bytes, start: int, previous_line: bytes = b"") -> bool:
    """Is this line the source line quoted under a traceback's `File "...", line N` frame?"""
    if start == 0:
        frame = _FRAME.match(previous_line.rstrip(b"\r\n"))
    else:
        previous = buffer.rfind(b"\n", 0, start - 1) + 1
        if buffer.find(b'File "', previous, start - 1) < 0:  # the usual case, found fast
            return False
        frame = _FRAME.match(buffer, previous, start - 1)
    if frame is None:
        return False
    prefix, indent = frame.group("prefix"), len(frame.group("indent"))
    if not buffer.startswith(prefix, start):
        return False
    body = start + len(prefix)
    head = buffer[body : body + indent + 8]
    return len(head) - len(head.lstrip(b" \t")) > indent


# Candidate hits of one line: Hyperscan's pattern ids, and a bit per combined regex that hit.
_Hits = tuple[set[int], int]
# What a fast engine searches for one pattern: (regex, ignore_case).
_Expr = tuple[str, bool]


class _Finder:
    """Finds the lines of a buffer where some of `patterns` may match, and names them."""

    def __init__(
        self, patterns: Sequence[CatalogPattern], engine: str, may_compile: bool = True
    ) -> None:
        exprs = [_searched(p) for p in patterns]
        rest = list(range(len(patterns)))
        self._db: Any = None
        self.engine = "re"
        if rest and hyperscan is not None and engine in ("auto", "hyperscan"):
            self._db, rest = _compile_hyperscan(exprs, may_compile)
            self.engine = "hyperscan"
        # Each regex finds candidate lines for the pattern indexes beside it; the filter (an
        # RE2 Set) then says which of them match a line, or None: all of them may.
        self._regexes: list[tuple[Any, list[int], _LineFilter | None]] = []
        if rest and re2 is not None and engine in ("auto", "hyperscan", "re2"):
            accepted, rest = _split(rest, exprs)
            if accepted:
                chosen = [exprs[i] for i in accepted]
                filter_ = _LineFilter(chosen, "re2")
                self._regexes.append((_combined_regex(chosen, re2), accepted, filter_))
                self.engine = "re2" if self._db is None else self.engine
        if rest:  # Python's re takes every pattern as written, lookarounds included
            originals = [(patterns[i].pattern, patterns[i].ignore_case) for i in rest]
            self._regexes.append((_combined_regex(originals, re), rest, None))

    def lines(self, buffer: bytes, lo: int = 0, hi: int | None = None) -> dict[int, _Hits]:
        """Line start offset -> the hits in that line, for the lines of buffer[lo:hi]."""
        hi = len(buffer) if hi is None else hi
        lines: dict[int, _Hits] = {}
        if self._db is not None:
            window = buffer if (lo, hi) == (0, len(buffer)) else buffer[lo:hi]

            def on_match(pattern: int, _from: int, to: int, _flags: int, _ctx: Any) -> None:
                start = buffer.rfind(b"\n", 0, max(lo + to - 1, lo)) + 1
                hits = lines.get(start)
                if hits is None:
                    lines[start] = ({pattern}, 0)
                else:
                    hits[0].add(pattern)

            self._db.scan(window, match_event_handler=on_match)
        for bit, (regex, _indexes, _filter) in enumerate(self._regexes):
            for hit in regex.finditer(buffer, lo, hi):
                start = buffer.rfind(b"\n", 0, hit.start()) + 1
                ids, bits = lines.get(start, (set(), 0))
                lines[start] = (ids, bits | 1 << bit)
        return lines

    def candidates(self, hits: _Hits, line: bytes) -> Iterable[int]:
        """Indexes of the patterns that may match `line` (its cleaned text, encoded)."""
        ids, bits = hits
        found = set(ids)
        for bit, (_regex, indexes, line_filter) in enumerate(self._regexes):
            if bits & 1 << bit:
                named = [] if line_filter is None else line_filter.candidates(line)
                # The Set sees the cleaned line, the regex saw raw bytes: if the Set names no
                # rule (colour codes, a match across lines), Python's re tries all of them.
                found.update([indexes[i] for i in named] if named else indexes)
        return found


class _LineFilter:
    """Which of some patterns may match one line, so that Python's `re` confirms only those.

    Hyperscan or an RE2 Set answers for the patterns it accepts; the others always may.
    """

    def __init__(self, exprs: Sequence[_Expr], engine: str, may_compile: bool = True) -> None:
        self._always: list[int] = list(range(len(exprs)))
        self._db: Any = None
        self._set: Any = None
        self._set_ids: list[int] = []
        if not exprs:
            return
        if hyperscan is not None and engine in ("auto", "hyperscan"):
            self._db, self._always = _compile_hyperscan(exprs, may_compile)
        elif re2 is not None and engine in ("auto", "hyperscan", "re2"):
            self._set = re2.Set.SearchSet(_re2_options())
            self._always = []
            for i, expr in enumerate(exprs):
                try:
                    self._set.Add(_flagged(expr))
                except re2.error:
                    self._always.append(i)
                else:
                    self._set_ids.append(i)
            self._set.Compile()

    def candidates(self, line: bytes) -> list[int]:
        found = list(self._always)
        if self._db is not None:

            def on_match(pattern: int, _from: int, _to: int, _flags: int, _ctx: Any) -> None:
                found.append(pattern)

            self._db.scan(line, match_event_handler=on_match)
        elif self._set is not None:
            found.extend(self._set_ids[i] for i in self._set.Match(line) or ())
        return found


_LOOKAROUNDS = ("(?=", "(?!", "(?<=", "(?<!")


def _searched(pattern: CatalogPattern) -> _Expr:
    """What a fast engine searches for `pattern`: the pattern itself, or without its
    lookarounds (which Hyperscan and RE2 refuse). Dropping an assertion only widens what
    matches, so no line is missed, and Python's `re` confirms the pattern as written."""
    return (_relaxed(pattern.pattern) or pattern.pattern, pattern.ignore_case)


def _relaxed(pattern: str) -> str | None:
    """`pattern` with its lookaround groups removed; None if it has none, or if what is left
    matches the empty string (it would make every position a candidate)."""
    kept: list[str] = []
    i, dropped = 0, False
    while i < len(pattern):
        if pattern.startswith(_LOOKAROUNDS, i):
            i, dropped = _group_end(pattern, i), True
        elif pattern[i] == "\\":
            kept.append(pattern[i : i + 2])
            i += 2
        elif pattern[i] == "[":
            end = _class_end(pattern, i)
            kept.append(pattern[i:end])
            i = end
        else:
            kept.append(pattern[i])
            i += 1
    relaxed = "".join(kept)
    if not dropped:
        return None
    try:
        compiled = re.compile(relaxed)
    except re.error:
        return None
    for probe in ("", " ", "a", "a a", "\n"):
        hit = compiled.search(probe)
        if hit is not None and hit.start() == hit.end():
            return None
    return relaxed


def _group_end(pattern: str, i: int) -> int:
    """The index just after the group that opens at `i`."""
    depth = 0
    while i < len(pattern):
        char = pattern[i]
        if char == "\\":
            i += 2
            continue
        if char == "[":
            i = _class_end(pattern, i)
            continue
        depth += {"(": 1, ")": -1}.get(char, 0)
        i += 1
        if depth == 0:
            return i
    return i


def _class_end(pattern: str, i: int) -> int:
    """The index just after the character class that opens at `i` (`[]x]` and `[^]x]` too)."""
    i += 1
    if pattern.startswith("^", i):
        i += 1
    if pattern.startswith("]", i):
        i += 1
    while i < len(pattern) and pattern[i] != "]":
        i += 2 if pattern[i] == "\\" else 1
    return i + 1


def _flagged(expr: _Expr) -> str:
    pattern, ignore_case = expr
    return f"(?i:{pattern})" if ignore_case else f"(?:{pattern})"


def _compile_one(pattern: str, engine: str) -> Any:
    """One multi-line regex over bytes: RE2 where the engine allows it and it accepts it."""
    if re2 is not None and engine != "re":
        with suppress(re2.error):
            return re2.compile(f"(?m){pattern}".encode(), _re2_options())
    return re.compile(pattern.encode(), re.MULTILINE)


def _combined_regex(exprs: Sequence[_Expr], module: Any) -> Any:
    """One alternation of `exprs` compiled by `module` (re or re2), `^`/`$` at line ends."""
    pattern = ("(?m)" + "|".join(_flagged(e) for e in exprs)).encode()
    return module.compile(pattern, _re2_options()) if module is re2 else re.compile(pattern)


def _re2_options() -> Any:
    options = re2.Options()
    options.log_errors = False  # a refused pattern is handled here, not printed by absl
    options.max_mem = 256 << 20  # room for the DFA of ~150 alternatives
    return options


def _re2_accepts(exprs: Sequence[_Expr]) -> bool:
    try:
        _combined_regex(exprs, re2)
    except re2.error:
        return False
    return True


def _split(indexes: list[int], exprs: Sequence[_Expr]) -> tuple[list[int], list[int]]:
    """(accepted, refused) by RE2: all at once when the whole set compiles, else one by one."""
    if _re2_accepts([exprs[i] for i in indexes]):
        return indexes, []
    accepted = [i for i in indexes if _re2_accepts([exprs[i]])]
    return accepted, [i for i in indexes if i not in accepted]


def _compile_hyperscan(exprs: Sequence[_Expr], may_compile: bool) -> tuple[Any, list[int]]:
    """A database of every expression Hyperscan accepts, and the indexes of those it refused.

    Without `may_compile`, only a database of them all, from the cache (the bundled catalog is
    all accepted: a test says so), or NotCached."""
    assert hyperscan is not None
    everything = list(range(len(exprs)))
    try:
        return _hs_database(exprs, everything, may_compile), []
    except hyperscan.error:  # find the few it refuses, one by one: slower, and rare
        refused = [i for i in everything if not _hyperscan_accepts(exprs[i])]
        accepted = [i for i in everything if i not in refused]
        return (_hs_database(exprs, accepted) if accepted else None), refused


def _hs_database(exprs: Sequence[_Expr], indexes: list[int], may_compile: bool = True) -> Any:
    """Load the same database compiled by an earlier run, or compile it (compiling ~150 rules
    takes about half a second and ~12 MiB of heap; loading it takes a millisecond)."""
    assert hyperscan is not None
    expressions = [exprs[i][0].encode() for i in indexes]
    flags = [_hs_flags(exprs[i]) for i in indexes]
    key = hashlib.sha256(
        repr((hyperscan.__version__, os.uname().machine, expressions, flags, indexes)).encode()
    ).hexdigest()[:32]
    name = f"hyperscan-{key}.db"
    for data in db_cache.cached(name):
        try:
            loaded = hyperscan.loadb(data, hyperscan.HS_MODE_BLOCK)
        except hyperscan.error:
            continue  # damaged, or built for another CPU
        loaded.scratch = hyperscan.Scratch(loaded)  # a loaded database comes without one
        return loaded
    if not may_compile:
        raise NotCached(name)
    db = hyperscan.Database()
    db.compile(expressions=expressions, ids=indexes, elements=len(indexes), flags=flags)
    db_cache.store(name, hyperscan.dumpb(db))
    return db


def _hs_flags(expr: _Expr) -> int:
    assert hyperscan is not None
    caseless = hyperscan.HS_FLAG_CASELESS if expr[1] else 0
    return int(hyperscan.HS_FLAG_MULTILINE | caseless)


def _hyperscan_accepts(expr: _Expr) -> bool:
    assert hyperscan is not None
    try:
        hyperscan.Database().compile(expressions=[expr[0].encode()], flags=[_hs_flags(expr)])
    except hyperscan.error:
        return False
    return True
