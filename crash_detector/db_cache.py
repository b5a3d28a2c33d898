"""Where compiled Hyperscan databases are kept between runs; `python -m crash_detector.db_cache`
fills the cache for the bundled catalog in a process of its own.

Compiling the catalog takes ~0.5 s and leaves ~12 MiB of heap behind in the process that did
it; loading a compiled database takes a millisecond. A short-lived CLI may compile; the watchdog,
which lives for weeks, has a child do it (`daemon_watchdog.diagnosis.load_scanner`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path


def cache_dirs() -> list[Path]:
    """Where to look, best first: systemd's `CacheDirectory=` (`$CACHE_DIRECTORY`; a service
    user often has no home), then `$XDG_CACHE_HOME/trainguard` or `~/.cache/trainguard`."""
    found = [Path(d) for d in os.environ.get("CACHE_DIRECTORY", "").split(":") if _absolute(d)]
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    home = os.environ.get("HOME", "")
    if _absolute(xdg):
        found.append(Path(xdg) / "trainguard")
    elif _absolute(home):
        found.append(Path(home) / ".cache" / "trainguard")
    return found


def cached(name: str) -> Iterator[bytes]:
    """The contents of every cached copy of `name`, best place first."""
    for folder in cache_dirs():
        try:
            yield (folder / name).read_bytes()
        except OSError:
            continue


def store(name: str, data: bytes) -> Path | None:
    """Keep `data` as `name` in the first cache folder that can take it; None if none can."""
    # Here, not at the top: a run that finds its databases cached skips tempfile's import.
    from trainguard.atomicio import write_bytes_atomic

    for folder in cache_dirs():
        try:
            folder.mkdir(parents=True, exist_ok=True)
            write_bytes_atomic(folder / name, data)
        except OSError:
            continue
        return folder / name
    return None


def _absolute(path: str) -> bool:
    return bool(path) and os.path.isabs(path)


def main() -> int:
    """Load the bundled catalog's databases, compiling and storing what the cache lacks.

    Exit 0 when the cache holds them all afterwards, 1 when they could not be stored."""
    from crash_detector.rules import load_rules
    from crash_detector.scanner import NotCached, Scanner

    catalog = load_rules()
    Scanner(catalog)
    try:
        Scanner(catalog, may_compile=False)
    except NotCached:
        where = ", ".join(map(str, cache_dirs())) or "no cache folder is configured"
        print(f"cannot store compiled rule databases ({where})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
