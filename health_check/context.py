"""What every check gets: the workspace, and the seams tests may replace (GPU libraries only)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainguard.workspace import Workspace


@dataclass(frozen=True)
class Context:
    ws: Workspace
    # A pynvml-like module; None means `import pynvml`. Tests pass `tests.fakes.FakeNvml`.
    nvml: Any | None = None
    # Kernel log text for Xid events; None means read it (dmesg). Tests pass a string.
    kernel_log: Callable[[], str] | None = None
    wall_clock: Callable[[], float] = field(default=time.time)
    # --dry-run: checks must not write anything, not even the config backup of an OK run.
    read_only: bool = False
    # The trainguard.toml in use (None: defaults), for what the config file itself exposes.
    config_path: Path | None = None
