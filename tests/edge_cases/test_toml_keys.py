"""The edge cases' config edits: real TOML in, real TOML out, comments and other keys kept."""

from __future__ import annotations

import sys

from edge_cases.toml_keys import set_toml_key

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

CONFIG = """\
# written by hand
base_dir = "."

[watchdog]
max_restarts = 3  # the budget
[watchdog.phase_timeouts]
eval = 60
"""


def test_a_key_is_replaced_or_added_and_the_rest_is_kept() -> None:
    text = set_toml_key(CONFIG, "watchdog", "max_restarts", 1)
    text = set_toml_key(text, "watchdog", "progress_timeout", 2.5)
    text = set_toml_key(text, "watchdog.phase_timeouts", "eval", 2)
    text = set_toml_key(text, "daemon", "command", ["{python}", "train.py", 'a "quoted" arg'])
    data = tomllib.loads(text)
    assert data["watchdog"]["max_restarts"] == 1
    assert data["watchdog"]["progress_timeout"] == 2.5
    assert data["watchdog"]["phase_timeouts"] == {"eval": 2}
    assert data["daemon"]["command"] == ["{python}", "train.py", 'a "quoted" arg']
    assert text.startswith("# written by hand\n") and "# the budget" in text
