"""The rule catalog: data in rules.toml; `--rules FILE` adds or overrides by id.

Entries are plain frozen dataclasses. A rules file given with `--rules` is checked against the
schema (`crash_detector.rule_schema`, pydantic) before use. The bundled catalog is built from
its TOML directly: the test suite checks it against that same schema, and not repeating the
check at run time keeps pydantic's models and ~170 validated copies out of the watchdog, which
loads the catalog once, at start, and keeps it (measured: ~0.6 MiB and ~40 ms less).
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from trainguard.errors import TrainguardError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

Category = Literal[
    "cuda_oom",
    "cuda_error",
    "nccl",
    "host_oom",
    "segfault",
    "disk_full",
    "timeout",
    "import_error",
    "file_not_found",
    "permission_error",
    "multiprocessing",
    "nan_loss",
    "checkpoint_corrupt",
    "gpu_hardware",
    "config_error",
    "network",
    "unknown",
]
CATEGORIES: tuple[str, ...] = get_args(Category)
# Restarting cannot fix these: the same code or config fails the same way again.
NON_RETRYABLE = frozenset({"import_error", "config_error", "permission_error"})


class RulesError(TrainguardError):
    """A rules file that cannot be used; the CLI reports it as bad input (exit 2)."""

    exit_code = 2


Severity = Literal["critical", "error", "warning"]


@dataclass(frozen=True, slots=True, kw_only=True)
class CatalogPattern:
    """One regex of the catalog, matched against a single log line."""

    id: str
    pattern: str
    ignore_case: bool = False

    def compiled(self) -> re.Pattern[str]:
        return re.compile(self.pattern, re.IGNORECASE if self.ignore_case else 0)


@dataclass(frozen=True, slots=True, kw_only=True)
class Rule(CatalogPattern):
    category: Category
    priority: int  # 0-1000: the root cause of a crash is its finding of highest priority
    retryable: bool
    suggestion: str
    severity: Severity = "error"
    # A state, not an event: `loss: nan` is a crash only if no later line shows recovery
    # (a finite loss). A later line of the same file matching `cleared_by` drops the finding,
    # however the file was read (whole, in chunks, or its tail).
    cleared_by: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class IgnoreRule(CatalogPattern):
    """A benign look-alike (`oom_score`, an fp16 overflow warning): never a finding.

    Ignore patterns are confirmed with Python's `re` on candidate lines only, so unlike rule
    patterns they may use lookarounds (`^(?!.*Killed process).*oom_score`).
    """


@dataclass(frozen=True, slots=True, kw_only=True)
class ProgressPattern(CatalogPattern):
    """A line that shows training going on (`step 120`, a tqdm bar): an error above it that
    many lines later still has progress after it was survived, not the crash."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ChainPattern(CatalogPattern):
    """A line that links two tracebacks of one chained exception ("The above exception was the
    direct cause of the following exception:"): what comes after it is a consequence of the
    error above it, which `classify` lets a specific cause keep (see ROOT_CAUSE_PRIORITY)."""


@dataclass(frozen=True)
class Catalog:
    rules: tuple[Rule, ...]
    ignores: tuple[IgnoreRule, ...]
    progress: tuple[ProgressPattern, ...] = ()
    chains: tuple[ChainPattern, ...] = ()

    def by_id(self) -> dict[str, Rule]:
        return {rule.id: rule for rule in self.rules}


BUNDLED_LABEL = "rules.toml (bundled)"


def load_rules(extra: Path | None = None) -> Catalog:
    """The bundled catalog, plus `extra`'s rules: a rule with an existing id replaces it."""
    catalog = bundled_catalog()
    if extra is None:
        return catalog
    from crash_detector.rule_schema import parse_catalog  # pydantic: only for a user's file

    try:
        text = extra.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RulesError(
            f"{extra}: cannot read rules: {getattr(exc, 'strerror', None) or exc}"
        ) from None
    added = parse_catalog(expand(text), str(extra))
    return Catalog(
        _merge(catalog.rules, added.rules),
        _merge(catalog.ignores, added.ignores),
        _merge(catalog.progress, added.progress),
        _merge(catalog.chains, added.chains),
    )


# What `{line_start}` in a rules file stands for: a line's start behind the prefixes put on
# every line (colour codes, Ray's `(pid=..) `, kubectl and journald timestamps, up to two tags
# such as `[rank3]: ` or `[1,3]<stderr>:`). One definition for every line-anchored rule.
LINE_START = (
    r"^(?:\x1b\[[0-9;]*m)*(?:\([^)\n]*\) |\d{4}-\d\d-\d\dT\S+ |[A-Z][a-z]{2} [ \d]\d "
    r"\d\d:\d\d:\d\d \S+ [^:\s]+: )?(?:\x1b\[[0-9;]*m)*(?:\S*[:\]>]\s*){0,2}(?:\x1b\[[0-9;]*m)*"
)


def expand(text: str) -> str:
    """A rules file's text with `{line_start}` written out (see LINE_START)."""
    return text.replace("{line_start}", LINE_START)


def bundled_text() -> str:
    # Next to this file, as setuptools installs it: importlib.resources would add ~5 ms to
    # every crash-detector start (#19).
    return expand(Path(__file__).with_name("rules.toml").read_text("utf-8"))


def bundled_catalog() -> Catalog:
    """The catalog shipped with the package, built without schema validation (see above)."""
    data = tomllib.loads(bundled_text())
    try:
        catalog = Catalog(
            tuple(Rule(**entry) for entry in data.get("rule", ())),
            tuple(IgnoreRule(**entry) for entry in data.get("ignore", ())),
            tuple(ProgressPattern(**entry) for entry in data.get("progress", ())),
            tuple(ChainPattern(**entry) for entry in data.get("chain", ())),
        )
    except TypeError as exc:  # a key missing or unknown: the installed file was edited
        raise RulesError(f"{BUNDLED_LABEL}: {exc}; reinstall trainguard") from None
    check_unique_ids(catalog, BUNDLED_LABEL)
    return catalog


def check_unique_ids(catalog: Catalog, label: str) -> None:
    items = (*catalog.rules, *catalog.ignores, *catalog.progress, *catalog.chains)
    ids = [item.id for item in items]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise RulesError(f"{label}: duplicate rule ids: {', '.join(duplicates)}")


def _merge(base: tuple[Any, ...], extra: tuple[Any, ...]) -> tuple[Any, ...]:
    merged = {item.id: item for item in base}
    merged.update({item.id: item for item in extra})
    return tuple(merged.values())
