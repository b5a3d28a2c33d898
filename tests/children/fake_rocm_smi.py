"""Plays rocm-smi for the gpu check's AMD tests: canned output, or a hang like a wedged SMU.

usage: fake_rocm_smi.py print OUT_FILE ERR_FILE EXIT_CODE [rocm-smi args...]
           prints OUT_FILE to stdout and ERR_FILE (if it exists) to stderr, exits EXIT_CODE,
           and leaves the rocm-smi arguments it got in OUT_FILE.argv (JSON);
       fake_rocm_smi.py hang READY_FILE [rocm-smi args...]
           starts a child that hangs too, writes "PID CHILD_PID" to READY_FILE, hangs.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path


def main() -> None:
    mode = sys.argv[1]
    if mode == "print":
        out, err, code = Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
        Path(f"{out}.argv").write_text(json.dumps(sys.argv[5:]))
        sys.stdout.write(out.read_text())
        if err.exists():
            sys.stderr.write(err.read_text())
        sys.exit(code)
    if mode == "hang":
        ready = sys.argv[2]
        child = os.fork()
        if child == 0:
            while True:
                signal.pause()  # a helper rocm-smi started, hung on the same SMU
        with open(f"{ready}.tmp", "w") as fh:
            fh.write(f"{os.getpid()} {child}")
        os.replace(f"{ready}.tmp", ready)  # a reader never sees a half-written file
        while True:
            signal.pause()
    sys.exit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main()
