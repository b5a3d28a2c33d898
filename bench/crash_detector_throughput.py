"""crash-detector against grep (full scan) and tail(1) (last lines), on generated training logs.

    .venv/bin/python bench/crash_detector_throughput.py [--size-mb 1024] [--keep] [--full-scan-only]

Generates, in a temporary folder: a `--size-mb` log for the full scan, and a 100 MB and a
2 GB log for the tail (real generated content by default; `--sparse-big` makes the 2 GB one
a sparse hole followed by 64 MB of real log, which is as good for a tail and much faster).
Then prints, side by side:

(a) full scan: `crash-detector FILE --json` against `grep -E -c -f PATTERNS FILE`, where
    PATTERNS is the crash-detector's own rule catalog turned into POSIX ERE by a `python -c`
    (a fixed list of about 40 typical crash patterns when the catalog cannot be imported).
    The commands take turns, run after run, so that a drift in the machine's load hits them
    alike; in-process rows show where crash-detector's time goes (reading, and the scan of
    chunks already in memory, which Hyperscan bounds);
(b) tail: `crash-detector FILE --last-n-lines 1000 --json` on 100 MB and 2 GB against
    `tail -n 1000 FILE > /dev/null`, and `crash_detector.tail.last_lines(FILE, 1000)` called
    in this process.

Every figure is taken with a warm page cache (each file is read once before it is timed);
dropping the cache would need privileges and would measure the disk, not the code.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from gen_training_log import MB, write_log

from crash_detector.tail import iter_chunks, last_lines

# Prints the catalog as JSON [[pattern, ignore_case], ...]; exits 3 if it cannot be imported.
CATALOG_SCRIPT = """
import json, sys
try:
    from crash_detector.rules import load_rules
except ImportError as exc:
    print(exc, file=sys.stderr)
    sys.exit(3)
catalog = load_rules()
rules = getattr(catalog, "rules", catalog)
print(json.dumps([[rule.pattern, bool(rule.ignore_case)] for rule in rules]))
"""

# Python regex syntax, converted like the catalog's: used only when the catalog is missing.
FALLBACK_PATTERNS = [
    r"CUDA out of memory",
    r"torch\.(?:cuda\.)?OutOfMemoryError",
    r"CUDA error: .*",
    r"CUBLAS_STATUS_\w+",
    r"cuDNN error",
    r"device-side assert triggered",
    r"illegal memory access",
    r"NCCL error",
    r"ncclInternalError|ncclSystemError|ncclUnhandledCudaError",
    r"Watchdog caught collective operation timeout",
    r"ProcessGroupNCCL.*[Tt]imeout",
    r"NCCL WARN",
    r"\bKilled\b",
    r"Out of memory: Killed process \d+",
    r"oom-kill",
    r"MemoryError",
    r"Segmentation fault",
    r"SIGSEGV",
    r"core dumped",
    r"Bus error",
    r"No space left on device",
    r"Disk quota exceeded",
    r"ModuleNotFoundError",
    r"ImportError: ",
    r"FileNotFoundError",
    r"No such file or directory",
    r"PermissionError",
    r"Permission denied",
    r"DataLoader worker \(pid \d+\) is killed",
    r"BrokenPipeError",
    r"loss(?: is|=|:)\s*nan\b",
    r"Loss is NaN",
    r"PytorchStreamReader failed",
    r"SafetensorError",
    r"Xid \d+",
    r"fallen off the bus",
    r"ConnectionResetError",
    r"Connection refused",
    r"TimeoutError",
    r"RuntimeError: ",
    r"Traceback \(most recent call last\)",
]

CLASS_ESCAPES = {"d": "0-9", "s": "[:space:]", "w": "[:alnum:]_", "t": "\t"}
ESCAPES = {
    "d": "[0-9]",
    "D": "[^0-9]",
    "s": "[[:space:]]",
    "S": "[^[:space:]]",
    "w": "[[:alnum:]_]",
    "W": "[^[:alnum:]_]",
    "b": r"\b",
    "B": r"\B",
    "A": "^",
    "Z": "$",
    "t": "\t",
}
ERE_SPECIAL = set("\\.[]()*+?{}|^$")
HEX = re.compile(r"x([0-9A-Fa-f]{2})")


def to_ere(pattern: str) -> str | None:
    """`pattern` (Python `re`) in GNU grep -E syntax, or None when ERE cannot say it.

    grep matches line by line, so `[^\\n]` is any character (`.`) and `\\n` never matches.
    """
    pattern = pattern.replace("[^\\n]", ".")
    out: list[str] = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            char, i = _escaped(pattern, i)
            if char is None:
                return None
            if char in ESCAPES:
                out.append(ESCAPES[char])
            elif len(char) == 1 and char.isalnum():
                return None  # back-references, \n, ...: no ERE equivalent worth writing
            else:
                out.append("\\" + char if char in ERE_SPECIAL else char.lstrip("\\"))
            continue
        if c == "[":
            bracket, i = _bracket(pattern, i)
            if bracket is None:
                return None
            out.append(bracket)
            continue
        if pattern.startswith("(?:", i):
            out.append("(")
            i += 3
        elif pattern.startswith("(?P<", i):
            out.append("(")
            i = pattern.index(">", i) + 1
        elif pattern.startswith("(?", i):
            return None  # lookarounds, inline flags
        elif c in "*+?}" and pattern.startswith("?", i + 1):
            out.append(c)  # a lazy quantifier matches the same lines as a greedy one
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _escaped(pattern: str, i: int) -> tuple[str | None, int]:
    """The escape at pattern[i] (a backslash): its letter, or the character of a \\xHH."""
    if i + 1 == len(pattern):
        return None, i + 1
    hexa = HEX.match(pattern, i + 1)
    if hexa:
        return "\\" + chr(int(hexa.group(1), 16)), hexa.end()  # marked: a literal character
    return pattern[i + 1], i + 2


def _bracket(pattern: str, i: int) -> tuple[str | None, int]:
    """The [...] at pattern[i] as an ERE bracket expression, and the index after it."""
    i += 1
    negate = pattern.startswith("^", i)
    i += negate
    items: list[str] = []
    literal_close = literal_dash = literal_caret = False
    first = True
    while i < len(pattern) and (pattern[i] != "]" or first):
        c = pattern[i]
        first = False
        if c == "\\":
            char, i = _escaped(pattern, i)
            if char is None:
                return None, i
            char = char.lstrip("\\") or "\\"
            if char in CLASS_ESCAPES:
                items.append(CLASS_ESCAPES[char])
            elif char == "]":
                literal_close = True
            elif char == "-":
                literal_dash = True
            elif char == "^":
                literal_caret = True
            elif char.isalnum() or char == "\n":
                return None, i
            else:
                items.append(char)  # a backslash is literal inside an ERE bracket
            continue
        if c == "]":
            literal_close = True
        else:
            items.append(c)
        i += 1
    if i == len(pattern) or not (items or literal_close or literal_dash or literal_caret):
        return None, i
    body = ("]" if literal_close else "") + "".join(items) + ("^" if literal_caret else "")
    if body == "^":  # a lone ^ would read as negation
        return None, i + 1
    return "[" + ("^" if negate else "") + body + ("-" if literal_dash else "") + "]", i + 1


def catalog_patterns(python: str) -> tuple[list[tuple[str, bool]], str]:
    """The rule catalog's (pattern, ignore_case) pairs and where they came from."""
    proc = subprocess.run(
        [python, "-c", CATALOG_SCRIPT], capture_output=True, text=True, check=False
    )
    if proc.returncode == 0:
        pairs = [(str(p), bool(ic)) for p, ic in json.loads(proc.stdout)]
        return pairs, "crash_detector.rules.load_rules()"
    why = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"
    note = f"FALLBACK: {len(FALLBACK_PATTERNS)} hard-coded patterns (catalog not importable: {why})"
    return [(p, False) for p in FALLBACK_PATTERNS], note


def write_grep_patterns(
    pairs: Sequence[tuple[str, bool]], folder: Path
) -> tuple[Path | None, Path | None, list[str]]:
    """PATTERNS files for grep (case-sensitive, -i), and the patterns ERE could not take."""
    sensitive: list[str] = []
    caseless: list[str] = []
    dropped: list[str] = []
    for pattern, ignore_case in pairs:
        ere = to_ere(pattern)
        if ere is None or not _grep_accepts(ere):
            dropped.append(pattern)
            continue
        (caseless if ignore_case else sensitive).append(ere)
    files: list[Path | None] = []
    for name, patterns in (("patterns.ere", sensitive), ("patterns-i.ere", caseless)):
        path = folder / name
        if patterns:
            path.write_text("\n".join(patterns) + "\n")
        files.append(path if patterns else None)
    return files[0], files[1], dropped


def _grep_accepts(ere: str) -> bool:
    proc = subprocess.run(
        ["grep", "-E", "-e", ere, "/dev/null"], capture_output=True, env=_c_locale(), check=False
    )
    return proc.returncode != 2 and not proc.stderr


def _c_locale() -> dict[str, str]:
    return {**os.environ, "LC_ALL": "C"}


def crash_detector_command(python: str) -> tuple[list[str] | None, str]:
    script = Path(python).parent / "crash-detector"
    if script.exists():
        return [str(script)], "console script"
    found = shutil.which("crash-detector")
    if found:
        return [found], "console script from PATH"
    if _imports(python, "crash_detector.cli"):
        return [python, "-m", "crash_detector"], "no console script yet: python -m crash_detector"
    return None, "crash-detector is not installed and crash_detector.cli does not import"


def time_runs(run: Callable[[], object], runs: int) -> list[float]:
    """Seconds of each of `runs` calls, after one untimed call that warms caches."""
    run()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return times


def time_interleaved(commands: Sequence[Callable[[], object]], runs: int) -> list[list[float]]:
    """Seconds of each of `runs` calls of every command, the commands taking turns, after one
    untimed round that warms caches."""
    for run in commands:
        run()
    times: list[list[float]] = [[] for _ in commands]
    for _ in range(runs):
        for run, seconds in zip(commands, times, strict=True):
            started = time.perf_counter()
            run()
            seconds.append(time.perf_counter() - started)
    return times


def run_command(argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> Callable[[], int]:
    def run() -> int:
        proc = subprocess.run(
            argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False
        )
        if proc.returncode not in (0, 1):
            raise RuntimeError(f"{shlex.join(argv)} exited {proc.returncode}: {proc.stderr!r}")
        return proc.returncode

    return run


def _stdout(argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    return subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, check=False
    ).stdout


def _imports(python: str, module: str) -> bool:
    probe = subprocess.run([python, "-c", f"import {module}"], capture_output=True, check=False)
    return probe.returncode == 0


def warm(path: Path) -> None:
    with path.open("rb", buffering=0) as f:
        while f.read(16 * MB):
            pass


def generate(path: Path, size_mb: int, seed: int, *, sparse: bool = False) -> None:
    if path.exists():  # from an earlier run in the same --workdir
        print(f"  {path.name}: reused ({path.stat().st_size / MB:.0f} MB)")
        return
    if sparse:
        real = 64 * MB
        write_log(path, real, seed=seed)
        hole = size_mb * MB - real
        data = path.read_bytes()
        with path.open("wb") as f:
            f.truncate(hole)
            f.seek(hole)
            f.write(data)
        print(f"  {path.name}: {hole / MB:.0f} MB sparse hole + 64 MB real log")
        return
    done = write_log(path, size_mb * MB, seed=seed)
    print(
        f"  {path.name}: {done.size / MB:.0f} MB, {done.lines} lines in {done.seconds:.1f}s "
        f"({done.size / MB / done.seconds:.0f} MB/s)"
        f"   [{sys.executable} bench/gen_training_log.py {path.name} --size-mb {size_mb}"
        f" --seed {seed}]"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024, help="full-scan log size")
    parser.add_argument("--tail-sizes-mb", default="100,2048", help="comma-separated")
    parser.add_argument("--runs", type=int, default=5, help="timed runs per tail figure")
    parser.add_argument("--scan-runs", type=int, default=3, help="timed runs per full scan")
    parser.add_argument("--sparse-big", action="store_true", help="2 GB tail log mostly a hole")
    parser.add_argument("--keep", action="store_true", help="keep the generated logs")
    parser.add_argument("--workdir", type=Path, help="use this folder (kept) instead of a temp")
    parser.add_argument("--full-scan-only", action="store_true", help="skip the tail figures")
    args = parser.parse_args(argv)

    work = args.workdir or Path(tempfile.mkdtemp(prefix="crash-detector-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    python = sys.executable
    print(f"machine: {os.cpu_count()} CPUs, {sys.platform}, Python {sys.version.split()[0]}")
    print(f"workdir: {work}   (warm page cache for every figure)")
    try:
        scan_log = work / f"full_{args.size_mb}mb.log"
        tail_logs = [work / f"tail_{int(s)}mb.log" for s in args.tail_sizes_mb.split(",")]
        if args.full_scan_only:
            tail_logs = []
        print("generating logs:")
        generate(scan_log, args.size_mb, seed=0)
        for i, path in enumerate(tail_logs):
            size = int(path.stem.split("_")[1].removesuffix("mb"))
            generate(path, size, seed=i + 1, sparse=args.sparse_big and size > 1024)

        detector, how = crash_detector_command(python)
        print(f"\ncrash-detector: {how}")
        extra: list[str] = []
        if detector is not None:
            usage = subprocess.run(
                [*detector, "--help"], capture_output=True, text=True, check=False
            )
            if "--no-history" in usage.stdout:
                extra = ["--no-history"]  # a benchmark must not grow the crash history
        full_scan(work, scan_log, detector, extra, python, args.scan_runs)
        if tail_logs:
            tail(work, tail_logs, detector, extra, args.runs)
    finally:
        if args.keep or args.workdir:
            print(f"\nkept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


def full_scan(
    work: Path,
    log: Path,
    detector: list[str] | None,
    extra: list[str],
    python: str,
    runs: int,
) -> None:
    size_mb = log.stat().st_size / MB
    print(f"\n(a) full scan of {log.name} ({size_mb:.0f} MB), median of {runs} runs")
    warm(log)
    pairs, source = catalog_patterns(python)
    print(f"  patterns: {len(pairs)} from {source}")
    print(f"    [{python} -c '<print load_rules() patterns as JSON>']")
    sensitive, caseless, dropped = write_grep_patterns(pairs, work)
    if dropped:
        print(f"  {len(dropped)} patterns have no ERE form and are left out of grep's run:")
        for pattern in dropped:
            print(f"    {pattern}")
    grep_runs = [
        ["grep", "-E", *flags, "-c", "-f", str(patterns), str(log)]
        for flags, patterns in (([], sensitive), (["-i"], caseless))
        if patterns is not None
    ]
    for cmd in grep_runs:
        print(f"    [LC_ALL=C {shlex.join(cmd)}]")
    commands = [run_command(cmd, work, _c_locale()) for cmd in grep_runs]
    cmd = [*(detector or []), str(log), "--json", *extra]
    if detector is not None:
        print(f"    [{shlex.join(cmd)}]")
        commands.append(run_command(cmd, work))
    print(f"  ({len(commands)} commands taking turns, {runs} rounds after a warm-up round)")
    times = time_interleaved(commands, runs)
    medians = [statistics.median(t) for t in times]
    grep_time = sum(medians[: len(grep_runs)])
    rows: list[tuple[str, float, str]] = []
    if len(grep_runs) > 1:
        for argv, seconds, each in zip(grep_runs, medians, times, strict=False):
            rows.append((f"  grep pass {' '.join(argv[1:3])}", seconds, _spread(each)))
    label = "grep -E -c (case-sensitive + -i pass)" if len(grep_runs) > 1 else "grep -E -c"
    rows.append((label, grep_time, ""))
    counts = [_stdout(cmd, work, _c_locale()).strip() for cmd in grep_runs]
    print(f"  grep: {' + '.join(counts)} matching lines")
    if detector is None:
        print("  crash-detector: NOT RUN (not installed and crash_detector.cli does not import)")
    else:
        rows.append(("crash-detector --json", medians[-1], _spread(times[-1])))
        found = json.loads(_stdout(cmd, work))
        primary = (found.get("primary") or {}).get("category")
        engine = "hyperscan" if _imports(python, "hyperscan") else "re (hyperscan not installed)"
        print(f"  crash-detector: {found.get('counts')}, primary {primary}; engine {engine}")
    rows.append(("iter_chunks() alone, in-process", _iter_chunks_seconds(log, runs), ""))
    print(f"    [for chunk in crash_detector.tail.iter_chunks({log.name}): pass]")
    scan_seconds = _scan_seconds(log, runs)
    if scan_seconds is not None:
        rows.append(("Scanner.scan of chunks in memory", scan_seconds, ""))
        print(
            "    [Scanner(load_rules()).scan(c.data, newlines=c.newlines) for c in <chunks of"
            f" {log.name} read beforehand>, in-process]"
        )
    print(f"  {'':40} {'seconds':>9} {'MB/s':>8} {'vs grep':>8}   all runs (s)")
    for name, seconds, spread in rows:
        ratio = grep_time / seconds
        print(f"  {name:40} {seconds:9.3f} {size_mb / seconds:8.0f} {ratio:7.2f}x   {spread}")


def _spread(times: Sequence[float]) -> str:
    return " ".join(f"{t:.3f}" for t in times)


def _scan_seconds(log: Path, runs: int) -> float | None:
    """The scan alone, without reading: what Hyperscan (and the confirming) costs."""
    try:
        from crash_detector.rules import load_rules
        from crash_detector.scanner import Scanner
    except ImportError:
        return None
    scanner = Scanner(load_rules())
    chunks = [(chunk.data, chunk.newlines) for chunk in iter_chunks(log)]

    def scan() -> None:
        for data, newlines in chunks:
            scanner.scan(data, newlines=newlines)

    return statistics.median(time_runs(scan, runs))


def _iter_chunks_seconds(log: Path, runs: int) -> float:
    def scan() -> None:
        for _chunk in iter_chunks(log):
            pass

    return statistics.median(time_runs(scan, runs))


def tail(
    work: Path, logs: list[Path], detector: list[str] | None, extra: list[str], runs: int
) -> None:
    print(f"\n(b) last 1000 lines, in ms: median of {runs} runs (last_lines: of {runs * 10})")
    table: dict[str, list[float]] = {}
    for log in logs:
        warm_tail(log)
        cmd = ["tail", "-n", "1000", str(log)]
        print(f"    [{shlex.join(cmd)} > /dev/null]")
        table.setdefault("tail -n 1000 > /dev/null", []).append(
            statistics.median(time_runs(run_command(cmd, work), runs))
        )
        if detector is not None:
            cmd = [*detector, str(log), "--last-n-lines", "1000", "--json", *extra]
            print(f"    [{shlex.join(cmd)}]")
            table.setdefault("crash-detector --last-n-lines 1000 --json", []).append(
                statistics.median(time_runs(run_command(cmd, work), runs))
            )
    if detector is None:
        print("  crash-detector: NOT RUN (not installed and crash_detector.cli does not import)")
    names = ", ".join(repr(log.name) for log in logs)
    print(
        f"    [crash_detector.tail.last_lines(f, 1000) for f in {names}, interleaved, in-process]"
    )
    table["last_lines(path, 1000) in-process"] = _last_lines_seconds(logs, runs * 10)
    read = [_bytes_read_by_last_lines(log) for log in logs]
    table_kib = ", ".join(f"{b / 1024:.0f} KiB" for b in read)
    covered = [log.stat().st_size - last_lines(log, 1000).start_offset for log in logs]
    print(
        "  the last 1000 lines hold "
        + ", ".join(f"{c / 1024:.0f} KiB" for c in covered)
        + f"; last_lines read {table_kib}"
    )
    sizes = [f"{log.stat().st_size / MB:.0f} MB" for log in logs]
    print(f"  {'':44}" + "".join(f"{s:>12}" for s in sizes))
    for name, seconds in table.items():
        print(f"  {name:44}" + "".join(f"{s * 1000:12.2f}" for s in seconds))


def _last_lines_seconds(logs: list[Path], runs: int) -> list[float]:
    """Median seconds per log, the logs taking turns so that drifts hit them all alike."""
    times: dict[Path, list[float]] = {log: [] for log in logs}
    for _ in range(runs + 1):
        for log in logs:
            started = time.perf_counter()
            last_lines(log, 1000)
            times[log].append(time.perf_counter() - started)
    return [statistics.median(times[log][1:]) for log in logs]  # the first call warms


def _bytes_read_by_last_lines(log: Path) -> int:
    """Bytes `last_lines(log, 1000)` reads: it reads with os.pread only."""
    read = 0
    real = os.pread

    def counting(fd: int, length: int, offset: int) -> bytes:
        nonlocal read
        data = real(fd, length, offset)
        read += len(data)
        return data

    os.pread = counting
    try:
        last_lines(log, 1000)
    finally:
        os.pread = real
    return read


def warm_tail(log: Path) -> None:
    """Read the last 64 MB: all a tail touches (a 2 GB log need not be cached whole)."""
    size = log.stat().st_size
    with log.open("rb") as f:
        f.seek(max(0, size - 64 * MB))
        while f.read(16 * MB):
            pass


if __name__ == "__main__":
    sys.exit(main())
