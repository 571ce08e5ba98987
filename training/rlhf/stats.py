"""Paired comparisons with 95 % bootstrap intervals: pure Python, no torch, so the web side can use them too.

A comparison is two lists of scores for the same items (the same held-out prompt and sample slot): the version's
response and its baseline's. The interval is the percentile bootstrap over items (Efron & Tibshirani), resampling
pairs, seeded so the same scores always give the same interval. Written by hand because it is a dozen lines and
scipy.stats.bootstrap would make scipy a dependency of the web process for them.
"""
from __future__ import annotations

import random
from collections.abc import Callable, Sequence

CONFIDENCE = 0.95
N_BOOTSTRAP = 2000


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
