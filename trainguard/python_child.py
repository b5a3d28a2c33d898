"""The argv of a child Python that runs one of trainguard's own modules.

`python -m module` puts the current folder first on `sys.path`, so a `json.py` or `pydantic.py`
in a training folder would replace the real module in the child. `-P` (Python 3.11+) leaves the
current folder out; on 3.10, which lacks it, `-I` does (and also ignores PYTHON* variables).
"""

from __future__ import annotations

import sys


def module_argv(module: str, *args: str) -> list[str]:
    safe_path = "-P" if sys.version_info >= (3, 11) else "-I"
    return [sys.executable, safe_path, "-m", module, *args]
