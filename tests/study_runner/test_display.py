from __future__ import annotations

import io
import os
import pty

from study_runner.display import Display


def test_without_a_terminal_progress_is_plain_lines() -> None:
    out = io.StringIO()
    with Display(out) as display:
        display.say("task 1 started")
        display.progress("progress: 1 completed")
    assert out.getvalue() == "task 1 started\nprogress: 1 completed\n"


def test_on_a_terminal_the_progress_line_is_live_under_the_runners_lines() -> None:
    master, slave = pty.openpty()
    try:
        with open(slave, "w", closefd=False) as stream, Display(stream) as display:
            display.say("task 1 started")
            display.progress("progress: 1 completed, ETA 3s")
        os.set_blocking(master, False)
        chunks = []
        while True:
            try:
                chunk = os.read(master, 65536)
            except BlockingIOError:
                break
            chunks.append(chunk)
        shown = b"".join(chunks).decode(errors="replace")
    finally:
        os.close(master)
        os.close(slave)
    assert "task 1 started" in shown and "progress: 1 completed, ETA 3s" in shown
    assert "\x1b[" in shown  # redrawn in place (cursor control), not a new line each time
