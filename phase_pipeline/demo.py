"""`phase-pipeline demo` (being written)."""

from __future__ import annotations


def run_demo(*, keep: bool = False) -> int:
    raise NotImplementedError
