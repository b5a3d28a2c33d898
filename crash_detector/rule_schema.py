"""The schema a rules file (`crash-detector --rules FILE`) must follow: strict pydantic models,
one line per problem naming the entry (`rule[3] (cuda_oom.torch).priority`)."""

from __future__ import annotations

import re
import sys
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from crash_detector.rules import (
    Catalog,
    Category,
    ChainPattern,
    IgnoreRule,
    ProgressPattern,
    Rule,
    RulesError,
    check_unique_ids,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib


def _check_regex(value: str) -> str:
    """Compiles in Python's `re`, with no global inline flag.

    The scanner joins patterns into one alternation, where a `(?i)` or `(?x)` would either be
    refused or silently apply to every other rule; scoped groups such as `(?i:...)` are fine.
    """
    try:
        flags = re.compile(value).flags & ~re.UNICODE
    except re.error as exc:
        raise ValueError(f"invalid regex: {exc}") from None
    if flags:
        names = re.RegexFlag(flags).name or str(flags)
        raise ValueError(
            f"global inline flags ({names}) are not allowed: use ignore_case = true, "
            "or a scoped group such as (?i:...)"
        )
    return value


class _PatternModel(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    id: str = Field(min_length=1)
    pattern: str = Field(min_length=1)
    ignore_case: bool = False

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        return _check_regex(value)


class _RuleModel(_PatternModel):
    category: Category
    priority: int = Field(ge=0, le=1000)
    severity: Literal["critical", "error", "warning"] = "error"
    retryable: bool
    suggestion: str = Field(min_length=1)
    cleared_by: str | None = None

    @field_validator("cleared_by")
    @classmethod
    def _clear_compiles(cls, value: str | None) -> str | None:
        return None if value is None else _check_regex(value)


class _CatalogFile(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    rule: list[_RuleModel] = Field(default_factory=list)
    ignore: list[_PatternModel] = Field(default_factory=list)
    progress: list[_PatternModel] = Field(default_factory=list)
    chain: list[_PatternModel] = Field(default_factory=list)


def parse_catalog(text: str, label: str) -> Catalog:
    """The catalog in `text` (TOML), checked entry by entry; RulesError names what is wrong."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RulesError(f"{label}: invalid TOML: {exc}") from None
    try:
        parsed = _CatalogFile.model_validate(data)
    except ValidationError as exc:
        problems = [f"{label}: {_where(err['loc'], data)}: {err['msg']}" for err in exc.errors()]
        raise RulesError(problems[0], problems=problems) from None
    catalog = Catalog(
        tuple(Rule(**entry.model_dump()) for entry in parsed.rule),
        tuple(IgnoreRule(**entry.model_dump()) for entry in parsed.ignore),
        tuple(ProgressPattern(**entry.model_dump()) for entry in parsed.progress),
        tuple(ChainPattern(**entry.model_dump()) for entry in parsed.chain),
    )
    check_unique_ids(catalog, label)
    return catalog


def _where(loc: tuple[Any, ...], data: dict[str, Any]) -> str:
    """`rule[3] (cuda_oom.torch).priority`: the id makes the entry findable in a long file."""
    if len(loc) >= 2 and isinstance(loc[1], int):
        table, index, *rest = loc
        entries = data.get(str(table))
        entry = entries[index] if isinstance(entries, list) and index < len(entries) else None
        rule_id = entry.get("id") if isinstance(entry, dict) else None  # `rule = [5]`: no id
        head = f"{table}[{index}]" + (f" ({rule_id})" if isinstance(rule_id, str) else "")
        return ".".join([head, *map(str, rest)])
    return ".".join(map(str, loc))
