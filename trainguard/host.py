"""This machine's short name, as the ledger records it and `[queue.nodes."HOST"]` keys it."""

from __future__ import annotations

import socket


def this_host() -> str:
    return socket.gethostname().split(".")[0] or "localhost"
