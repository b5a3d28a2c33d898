"""Does nothing until killed: a bystander that the watchdog must leave alone.

usage: python -m edge_cases.children.idle [LABEL ...] -- the labels only show in `ps`.
"""

from __future__ import annotations

import signal


def main() -> None:
    while True:
        signal.pause()


if __name__ == "__main__":
    main()
