"""What a study run shows: on a terminal, a live progress line (rich) under the runner's own
lines; elsewhere (a log, a pipe) plain lines, one per event and one per finished experiment."""

from __future__ import annotations

import sys
from contextlib import AbstractContextManager
from types import TracebackType
from typing import Any, TextIO


class Display(AbstractContextManager["Display"]):
    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout
        self._live: Any = None
        if self.stream.isatty():
            from rich.console import Console
            from rich.live import Live

            self._live = Live("", console=Console(file=self.stream), refresh_per_second=4,
                              transient=False)  # fmt: skip

    def __enter__(self) -> Display:
        if self._live is not None:
            self._live.__enter__()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._live is not None:
            self._live.__exit__(kind, exc, tb)

    def say(self, line: str) -> None:
        if self._live is not None:
            self._live.console.print(line, markup=False, highlight=False)
        else:
            print(line, file=self.stream, flush=True)

    def progress(self, line: str) -> None:
        """The study's progress (done / failed / running, ETA): the live line on a terminal."""
        if self._live is not None:
            from rich.text import Text

            self._live.update(Text(line))  # as it is: no colouring of its numbers
        else:
            self.say(line)
