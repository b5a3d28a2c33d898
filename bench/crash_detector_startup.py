"""Start-up of `crash-detector --last-n-lines 1000 FILE` against a bare `python -c pass`.

    .venv/bin/python bench/crash_detector_startup.py [--runs 15] [--lines 2000] [--before DIR]

Writes a small log (`--lines` lines of training progress, then a CUDA OOM) in a temporary
folder with no trainguard.toml, and times each command `--runs` times as a fresh process,
taking turns so that a noisy neighbour hits them all alike: `python -c pass`, the installed
`crash-detector` entry point with the readable report (stdout a pipe), the same with `--json`,
and `python -m crash_detector --json`; and the readable report on a terminal (a pty: styled,
rich's styles), against `python -c pass` on a pty too. Prints the median, the spread and the
ratio of each median to `python -c pass` (the goal of #19: <= 5x).

`--before DIR`: also time the two entry-point commands against the source tree in DIR (e.g.
`git archive HEAD | tar -x -C DIR`), put first on PYTHONPATH: before and after in one run.
"""

from __future__ import annotations

import argparse
import os
import pty
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VENV_BIN = Path(sys.executable).parent


def write_log(path: Path, lines: int) -> None:
    body = [f"step {i} loss {1.0 / (i + 1):.4f} lr 3e-4 tokens/s 1234" for i in range(lines)]
    body.append(
        "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB "
        "(GPU 0; 79.15 GiB total capacity; 77.10 GiB already allocated)"
    )
    path.write_text("\n".join(body) + "\n", encoding="utf-8")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--lines", type=int, default=2000)
    parser.add_argument("--before", type=Path, metavar="DIR", help="an earlier source tree")
    args = parser.parse_args()
    # No config anywhere: an ad-hoc look at a file, as in #19's measurement.
    env = {k: v for k, v in os.environ.items() if k != "TRAINGUARD_CONFIG"}
    detector = str(VENV_BIN / "crash-detector")
    text = [detector, "--last-n-lines", "1000", "t.log"]
    commands: dict[str, tuple[list[str], dict[str, str]]] = {
        "python -c pass": ([sys.executable, "-c", "pass"], env),
        "crash-detector --last-n-lines 1000 FILE": (text, env),
        "crash-detector --last-n-lines 1000 FILE --json": ([*text, "--json"], env),
        "python -m crash_detector --last-n-lines 1000 FILE --json": (
            [sys.executable, "-m", "crash_detector", *text[1:], "--json"], env,
        ),
    }  # fmt: skip
    if args.before:
        before = {**env, "PYTHONPATH": str(args.before.resolve())}
        commands["before: crash-detector --last-n-lines 1000 FILE"] = (text, before)
        commands["before: crash-detector --last-n-lines 1000 FILE --json"] = (
            [*text, "--json"], before,
        )  # fmt: skip
    on_pty = {  # on a terminal: the styled report
        "tty: python -c pass": [sys.executable, "-c", "pass"],
        "tty: crash-detector --last-n-lines 1000 FILE": text,
    }
    times: dict[str, list[float]] = {name: [] for name in [*commands, *on_pty]}
    with tempfile.TemporaryDirectory(prefix="cd-startup-") as tmp:
        write_log(Path(tmp) / "t.log", args.lines)
        for argv, environ in commands.values():  # a warm-up each: page cache, the db cache
            subprocess.run(argv, cwd=tmp, env=environ, capture_output=True, check=False)
        for _ in range(args.runs):
            for name, (argv, environ) in commands.items():
                started = time.perf_counter()
                done = subprocess.run(argv, cwd=tmp, env=environ, capture_output=True, check=False)
                times[name].append(time.perf_counter() - started)
                if done.returncode not in (0, 1):
                    print(done.stderr.decode(), file=sys.stderr)
                    return 1
            for name, argv in on_pty.items():
                times[name].append(on_terminal(argv, tmp, env))
    print(f"{args.runs} runs each, taking turns; median (min-max), ratio to python -c pass "
          "(on a pty: to python -c pass on a pty)")  # fmt: skip
    for name, walls in times.items():
        base = statistics.median(times["tty: python -c pass" if name.startswith("tty:") else
                                       "python -c pass"])  # fmt: skip
        median = statistics.median(walls)
        print(
            f"  {name:58s} {median * 1000:6.1f} ms ({min(walls) * 1000:.1f}-"
            f"{max(walls) * 1000:.1f})  {median / base:4.1f}x"
        )
    return 0


def on_terminal(argv: list[str], cwd: str, env: dict[str, str]) -> float:
    """Seconds `argv` takes with a pseudo-terminal as its stdout (read until it closes)."""
    started = time.perf_counter()
    pid, fd = pty.fork()
    if pid == 0:  # the child: exec at once
        os.chdir(cwd)
        os.execve(argv[0], argv, env)
    try:
        while os.read(fd, 65536):
            pass
    except OSError:  # EIO: the child closed the terminal
        pass
    os.waitpid(pid, 0)
    os.close(fd)
    return time.perf_counter() - started


if __name__ == "__main__":
    raise SystemExit(main())
