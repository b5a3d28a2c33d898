"""The watchdog's checkpoint work, on worker threads: a deep check reads every byte of a
multi-GB checkpoint, and the supervisor's loop must never wait on that (systemd's WatchdogSec,
signals, a crash seen at once). Each job posts its result to the loop as an event; it never
touches the supervisor's state.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

from daemon_watchdog import events as ev
from daemon_watchdog.recovery import (
    CheckpointsUnreadable,
    NoValidCheckpoint,
    choose_after_rewind,
    make_room,
    prune_now,
    refuse,
)
from trainguard.checkpoints import Cancelled
from trainguard.workspace import Workspace

log = logging.getLogger("daemon_watchdog")


class CheckpointJobs:
    def __init__(self, ws: Workspace, post: Callable[[ev.Event], None]) -> None:
        self.ws = ws
        self.post = post
        self._prune_cancel: threading.Event | None = None  # the running prune's, if any
        self._closing = threading.Event()

    @property
    def pruning(self) -> bool:
        return self._prune_cancel is not None and not self._prune_cancel.is_set()

    def choose(
        self,
        seq: int,
        *,
        room: bool,
        refused: tuple[Path, str] | None = None,
        skip: int = 0,
        prune: bool = False,
    ) -> None:
        """Quarantine `refused` (a checkpoint the trainer could not resume from), prune when the
        disk is low (`room`) or always (`prune`: a disk_full crash's recovery action), move the
        newest `skip` valid checkpoints aside (a nan_loss rewind), then choose the checkpoint
        to resume from."""
        if self._prune_cancel is not None:
            self._prune_cancel.set()  # the restart matters more; the prune runs again later
        self._start("choose", lambda: self._choose(seq, room, refused, skip, prune))

    def prune(self) -> None:
        """Prune beyond keep_last, unless a prune still runs."""
        if self.pruning:
            return
        cancel = threading.Event()
        self._prune_cancel = cancel
        self._start("prune", lambda: self._prune(cancel))

    def close(self) -> None:
        """Stop a running prune at its next chunk; a choice in progress just ends unheard."""
        self._closing.set()
        if self._prune_cancel is not None:
            self._prune_cancel.set()

    def _start(self, name: str, job: Callable[[], None]) -> None:
        threading.Thread(target=job, name=f"checkpoints-{name}", daemon=True).start()

    def _choose(
        self, seq: int, room: bool, refused: tuple[Path, str] | None, skip: int, prune: bool
    ) -> None:
        disk_low = error = None
        checkpoint = None
        stuck = False
        rewound: list[str] = []
        pruned: int | None = None
        try:
            if refused is not None:
                stuck = refuse(*refused) is None
            if room or prune:  # one prune at most, forced by a disk_full recovery action
                disk_low, done = make_room(self.ws, self._closing.is_set, force=prune)
                pruned = done if prune else None
            checkpoint, rewound = choose_after_rewind(self.ws, skip)
        except (CheckpointsUnreadable, NoValidCheckpoint) as exc:
            error = str(exc)
        except Cancelled:
            return
        except Exception as exc:  # a bug here must not leave the run waiting forever
            log.exception("choosing a checkpoint failed")
            error = f"choosing a checkpoint failed: {type(exc).__name__}: {exc}"
        self.post(
            ev.CheckpointChosen(seq, checkpoint, error, disk_low, stuck, tuple(rewound), pruned)
        )

    def _prune(self, cancel: threading.Event) -> None:
        removed: list[Path] = []
        error = None
        try:
            removed = prune_now(self.ws, cancel.is_set)
        except Cancelled:
            error = "stopped early (a restart or a stop needed the disk)"
        except OSError as exc:
            error = str(exc)
        except Exception as exc:
            log.exception("pruning checkpoints failed")
            error = f"{type(exc).__name__}: {exc}"
        finally:
            cancel.set()
        self.post(ev.PruneDone(tuple(removed), error))
