"""A trainer that writes progress and reacts to the checkpoint it is resumed from.

usage: checkpoint_trainer.py --base-dir DIR [--resume-from PATH]

What it does with the checkpoint is read from a file in it (or beside it, for a file
checkpoint: `<name>.behaviour`):
- `refuse`: dies before any progress with a traceback naming the checkpoint, as Hugging Face
  does for a missing trainer_state.json;
- `refuse-silently`: dies before any progress with an error that does not name it;
otherwise it writes `status/progress.json` (step from the checkpoint's name, then +1 every
0.1 s) until it is signalled, and `status/resumed_from` says what it resumed from.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def behaviour(checkpoint: Path) -> str:
    for marker in (checkpoint / "behaviour", Path(f"{checkpoint}.behaviour")):
        try:
            return marker.read_text().strip()
        except OSError:
            continue
    return ""


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base-dir", type=Path, required=True)
    parser.add_argument("--resume-from", type=Path)
    args = parser.parse_args()
    status = args.base_dir / "status"
    status.mkdir(exist_ok=True)
    step = 0
    if args.resume_from is not None:
        what = behaviour(args.resume_from)
        if what == "refuse":
            print("Traceback (most recent call last):", flush=True)
            print('  File "train.py", line 12, in <module>', flush=True)
            print(
                "FileNotFoundError: [Errno 2] No such file or directory: "
                f"'{args.resume_from}/trainer_state.json'",
                flush=True,
            )
            sys.exit(1)
        if what == "refuse-silently":
            print("RuntimeError: something went wrong while loading", flush=True)
            sys.exit(1)
        digits = "".join(ch for ch in args.resume_from.name if ch.isdigit())
        step = int(digits) if digits else 0
    write_atomic(status / "resumed_from", str(args.resume_from or ""))
    while True:
        step += 1
        write_atomic(
            status / "progress.json",
            json.dumps({"step": step, "phase": "train", "updated_at": "2026-01-01T00:00:00Z"}),
        )
        time.sleep(0.1)


if __name__ == "__main__":
    main()
