"""How many trials and seeds the next round of a search gets. Pure: rounds in, a Budget out.

The seed's rule is "more trials, fewer seeds": a round that found nothing needs a wider search
of the parameters, not more seeds per trial, while a round that found a few survivors needs
more seeds to tell them apart. The rules, on the latest round (a round is one `optimize` of
`trials` trials, each screening `seeds` seeds, of which `survivors` passed):
1. no survivors after at least `no_survivor_min_trials` trials: `no_survivor_trials` trials
   with `no_survivor_seeds` seeds (defaults: >= 30 trials -> 100 trials, 100k seeds);
2. some survivors, but fewer than `enough_survivors`: the same trials, the seeds multiplied by
   `seed_factor` up to `max_seeds` (defaults: < 50k survivors -> seeds x2, at most 10M);
3. anything else (no round yet, too few trials to judge, enough survivors): `trials` trials
   with `seeds` seeds (defaults: 50 trials, 100k seeds).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields


@dataclass(frozen=True)
class Round:
    """One finished round of a search."""

    trials: int
    seeds: int
    survivors: int

    def __post_init__(self) -> None:
        for field in fields(self):
            if getattr(self, field.name) < 0:
                raise ValueError(f"Round.{field.name} must be >= 0")


@dataclass(frozen=True)
class Budget:
    trials: int
    seeds: int
    why: str  # the rule that chose it, for the log line of the next round


@dataclass(frozen=True)
class BudgetPolicy:
    """The numbers of the rules above; the defaults are the seed's."""

    no_survivor_min_trials: int = 30
    no_survivor_trials: int = 100
    no_survivor_seeds: int = 100_000
    enough_survivors: int = 50_000
    seed_factor: int = 2
    max_seeds: int = 10_000_000
    trials: int = 50
    seeds: int = 100_000

    def __post_init__(self) -> None:
        for field in fields(self):
            if getattr(self, field.name) < 1:
                raise ValueError(f"BudgetPolicy.{field.name} must be >= 1")


def next_budget(history: Sequence[Round], policy: BudgetPolicy = BudgetPolicy()) -> Budget:
    """The budget of the round after `history` (oldest round first)."""
    if history:
        last = history[-1]
        if last.survivors == 0 and last.trials >= policy.no_survivor_min_trials:
            return Budget(
                policy.no_survivor_trials,
                policy.no_survivor_seeds,
                f"no survivors after {last.trials} trials: more trials, fewer seeds",
            )
        if 0 < last.survivors < policy.enough_survivors:
            seeds = min(max(last.seeds, 1) * policy.seed_factor, policy.max_seeds)
            return Budget(
                last.trials,
                seeds,
                f"{last.survivors} survivors (< {policy.enough_survivors}): seeds x"
                f"{policy.seed_factor}, at most {policy.max_seeds}",
            )
    return Budget(policy.trials, policy.seeds, "the default budget")
