"""The `edge_cases` marker, registered here until pyproject.toml lists it (--strict-markers)."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "edge_cases: runs the real edge-case suite (select with -m edge_cases)"
    )
