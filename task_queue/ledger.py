"""The ledger: one SQLite file (WAL) holding every task and every attempt, the only state.

Everything a person or a script sees (status, the per-task files of the study runner and the
pipeline) is a projection of it. Each change is one transaction, so a runner killed at any
moment leaves the ledger as it was before or after that change, never between: an attempt is
recorded as running before its process starts, and as finished (with its error) before its
task is handed out again. A file that is not a ledger is refused, never recreated.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import stat
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from task_queue.retry_policy import may_run
from trainguard import exitcodes
from trainguard.errors import TrainguardError
from trainguard.timestamps import utc_now_iso

SCHEMA_VERSION = 1
KIND = "trainguard-ledger"
SQLITE_MAGIC = b"SQLite format 3\x00"

TaskStatus = Literal["pending", "running", "done", "failed", "cancelled"]
Outcome = Literal["ok", "failed", "timeout", "worker_lost", "interrupted"]
STATUSES: tuple[TaskStatus, ...] = ("pending", "running", "done", "failed", "cancelled")

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE tasks (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    argv TEXT NOT NULL,
    cwd TEXT NOT NULL,
    env TEXT NOT NULL,
    gpus INTEGER NOT NULL,
    max_retries INTEGER NOT NULL,
    timeout REAL NOT NULL,
    status TEXT NOT NULL
        CHECK (status IN ('pending', 'running', 'done', 'failed', 'cancelled')),
    submitted_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    json TEXT,
    log_file TEXT
);
CREATE INDEX tasks_by_status ON tasks (status, id);
CREATE TABLE attempts (
    id INTEGER PRIMARY KEY,
    task_id INTEGER NOT NULL REFERENCES tasks (id),
    number INTEGER NOT NULL,
    worker TEXT NOT NULL,
    host TEXT NOT NULL,
    pid INTEGER,
    started_at TEXT NOT NULL,
    ended_at TEXT,
    outcome TEXT
        CHECK (outcome IS NULL
               OR outcome IN ('ok', 'failed', 'timeout', 'worker_lost', 'interrupted')),
    counted INTEGER NOT NULL DEFAULT 1,
    exit_code INTEGER,
    category TEXT,
    retryable INTEGER,
    error TEXT,
    traceback_tail TEXT,
    gpu_state TEXT,
    log_file TEXT,
    log_offset INTEGER,
    token TEXT,
    UNIQUE (task_id, number)
);
CREATE INDEX attempts_by_task ON attempts (task_id);
"""


class LedgerError(TrainguardError):
    """The ledger cannot be used as it is: one line, and the file is left untouched."""


class LedgerBusy(LedgerError):
    """Another runner holds the ledger."""

    exit_code = exitcodes.TEMPFAIL


@dataclass(frozen=True)
class TaskSpec:
    """What `submit` adds: an argv list, never a shell line."""

    argv: tuple[str, ...]
    cwd: str
    name: str = ""
    gpus: int = 1
    max_retries: int = 3
    timeout: float = 7200.0
    env: Mapping[str, str] = field(default_factory=dict)
    log_file: str | None = None  # where its output goes (default: logs/task-<id>.log)


@dataclass(frozen=True)
class Attempt:
    id: int
    task_id: int
    number: int  # 1-based
    worker: str
    host: str
    pid: int | None
    started_at: str
    ended_at: str | None
    outcome: Outcome | None  # None while it runs
    counted: bool  # counts against max_retries (not: interrupted, lost with its runner)
    exit_code: int | None
    category: str | None
    retryable: bool | None
    error: str | None
    traceback_tail: str | None
    gpu_state: Any
    log_file: str | None
    log_offset: int | None
    token: str | None  # the owner token its processes carry: proof they are ours to stop

    def to_json(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "worker": self.worker,
            "host": self.host,
            "pid": self.pid,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "outcome": self.outcome,
            "counted": self.counted,
            "exit_code": self.exit_code,
            "category": self.category,
            "error": self.error,
            "traceback_tail": self.traceback_tail,
            "gpu_state": self.gpu_state,
            "log_file": self.log_file,
            "token": self.token,
        }


@dataclass(frozen=True)
class Task:
    id: int
    name: str
    argv: tuple[str, ...]
    cwd: str
    env: Mapping[str, str]
    gpus: int
    max_retries: int
    timeout: float
    status: TaskStatus
    submitted_at: str
    updated_at: str
    attempts: tuple[Attempt, ...] = ()
    log_file: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "status": self.status,
            "argv": list(self.argv),
            "cwd": self.cwd,
            "gpus": self.gpus,
            "max_retries": self.max_retries,
            "timeout": self.timeout,
            "submitted_at": self.submitted_at,
            "updated_at": self.updated_at,
            "attempts": [a.to_json() for a in self.attempts],
        }


@dataclass(frozen=True)
class AttemptEnd:
    """How an attempt ended, as the ledger records it."""

    outcome: Outcome
    exit_code: int | None = None
    category: str | None = None
    retryable: bool | None = None
    error: str | None = None
    traceback_tail: str | None = None
    gpu_state: Any = None
    counted: bool = True


class Ledger:
    """The open ledger. Not shared between threads: each user opens its own."""

    def __init__(self, path: Path, conn: sqlite3.Connection) -> None:
        self.path = path
        self._db = conn

    # --- opening --------------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, create: bool = False) -> Ledger:
        """Open the ledger at `path`; with `create`, make a new one where no file is.

        LedgerError for anything else: a missing file (without `create`), one that is not a
        trainguard ledger, one SQLite cannot read. The file is never modified then.
        """
        target = Path(path)
        exists = os.path.lexists(target)
        if not exists and not create:
            raise LedgerError(f"{target}: no ledger here (nothing was submitted yet)")
        if exists:
            _check_header(target)
        try:
            if not exists:
                target.parent.mkdir(parents=True, exist_ok=True)
            mode = "rw" if exists else "rwc"
            conn = sqlite3.connect(
                f"file:{_uri_path(target)}?mode={mode}",
                uri=True,
                timeout=30.0,
                isolation_level=None,  # transactions are explicit (`_write`)
                check_same_thread=False,
            )
        except (sqlite3.Error, OSError) as exc:
            raise LedgerError(f"{target}: cannot open the ledger: {_reason(exc)}") from None
        ledger = cls(target, conn)
        try:
            if exists:
                ledger._check_kind()
            ledger._db.execute("PRAGMA journal_mode = WAL")
            # NORMAL in WAL mode: a commit survives the process being killed at any moment;
            # a power cut may lose the last commits, never consistency.
            ledger._db.execute("PRAGMA synchronous = NORMAL")
            ledger._db.execute("PRAGMA foreign_keys = ON")
            if not exists:
                ledger._create_schema()
        except sqlite3.Error as exc:
            conn.close()
            raise LedgerError(f"{target}: not a usable ledger: {_reason(exc)}") from None
        return ledger

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _create_schema(self) -> None:
        with self._write():
            # One statement at a time: executescript() would commit our transaction first.
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    self._db.execute(statement)
            self._db.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?)",
                [("kind", KIND), ("schema_version", str(SCHEMA_VERSION))],
            )

    def _check_kind(self) -> None:
        try:
            rows = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.OperationalError:
            rows = {}
        if rows.get("kind") != KIND:
            raise LedgerError(
                f"{self.path}: an SQLite file, but not a trainguard ledger; left as it is"
            )
        if rows.get("schema_version") != str(SCHEMA_VERSION):
            raise LedgerError(
                f"{self.path}: ledger schema {rows.get('schema_version')} is not the "
                f"{SCHEMA_VERSION} this version reads; left as it is"
            )

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One transaction: all of it lands, or none (also when the disk is full)."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise LedgerError(f"{self.path}: cannot write the ledger: {_reason(exc)}") from None
        try:
            yield self._db
            self._db.execute("COMMIT")
        except BaseException as exc:
            with suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise LedgerError(f"{self.path}: cannot write the ledger: {_reason(exc)}") from None
            raise

    # --- tasks ----------------------------------------------------------------------------

    def submit(self, specs: Sequence[TaskSpec]) -> list[int]:
        """Add tasks as pending, all in one transaction; their ids in order."""
        now = utc_now_iso()
        ids: list[int] = []
        with self._write() as db:
            for spec in specs:
                cursor = db.execute(
                    "INSERT INTO tasks (name, argv, cwd, env, gpus, max_retries, timeout, "
                    "status, submitted_at, updated_at, log_file) VALUES (?, ?, ?, ?, ?, ?, ?, "
                    "'pending', ?, ?, ?)",
                    (
                        spec.name,
                        json.dumps(list(spec.argv)),
                        spec.cwd,
                        json.dumps(dict(spec.env), sort_keys=True),
                        spec.gpus,
                        spec.max_retries,
                        spec.timeout,
                        now,
                        now,
                        spec.log_file,
                    ),
                )
                task_id = int(cursor.lastrowid or 0)
                if not spec.name:
                    db.execute(
                        "UPDATE tasks SET name = ? WHERE id = ?", (f"task-{task_id}", task_id)
                    )
                ids.append(task_id)
            _refresh(db, ids)
        return ids

    def task(self, task_id: int) -> Task | None:
        rows = self._db.execute("SELECT * FROM tasks WHERE id = ?", (task_id,)).fetchall()
        if not rows:
            return None
        attempts = self._attempts_of([task_id]).get(task_id, ())
        return _task(rows[0], tuple(attempts))

    def tasks(self, *, status: TaskStatus | None = None) -> list[Task]:
        """Every task (or those with `status`) with its attempts, oldest first."""
        if status is None:
            rows = self._db.execute("SELECT * FROM tasks ORDER BY id").fetchall()
            attempts = self._attempts_of(None)
        else:
            rows = self._db.execute(
                "SELECT * FROM tasks WHERE status = ? ORDER BY id", (status,)
            ).fetchall()
            attempts = self._attempts_of([row[0] for row in rows])
        return [_task(row, tuple(attempts.get(row[0], ()))) for row in rows]

    def tasks_json(self, *, status: TaskStatus | None = None) -> list[str]:
        """Each task (or those with `status`) as the JSON text `Task.to_json` gives. It is kept
        in the ledger, rebuilt by SQLite whenever the task or an attempt of it changes
        (`_refresh`): `status --json` on a 100 000-task ledger then only reads it back."""
        if status is None:
            rows = self._db.execute("SELECT json FROM tasks ORDER BY id")
        else:
            rows = self._db.execute(
                "SELECT json FROM tasks WHERE status = ? ORDER BY id", (status,)
            )
        return [row[0] for row in rows]

    def counts(self) -> dict[str, int]:
        found = dict(
            self._db.execute("SELECT status, COUNT(*) FROM tasks GROUP BY status").fetchall()
        )
        return {status: int(found.get(status, 0)) for status in STATUSES}

    def _attempts_of(self, task_ids: Sequence[int] | None) -> dict[int, list[Attempt]]:
        if task_ids is None:
            rows = self._db.execute("SELECT * FROM attempts ORDER BY task_id, number").fetchall()
        elif not task_ids:
            return {}
        else:
            rows = []
            for start in range(0, len(task_ids), 500):
                chunk = list(task_ids[start : start + 500])
                marks = ",".join("?" * len(chunk))
                rows += self._db.execute(
                    f"SELECT * FROM attempts WHERE task_id IN ({marks}) "  # noqa: S608 - marks only
                    "ORDER BY task_id, number",
                    chunk,
                ).fetchall()
        out: dict[int, list[Attempt]] = {}
        for row in rows:
            attempt = _attempt(row)
            out.setdefault(attempt.task_id, []).append(attempt)
        return out

    # --- attempts -------------------------------------------------------------------------

    def claim(
        self,
        worker: str,
        host: str,
        *,
        workers: Sequence[str],
        token: str,
        max_gpus: int | None = None,
    ) -> tuple[Task, Attempt] | None:
        """Hand `worker` the oldest pending task it may run, recorded as its running attempt
        with the owner `token` its processes will carry (recorded before they exist).

        A worker that failed a task gets it again only when every worker in `workers` (those
        alive now) has failed it: a retry goes elsewhere while anywhere else exists. Tasks
        needing more GPUs than `max_gpus` are left for a bigger worker.
        """
        now = utc_now_iso()
        gpus = max_gpus if max_gpus is not None else 1 << 30
        with self._write() as db:
            chosen = db.execute(  # the common case: one this worker has not failed
                "SELECT * FROM tasks AS t WHERE status = 'pending' AND gpus <= ? AND NOT EXISTS "
                "(SELECT 1 FROM attempts AS a WHERE a.task_id = t.id AND a.worker = ? "
                "AND a.counted = 1 AND a.outcome IS NOT NULL AND a.outcome != 'ok') "
                "ORDER BY id LIMIT 1",
                (gpus, worker),
            ).fetchone()
            if chosen is None:  # else one that every live worker has failed
                rows = db.execute(
                    "SELECT * FROM tasks WHERE status = 'pending' AND gpus <= ? "
                    "ORDER BY id LIMIT 200",
                    (gpus,),
                ).fetchall()
                failed = self._failed_workers(db, [row[0] for row in rows]) if rows else {}
                chosen = next(
                    (r for r in rows if may_run(worker, failed.get(r[0], set()), workers)), None
                )
            if chosen is None:
                return None
            task_id = chosen[0]
            number = 1 + int(
                db.execute(
                    "SELECT COALESCE(MAX(number), 0) FROM attempts WHERE task_id = ?", (task_id,)
                ).fetchone()[0]
            )
            cursor = db.execute(
                "INSERT INTO attempts (task_id, number, worker, host, started_at, token) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (task_id, number, worker, host, now, token),
            )
            db.execute(
                "UPDATE tasks SET status = 'running', updated_at = ? WHERE id = ?", (now, task_id)
            )
            attempt_id = int(cursor.lastrowid or 0)
            _refresh(db, [task_id])
        task = replace(_task(chosen, ()), status="running", updated_at=now)
        attempt = Attempt(
            attempt_id, task_id, number, worker, host, None, now, None, None, True, None, None,
            None, None, None, None, None, None, token,
        )  # fmt: skip
        return task, attempt

    @staticmethod
    def _failed_workers(db: sqlite3.Connection, task_ids: Sequence[int]) -> dict[int, set[str]]:
        marks = ",".join("?" * len(task_ids))
        found: dict[int, set[str]] = {}
        for task_id, worker in db.execute(
            f"SELECT task_id, worker FROM attempts WHERE task_id IN ({marks}) "  # noqa: S608
            "AND counted = 1 AND outcome IS NOT NULL AND outcome != 'ok'",
            list(task_ids),
        ):
            found.setdefault(task_id, set()).add(worker)
        return found

    def started(self, attempt_id: int, *, pid: int, log_file: str, log_offset: int) -> None:
        """Where the attempt's process and its output are, once it is started."""
        with self._write() as db:
            db.execute(
                "UPDATE attempts SET pid = ?, log_file = ?, log_offset = ? WHERE id = ?",
                (pid, log_file, log_offset, attempt_id),
            )
            task = db.execute("SELECT task_id FROM attempts WHERE id = ?", (attempt_id,))
            _refresh(db, [row[0] for row in task])

    def attempts(self, task_id: int) -> list[Attempt]:
        return self._attempts_of([task_id]).get(task_id, [])

    def open_attempts(self) -> list[Attempt]:
        """Attempts recorded as running: at a runner's start, those its predecessor left."""
        rows = self._db.execute("SELECT * FROM attempts WHERE outcome IS NULL ORDER BY id")
        return [_attempt(row) for row in rows.fetchall()]

    def finish(self, attempt_id: int, end: AttemptEnd, *, task_status: TaskStatus) -> None:
        """Record how the attempt ended and where its task goes now, in one transaction:
        its error is in the ledger before the task can be handed out again."""
        now = utc_now_iso()
        with self._write() as db:
            row = db.execute(
                "SELECT task_id FROM attempts WHERE id = ? AND outcome IS NULL", (attempt_id,)
            ).fetchone()
            if row is None:
                return  # closed already (e.g. by a cancel): the first word stands
            db.execute(
                "UPDATE attempts SET ended_at = ?, outcome = ?, counted = ?, exit_code = ?, "
                "category = ?, retryable = ?, error = ?, traceback_tail = ?, gpu_state = ? "
                "WHERE id = ?",
                (
                    now,
                    end.outcome,
                    int(end.counted),
                    end.exit_code,
                    end.category,
                    None if end.retryable is None else int(end.retryable),
                    end.error,
                    end.traceback_tail,
                    None if end.gpu_state is None else json.dumps(end.gpu_state),
                    attempt_id,
                ),
            )
            # A task cancelled while this attempt ran stays cancelled.
            db.execute(
                "UPDATE tasks SET status = ?, updated_at = ? WHERE id = ? AND status = 'running'",
                (task_status, now, row[0]),
            )
            _refresh(db, [row[0]])

    def fail_done(self, task_id: int, *, category: str, error: str) -> bool:
        """A task whose last attempt exited 0 but did not deliver (a pipeline phase without
        its declared outputs): that attempt becomes `failed` with `error`, not retryable, and
        the task `failed`. False when the task is not `done`."""
        now = utc_now_iso()
        with self._write() as db:
            row = db.execute(
                "SELECT a.id FROM attempts AS a JOIN tasks AS t ON t.id = a.task_id "
                "WHERE t.id = ? AND t.status = 'done' ORDER BY a.number DESC LIMIT 1",
                (task_id,),
            ).fetchone()
            if row is None:
                return False
            db.execute(
                "UPDATE attempts SET outcome = 'failed', category = ?, retryable = 0, error = ? "
                "WHERE id = ?",
                (category, error, row[0]),
            )
            db.execute(
                "UPDATE tasks SET status = 'failed', updated_at = ? WHERE id = ?", (now, task_id)
            )
            _refresh(db, [task_id])
        return True

    def refuse(self, task_id: int, *, worker: str, host: str, error: str) -> None:
        """A pending task its step's preflight refused: an attempt that started nothing
        (outcome `failed`, category `preflight`, not counted), and the task `cancelled` (the
        runner asks again next time; a refusal is no verdict on the task)."""
        now = utc_now_iso()
        with self._write() as db:
            number = 1 + int(
                db.execute(
                    "SELECT COALESCE(MAX(number), 0) FROM attempts WHERE task_id = ?", (task_id,)
                ).fetchone()[0]
            )
            db.execute(
                "INSERT INTO attempts (task_id, number, worker, host, started_at, ended_at, "
                "outcome, counted, category, retryable, error) "
                "VALUES (?, ?, ?, ?, ?, ?, 'failed', 0, 'preflight', 1, ?)",
                (task_id, number, worker, host, now, now, error),
            )
            _set_status(db, [task_id], "cancelled")
            _refresh(db, [task_id])

    def close_running(self, end: AttemptEnd) -> list[int]:
        """Close every attempt still open (its runner died, or is stopping) with `end`; their
        tasks go back to pending, unless cancelled meanwhile. Returns those put back."""
        now = utc_now_iso()
        with self._write() as db:
            rows = db.execute(
                "SELECT id, task_id FROM attempts WHERE outcome IS NULL ORDER BY id"
            ).fetchall()
            for attempt_id, _ in rows:
                db.execute(
                    "UPDATE attempts SET ended_at = ?, outcome = ?, counted = ?, error = ? "
                    "WHERE id = ?",
                    (now, end.outcome, int(end.counted), end.error, attempt_id),
                )
            task_ids = sorted({task_id for _, task_id in rows})
            pending = _ids_in(db, task_ids, ("running",))  # not those cancelled meanwhile
            _set_status(db, pending, "pending")
            _refresh(db, task_ids)
        return pending

    def retry(
        self,
        task_ids: Sequence[int] | None,
        *,
        statuses: Sequence[TaskStatus] = ("failed", "cancelled"),
    ) -> list[int]:
        """Tasks in `statuses` (failed or cancelled; all failed ones with None) back to
        pending with a fresh retry budget: their earlier attempts stay listed but no longer
        count. `statuses` may add "done" (run a finished task again, on request)."""
        with self._write() as db:
            if task_ids is None:
                ids = [r[0] for r in db.execute("SELECT id FROM tasks WHERE status = 'failed'")]
            else:
                ids = _ids_in(db, task_ids, statuses)
            for task_id in ids:
                db.execute("UPDATE attempts SET counted = 0 WHERE task_id = ?", (task_id,))
            _set_status(db, ids, "pending")
            _refresh(db, ids)
        return ids

    def cancel(self, task_ids: Sequence[int]) -> list[int]:
        """Pending or running tasks to cancelled; the runner stops a running one's process."""
        with self._write() as db:
            ids = _ids_in(db, task_ids, ("pending", "running"))
            _set_status(db, ids, "cancelled")
            _refresh(db, ids)
        return ids

    def statuses(self, task_ids: Sequence[int]) -> dict[int, TaskStatus]:
        if not task_ids:
            return {}
        marks = ",".join("?" * len(task_ids))
        rows = self._db.execute(
            f"SELECT id, status FROM tasks WHERE id IN ({marks})",  # noqa: S608
            list(task_ids),
        ).fetchall()
        return {int(task_id): status for task_id, status in rows}

    def known_ids(self, task_ids: Sequence[int]) -> set[int]:
        return set(self.statuses(task_ids))


_TASK_JSON = """json_object(
    'id', t.id, 'name', t.name, 'status', t.status, 'argv', json(t.argv), 'cwd', t.cwd,
    'gpus', t.gpus, 'max_retries', t.max_retries, 'timeout', t.timeout,
    'submitted_at', t.submitted_at, 'updated_at', t.updated_at,
    'attempts', COALESCE((
        SELECT json_group_array(json_object(
            'number', a.number, 'worker', a.worker, 'host', a.host, 'pid', a.pid,
            'started_at', a.started_at, 'ended_at', a.ended_at, 'outcome', a.outcome,
            'counted', json(CASE a.counted WHEN 1 THEN 'true' ELSE 'false' END),
            'exit_code', a.exit_code, 'category', a.category, 'error', a.error,
            'traceback_tail', a.traceback_tail, 'gpu_state', json(a.gpu_state),
            'log_file', a.log_file, 'token', a.token))
        FROM (SELECT * FROM attempts WHERE task_id = t.id ORDER BY number) AS a
    ), json('[]')))"""


def _refresh(db: sqlite3.Connection, task_ids: Sequence[int]) -> None:
    """Rebuild the stored JSON of `task_ids`, in the transaction that changed them."""
    db.executemany(
        f"UPDATE tasks AS t SET json = {_TASK_JSON} WHERE id = ?",  # noqa: S608 - constant
        [(task_id,) for task_id in task_ids],
    )


def _ids_in(
    db: sqlite3.Connection, task_ids: Sequence[int], statuses: Sequence[TaskStatus]
) -> list[int]:
    """Those of `task_ids` whose status is one of `statuses`, in order."""
    ids = sorted(set(task_ids))
    marks, kinds = ",".join("?" * len(ids)), ",".join("?" * len(statuses))
    rows = db.execute(
        f"SELECT id FROM tasks WHERE id IN ({marks}) AND status IN ({kinds}) ORDER BY id",  # noqa: S608
        [*ids, *statuses],
    )
    return [int(row[0]) for row in rows]


def _set_status(db: sqlite3.Connection, task_ids: Sequence[int], status: TaskStatus) -> None:
    now = utc_now_iso()
    db.executemany(
        "UPDATE tasks SET status = ?, updated_at = ? WHERE id = ?",
        [(status, now, task_id) for task_id in task_ids],
    )


@contextmanager
def runner_lock(ledger: Path) -> Iterator[None]:
    """Held by the one runner of a ledger (`LEDGER.lock` beside it): a second gets LedgerBusy.
    The kernel drops an flock with its holder, so a killed runner never leaves it stuck."""
    lock_path = ledger.with_name(ledger.name + ".lock")
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise LedgerError(f"{lock_path}: cannot open the runner lock: {_reason(exc)}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            raise LedgerBusy(
                f"{ledger}: another runner (pid {holder}) holds this ledger; one at a time"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def _task(row: Sequence[Any], attempts: tuple[Attempt, ...]) -> Task:
    return Task(
        id=row[0],
        name=row[1],
        argv=tuple(json.loads(row[2])),
        cwd=row[3],
        env=json.loads(row[4]),
        gpus=row[5],
        max_retries=row[6],
        timeout=row[7],
        status=row[8],
        submitted_at=row[9],
        updated_at=row[10],
        attempts=attempts,
        log_file=row[12],
    )


def _attempt(row: Sequence[Any]) -> Attempt:
    return Attempt(
        id=row[0],
        task_id=row[1],
        number=row[2],
        worker=row[3],
        host=row[4],
        pid=row[5],
        started_at=row[6],
        ended_at=row[7],
        outcome=row[8],
        counted=bool(row[9]),
        exit_code=row[10],
        category=row[11],
        retryable=None if row[12] is None else bool(row[12]),
        error=row[13],
        traceback_tail=row[14],
        gpu_state=None if row[15] is None else json.loads(row[15]),
        log_file=row[16],
        log_offset=row[17],
        token=row[18],
    )


def _check_header(path: Path) -> None:
    """Refuse what is not an SQLite file before SQLite opens it (it would make an empty file
    a fresh database, and reads a folder or FIFO in ways that are not worth finding out)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise LedgerError(f"{path}: cannot open the ledger: {_reason(exc)}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise LedgerError(f"{path}: not a regular file, so not a ledger; left as it is")
        head = os.read(fd, len(SQLITE_MAGIC))
    finally:
        os.close(fd)
    if head != SQLITE_MAGIC:
        what = "an empty file" if not head else "not an SQLite file"
        raise LedgerError(f"{path}: {what}, so not a ledger; left as it is (move it away to "
                          "start a new one)")  # fmt: skip


def _uri_path(path: Path) -> str:
    from urllib.parse import quote

    return quote(str(path.resolve()))


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc) or type(exc).__name__
