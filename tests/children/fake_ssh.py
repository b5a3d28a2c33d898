"""Stands in for the ssh client where no sshd can run; the host name picks what it does.

usage: fake_ssh.py [ssh options ...] HOST COMMAND
  reachable*  exit 0, as `ssh HOST true` does on a healthy node
  denied*     print ssh's auth failure to stderr, exit 255
  hang*       start a child (like a ProxyCommand), then both wait for a signal forever
If $FAKE_SSH_LOG is set, each run appends its argv (one JSON list a line) there first.
"""

from __future__ import annotations

import json
import os
import signal
import sys


def main() -> int:
    host = sys.argv[-2]
    log = os.environ.get("FAKE_SSH_LOG")
    if log:
        with open(log, "a") as fh:
            fh.write(json.dumps(sys.argv[1:]) + "\n")
    if host.startswith("denied"):
        print(f"root@{host}: Permission denied (publickey,password).", file=sys.stderr)
        return 255
    if host.startswith("hang"):
        os.fork()  # parent and child alike: the kill must reach the whole group
        while True:
            signal.pause()
    return 0


if __name__ == "__main__":
    sys.exit(main())
