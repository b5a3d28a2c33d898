"""Where a named Optuna study lives, and opening that storage (Optuna imported only here).

The default is a journal file per study, `optuna/<name>.journal`, in the study-runner OUT
folder when this process runs as one of its experiments (beside the study's `ledger.db`,
found as the parent of `$TRAINGUARD_EXPERIMENT_DIR`, so every experiment of a study shares
one Optuna study), else in the current directory. A journal because it is an append-only log
written under a lock file: safe for several processes without a database server, and a
process SIGKILLed mid-write costs at most its last line (a lock it left is broken after
Optuna's 30 s grace period). One file per study, so that a study is found, shown or deleted
without reading the others. `storage=` takes instead a URL as Optuna does (anything with
"://"), a path ending in `.db` / `.sqlite3` (SQLite) or any other path (a journal file).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlsplit, urlunsplit

from study_runner.state_counters import EXPERIMENT_DIR_ENV
from trainguard import exitcodes
from trainguard.errors import TrainguardError, UsageError

if TYPE_CHECKING:
    from types import ModuleType

    from optuna.storages import BaseStorage

SQLITE_SUFFIXES = (".db", ".sqlite3")
_SQLITE_URL = "sqlite:///"
_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class OptunaMissing(TrainguardError):
    exit_code = exitcodes.CONFIG  # installing a package fixes it, restarting does not


class StorageError(TrainguardError):
    pass


class StudyNotFound(TrainguardError):
    exit_code = exitcodes.NOINPUT


def require_optuna() -> ModuleType:
    try:
        import optuna
    except ImportError:
        raise OptunaMissing(
            "Optuna studies need Optuna: pip install 'trainguard[optuna]'"
        ) from None
    return optuna


@dataclass(frozen=True)
class StorageSpec:
    kind: Literal["journal", "sqlite", "url"]
    target: str  # the file's path (journal, sqlite) or the URL

    @property
    def file(self) -> Path | None:
        """The file that holds the studies, where there is one (not a database server's)."""
        if self.kind != "url":
            return Path(self.target)
        if not self.target.startswith(_SQLITE_URL):
            return None
        path = self.target[len(_SQLITE_URL) :].split("?", 1)[0]
        return Path(path) if path and path != ":memory:" else None

    def shown(self) -> str:
        """For messages and `--json`: the path, or the URL without its password."""
        if self.kind != "url":
            return self.target
        parts = urlsplit(self.target)
        if parts.password is None:
            return self.target
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
        return urlunsplit(parts._replace(netloc=netloc))


def storage_spec(
    name: str, storage: str | os.PathLike[str] | None, env: Mapping[str, str] = os.environ
) -> StorageSpec:
    if not name:
        raise UsageError("an Optuna study needs a name")
    if storage is None:
        return StorageSpec("journal", str(default_storage(name, env)))
    text = os.fspath(storage)
    if "://" in text:
        return StorageSpec("url", text)
    kind: Literal["journal", "sqlite"] = "sqlite" if text.endswith(SQLITE_SUFFIXES) else "journal"
    return StorageSpec(kind, text)


def default_storage(name: str, env: Mapping[str, str] = os.environ) -> Path:
    if not _FILE_NAME.fullmatch(name):
        raise UsageError(
            f"study name {name!r} is not a plain file name: give a storage path or URL for it"
        )
    experiment = env.get(EXPERIMENT_DIR_ENV)
    base = Path(experiment).parent if experiment else Path()
    return base / "optuna" / f"{name}.journal"


def open_storage(spec: StorageSpec, *, create: bool) -> BaseStorage:
    """The storage, made if `create`; without it, a missing file is StudyNotFound and nothing
    is written (viewing a study must not leave an empty journal behind)."""
    optuna = require_optuna()
    file = spec.file
    if file is not None:
        if create:
            file.parent.mkdir(parents=True, exist_ok=True)
        elif not file.is_file():
            raise StudyNotFound(f"{spec.shown()}: no such Optuna storage file")
    try:
        if spec.kind == "journal":
            from optuna.storages.journal import JournalFileBackend, JournalStorage

            return JournalStorage(JournalFileBackend(spec.target))
        url = spec.target if spec.kind == "url" else f"{_SQLITE_URL}{Path(spec.target).resolve()}"
        storage: BaseStorage = optuna.storages.RDBStorage(url, skip_table_creation=not create)
        return storage
    # Optuna and its drivers raise anything here (SQLAlchemy, ImportError for a missing
    # driver, ValueError for a bad URL, a journal's decode error): each is one line to a user.
    except Exception as exc:
        why = first_line(exc)
        raise StorageError(f"{spec.shown()}: cannot open the Optuna storage: {why}") from None


def first_line(exc: BaseException, *, with_type: bool = False) -> str:
    """An exception as one line (SQLAlchemy's run to several, with a link at the end)."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else ""
    if with_type or not line:
        return f"{type(exc).__name__}: {line}" if line else type(exc).__name__
    return line
