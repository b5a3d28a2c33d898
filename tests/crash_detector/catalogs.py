"""Small hand-made catalogs for engine tests: the bundled rules.toml is tested on its own."""

from __future__ import annotations

from crash_detector.rules import NON_RETRYABLE, Catalog, Category, IgnoreRule, ProgressPattern, Rule


def rule(
    rule_id: str,
    category: Category,
    pattern: str,
    priority: int,
    *,
    ignore_case: bool = False,
    cleared_by: str | None = None,
) -> Rule:
    return Rule(
        id=rule_id,
        category=category,
        pattern=pattern,
        priority=priority,
        retryable=category not in NON_RETRYABLE,
        suggestion=f"fix {category}",
        ignore_case=ignore_case,
        cleared_by=cleared_by,
    )


SMALL = Catalog(
    rules=(
        rule("cuda_oom.torch", "cuda_oom", r"CUDA out of memory", 90),
        rule("cuda_error.generic", "cuda_error", r"CUDA error: ", 70),
        rule("host_oom.killed", "host_oom", r"^Killed$", 50),
        rule("import_error.module", "import_error", r"^ModuleNotFoundError: ", 70),
        rule("nan.loss", "nan_loss", r"loss is nan", 90, ignore_case=True),
        rule("unknown.terminate", "unknown", r"terminate called after throwing", 10),
        rule("unknown.exception", "unknown", r"^\w*(?:Error|Exception): ", 20),
        rule("network.lookahead", "network", r"Connection (?=refused)", 70),
    ),
    ignores=(IgnoreRule(id="ignore.oom_score", pattern=r"oom_score"),),
)


# SMALL plus a state rule (`cleared_by`), a lookaround ignore and progress lines.
SURVIVAL = Catalog(
    rules=(
        *SMALL.rules,
        rule("nan.state", "nan_loss", r"loss: nan", 45, cleared_by=r"loss: \d"),
    ),
    ignores=(
        *SMALL.ignores,
        IgnoreRule(id="ignore.retry", pattern=r"^(?!.*gave up).*Connection refused, retrying"),
    ),
    progress=(ProgressPattern(id="progress.step", pattern=r"\bstep \d+"),),
)
