"""The argv of a child Python that runs one of trainguard's own modules.

`python -m module` puts the current folder first on `sys.path`, so a `json.py` or `pydantic.py`
in a training folder would replace the real module in the child. `-P` (Python 3.11+) leaves the
current folder out. Python 3.10 lacks it, and its `-I` would also drop `PYTHONPATH` and the
user's site-packages (a `pip install --user` trainguard could not find itself): there a short
bootstrap removes the current folder from `sys.path` and runs the module as `-m` would.
"""

from __future__ import annotations

import sys

# `python -c` puts "" (the current folder) first on sys.path: removed, then the module is run
# as __main__ with sys.argv[0] set to its file, exactly as `-m` does.
BOOTSTRAP = (
    "import runpy, sys; del sys.path[0]; "
    "runpy.run_module(sys.argv.pop(1), run_name='__main__', alter_sys=True)"
)


def module_argv(module: str, *args: str) -> list[str]:
    if sys.version_info >= (3, 11):
        return [sys.executable, "-P", "-m", module, *args]
    return bootstrap_argv(module, *args)


def bootstrap_argv(module: str, *args: str) -> list[str]:
    """The argv for Pythons without `-P` (3.10)."""
    return [sys.executable, "-c", BOOTSTRAP, module, *args]
