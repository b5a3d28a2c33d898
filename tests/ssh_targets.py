"""ssh destinations for preflight tests, real ones: no sshd runs here, so only a refusal is."""

from __future__ import annotations

import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

needs_ssh = pytest.mark.skipif(shutil.which("ssh") is None, reason="needs the ssh client")


@contextmanager
def refusing_node() -> Iterator[str]:
    """`ssh://127.0.0.1:PORT` where PORT refuses connections: bound for as long as the block
    runs (so that nothing else takes it) and never listening."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"ssh://127.0.0.1:{sock.getsockname()[1]}"
