"""The public evaluators' combined scores, computed from our metrics.

`t` is the balancer's own runtime per call in seconds (the harness's median). The
original ADRS/OpenEvolve evaluator timed the balancer together with its own
pure-Python simulation, so its published scores are not directly comparable.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

# Guards the speed terms against a clock that reads zero for a trivial balancer.
MIN_SECONDS = 1e-9


class Scorer(NamedTuple):
    function: Callable[[dict, float], float]
    formula: str
    source: str


def adrs(metrics: dict, seconds: float) -> float:
    """(balancedness_slot + 0.02 / t) / 2."""
    return (metrics["balancedness_slot"] + 0.02 / max(seconds, MIN_SECONDS)) / 2


def skydiscover(metrics: dict, seconds: float) -> float:
    """(balancedness_slot + 0.002 / t) / 2."""
    return (metrics["balancedness_slot"] + 0.002 / max(seconds, MIN_SECONDS)) / 2


def adrs_leaderboard(metrics: dict, seconds: float) -> float:
    """90 * balancedness_gpu + 5 * min(0.002 / t, 2) - (min(20 t, 20) when t > 0.010 s)."""
    speed = min(0.002 / max(seconds, MIN_SECONDS), 2.0)
    penalty = min(20.0 * seconds, 20.0) if seconds > 0.010 else 0.0
    return 90.0 * metrics["balancedness_gpu"] + 5.0 * speed - penalty


def balance(metrics: dict, seconds: float) -> float:
    """balancedness_gpu on the next window: balance alone, no speed term."""
    return metrics["balancedness_gpu"]


SCORERS: dict[str, Scorer] = {
    "adrs": Scorer(adrs, "(balancedness_slot + 0.02/t) / 2", "ADRS / OpenEvolve EPLB evaluator"),
    "skydiscover": Scorer(skydiscover, "(balancedness_slot + 0.002/t) / 2", "SkyDiscover / CORAL EPLB evaluator"),
    "adrs_leaderboard": Scorer(
        adrs_leaderboard,
        "90 balancedness_gpu + 5 min(0.002/t, 2) - [t > 0.010] min(20 t, 20)",
        "ADRS-Leaderboard",
    ),
    "balance": Scorer(balance, "balancedness_gpu (next window)", "eplb-bench: balance alone"),
}
# The scorer of the balance-only standings that follow the chosen scorer's.
BALANCE_SCORER = "balance"
DEFAULT_SCORER = "adrs_leaderboard"


def all_scores(metrics: dict, seconds: float) -> dict[str, float]:
    """Every scorer's value for next-window metrics and a runtime in seconds.

    A runtime that is not a finite, non-negative number scores nothing: ValueError."""
    if not (isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds >= 0):
        raise ValueError(f"a runtime of {seconds!r} s cannot be scored")
    return {name: scorer.function(metrics, seconds) for name, scorer in SCORERS.items()}
