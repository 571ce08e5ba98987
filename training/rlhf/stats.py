"""Paired comparisons with 95 % bootstrap intervals, and the Wilson interval of a proportion: pure Python, no torch,
so the web side can use them too.

A comparison is two lists of scores for the same items (the same held-out prompt and sample slot): the version's
response and its baseline's. The interval is the percentile bootstrap over items (Efron & Tibshirani), resampling
pairs, seeded so the same scores always give the same interval. Written by hand because it is a dozen lines and
scipy.stats.bootstrap would make scipy a dependency of the web process for them.
"""
from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence

CONFIDENCE = 0.95
N_BOOTSTRAP = 2000
# z for a two-sided 95 % interval.
Z95 = 1.959963984540054


def win_rate(
    scores: Sequence[float], baseline_scores: Sequence[float], *, seed: int = 0
) -> tuple[float, float, float]:
    """P(score > baseline score), ties counting half, with its 95 % interval: (rate, low, high)."""
    outcomes = [1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(scores, baseline_scores, strict=True)]
    return mean_interval(outcomes, seed=seed)


def mean_difference(
    scores: Sequence[float], baseline_scores: Sequence[float], *, seed: int = 0
) -> tuple[float, float, float]:
    """Mean of score - baseline score over the pairs, with its 95 % interval: (difference, low, high)."""
    return mean_interval([a - b for a, b in zip(scores, baseline_scores, strict=True)], seed=seed)


def mean_interval(values: Sequence[float], *, seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): the mean and its percentile-bootstrap 95 % interval. One value: the interval is a point."""
    if not values:
        raise ValueError("mean_interval needs at least one value")
    return _mean(values), *bootstrap(values, _mean, seed=seed)


def bootstrap(
    values: Sequence[float], statistic: Callable[[Sequence[float]], float], *, seed: int = 0
) -> tuple[float, float]:
    rng = random.Random(seed)
    n = len(values)
    estimates = sorted(statistic([values[rng.randrange(n)] for _ in range(n)]) for _ in range(N_BOOTSTRAP))
    tail = (1 - CONFIDENCE) / 2
    return estimates[int(tail * (N_BOOTSTRAP - 1))], estimates[int((1 - tail) * (N_BOOTSTRAP - 1) + 0.5)]


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval for a proportion ``successes / n`` (Wilson 1927).

    A tie counts as half a success: that treats a tie like a coin toss, whose variance (1/4) is at least that of a
    tie's fixed 1/2, so the interval is, if anything, a little wide. Wilson rather than the normal (Wald) interval
    or the percentile bootstrap the reward-model evaluation uses: human comparisons are few (tens), and with 8 wins
    out of 8 those two say [1, 1] while Wilson says [0.68, 1]. Six lines, so no statistics package in the web.
    (feedback.comparisons: the blind comparison's win rate.)
    """
    if n <= 0:
        raise ValueError("wilson_interval needs n > 0")
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)
