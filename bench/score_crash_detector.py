"""Score crash-detector against the labelled dev set in ../shared/data (read in place).

    .venv/bin/python bench/score_crash_detector.py [--data PATH] [--show-misses]
    .venv/bin/python bench/score_crash_detector.py --shapes

Prints accuracy overall and per category, the crash/no-crash confusion, and (with
--show-misses) each miss with its id, label, prediction and the line that decided it.

`--shape NAME` rewrites every log first as another tool would have printed it: each line
behind a rank tag (`rank`, `torchrun`, `mpirun`), Ray's worker prefix (`ray`), kubectl's or
journald's timestamp (`kubectl`, `journald`), in colour (`ansi`), with CRLF line ends
(`crlf`), with each exception's class coloured as IPython does (`ipython`; `pasted`: the codes
without their ESC byte, as a copy from a web page keeps them), hard-wrapped by a terminal 80
or 120 columns wide (`wrap80`, `wrap120`). The label stays right: the same run, collected
another way. `--shapes` prints one line per shape. A rule that holds only for the way one
report was collected shows here.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from crash_detector.classify import classify_text
from crash_detector.rules import load_rules
from crash_detector.scanner import Scanner

DEFAULT_DATA = (
    Path(__file__).resolve().parents[1].parent / "shared" / "data" / "crash_logs_dev.jsonl"
)


def _prefixed(prefix: str) -> Callable[[str], str]:
    return lambda log: "\n".join(prefix + line for line in log.split("\n"))


def _wrapped(width: int) -> Callable[[str], str]:
    """A terminal (or `fold -w`) that hard-wraps every line at `width` columns."""

    def wrap(log: str) -> str:
        out = []
        for line in log.split("\n"):
            out += [line[i : i + width] for i in range(0, len(line), width)] or [""]
        return "\n".join(out)

    return wrap


_EXCEPTION = re.compile(r"^((?:[\w.]+\.)?[A-Z]\w*(?:Error|Exception|Exit|Interrupt))(:)", re.M)


def _ipython(esc: str) -> Callable[[str], str]:
    """IPython/Colab colouring the class of each exception line; `esc=""`: pasted without ESC."""
    return lambda log: _EXCEPTION.sub(lambda m: f"{esc}[0;31m{m[1]}{esc}[0m{m[2]}", log)


SHAPES: dict[str, Callable[[str], str]] = {
    "as-is": lambda log: log,
    "rank": _prefixed("[rank0]: "),
    "torchrun": _prefixed("[default0]:"),
    "mpirun": _prefixed("[1,0]<stderr>:"),
    "ray": _prefixed("(RayTrainWorker pid=48213, ip=10.0.0.7) "),
    "kubectl": _prefixed("2024-05-01T10:00:00.123456789Z "),
    "journald": _prefixed("Dec 05 10:00:00 gpu07 python[48213]: "),
    "ansi": lambda log: "\n".join(f"\x1b[31m{line}\x1b[0m" for line in log.split("\n")),
    "crlf": lambda log: log.replace("\n", "\r\n"),
    "ipython": _ipython("\x1b"),
    "pasted": _ipython(""),
    "wrap80": _wrapped(80),
    "wrap120": _wrapped(120),
}


def score(
    rows: list[dict[str, Any]], scanner: Scanner, shape: Callable[[str], str]
) -> tuple[dict[str, Counter[str]], list[tuple[str, str, str, str]]]:
    per_label: dict[str, Counter[str]] = defaultdict(Counter)
    misses = []
    for row in rows:
        result = classify_text(shape(row["log"]), exit_code=row["exit_code"], scanner=scanner)
        predicted = result.primary.category if result.primary else "none"
        per_label[row["category"]][predicted] += 1
        if predicted != row["category"]:
            decided = result.primary.text[:140] if result.primary else "-"
            misses.append((row["id"], row["category"], predicted, decided))
    return per_label, misses


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--show-misses", action="store_true")
    parser.add_argument("--engine", default="auto", choices=("auto", "hyperscan", "re2", "re"))
    parser.add_argument("--shape", default="as-is", choices=sorted(SHAPES))
    parser.add_argument("--shapes", action="store_true", help="one line per shape")
    args = parser.parse_args()
    rows = [json.loads(line) for line in args.data.read_text().splitlines() if line.strip()]
    scanner = Scanner(load_rules(), engine=args.engine)
    if args.shapes:
        print(f"data: {args.data} ({len(rows)} logs), engine: {scanner.engine}")
        for name, shape in SHAPES.items():
            per_label, misses = score(rows, scanner, shape)
            alarms = sum(n for p, n in per_label["none"].items() if p != "none")
            print(f"  {name:10} {len(rows) - len(misses)}/{len(rows)}  false alarms {alarms}")
        return 0
    started = time.perf_counter()
    per_label, misses = score(rows, scanner, SHAPES[args.shape])
    elapsed = time.perf_counter() - started
    correct = sum(c[label] for label, c in per_label.items())
    print(
        f"data: {args.data} ({len(rows)} logs), engine: {scanner.engine}, {elapsed * 1000:.0f} ms"
    )
    print(f"accuracy: {correct}/{len(rows)} = {correct / len(rows):.1%}")
    crash_rows = [r for r in rows if r["category"] != "none"]
    detected = sum(
        n for label, c in per_label.items() if label != "none" for p, n in c.items() if p != "none"
    )
    false_alarms = sum(n for p, n in per_label["none"].items() if p != "none")
    clean = len(rows) - len(crash_rows)
    print(f"crashes seen: {detected}/{len(crash_rows)}; false alarms: {false_alarms}/{clean}")
    print(f"{'category':20} {'right':>5} {'total':>5}  wrong predictions")
    for label in sorted(per_label):
        counts = per_label[label]
        wrong = ", ".join(f"{p} {n}" for p, n in counts.most_common() if p != label)
        print(f"{label:20} {counts[label]:5} {sum(counts.values()):5}  {wrong}")
    if args.show_misses:
        print("\nmisses:")
        for rid, label, predicted, decided in misses:
            print(f"{rid} {label:18} -> {predicted:18} {decided}")
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except BrokenPipeError:  # `| head`
        sys.stderr.close()
        raise SystemExit(0) from None
