"""Paired comparisons with 95 % bootstrap intervals, and the Wilson interval of a proportion: pure Python, no torch,
so the web side can use them too.

A comparison is two lists of scores for the same items (the same held-out prompt and sample slot): the version's
response and its baseline's. The interval is the percentile bootstrap (Efron & Tibshirani), seeded so the same
scores always give the same interval. With `groups` (the prompt of each pair) it resamples whole groups, the
cluster bootstrap: several samples of one prompt are not independent evidence, and resampling pairs as if they
were makes the interval too narrow (a version that is better on a few prompts only looked better overall).
Written by hand because it is a dozen lines and scipy.stats.bootstrap would make scipy a dependency of the web
process for them.
"""
from __future__ import annotations

import math
import random
from collections.abc import Callable, Hashable, Sequence
from typing import Optional, TypeVar

CONFIDENCE = 0.95
N_BOOTSTRAP = 2000
# z for a two-sided 95 % interval.
Z95 = 1.959963984540054
T = TypeVar("T")


def outcomes(scores: Sequence[float], baseline_scores: Sequence[float]) -> list[float]:
    """Per pair: 1 when the score beats the baseline's, 0.5 for a tie, 0 otherwise."""
    return [1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(scores, baseline_scores, strict=True)]


def win_rate(
    scores: Sequence[float], baseline_scores: Sequence[float], *, seed: int = 0,
    groups: Optional[Sequence[Hashable]] = None,
) -> tuple[float, float, float]:
    """P(score > baseline score), ties counting half, with its 95 % interval: (rate, low, high)."""
    return mean_interval(outcomes(scores, baseline_scores), seed=seed, groups=groups)


def mean_difference(
    scores: Sequence[float], baseline_scores: Sequence[float], *, seed: int = 0,
    groups: Optional[Sequence[Hashable]] = None,
) -> tuple[float, float, float]:
    """Mean of score - baseline score over the pairs, with its 95 % interval: (difference, low, high)."""
    return mean_interval([a - b for a, b in zip(scores, baseline_scores, strict=True)], seed=seed, groups=groups)


def mean_interval(
    values: Sequence[float], *, seed: int = 0, groups: Optional[Sequence[Hashable]] = None
) -> tuple[float, float, float]:
    """(mean, low, high): the mean and its percentile-bootstrap 95 % interval, resampling values, or whole groups
    when `groups` names each value's group. One value (or one group): the interval is a point."""
    if not values:
        raise ValueError("mean_interval needs at least one value")
    if groups is None:
        return _mean(values), *bootstrap(values, _mean, seed=seed)
    clusters: dict[Hashable, list[float]] = {}
    for value, group in zip(values, groups, strict=True):
        clusters.setdefault(group, []).append(value)
    sums = [(sum(c), len(c)) for c in clusters.values()]

    def pooled_mean(sample: Sequence[tuple[float, int]]) -> float:
        return sum(s for s, _ in sample) / sum(n for _, n in sample)

    return _mean(values), *bootstrap(sums, pooled_mean, seed=seed)


def bootstrap(values: Sequence[T], statistic: Callable[[Sequence[T]], float], *, seed: int = 0) -> tuple[float, float]:
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
