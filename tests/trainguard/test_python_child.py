"""A child Python running one of our modules: never shadowed by a file in the current folder,
and it keeps PYTHONPATH (on 3.10, where `-I` would drop it, through the bootstrap)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from trainguard.python_child import bootstrap_argv, module_argv

PROBE = "import json, sys; print(json.__file__); print(sys.argv)"


@pytest.mark.parametrize("argv_of", [module_argv, bootstrap_argv])
def test_a_file_in_the_folder_never_shadows_a_module_and_pythonpath_is_kept(
    tmp_path: Path, argv_of: object
) -> None:
    (tmp_path / "json.py").write_text("raise SystemExit('the shadow json.py was imported')\n")
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "probe_mod.py").write_text(PROBE + "\n")
    env = {**os.environ, "PYTHONPATH": str(extra)}
    argv = argv_of("probe_mod", "--flag", "x")  # type: ignore[operator]
    done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    json_file, child_argv = done.stdout.splitlines()
    assert not json_file.startswith(str(tmp_path))  # the real json module
    assert child_argv.endswith("'--flag', 'x']")  # its own arguments, as under -m
    assert str(extra / "probe_mod.py") in child_argv  # argv[0] is the module's file, as -m sets
