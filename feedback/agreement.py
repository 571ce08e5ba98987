"""How far reviewers agree: Krippendorff's alpha, per item set, per pair of reviewers and per reviewer (the statistics
alone: feedback/selectors.py reads the reviews they are computed from).

**Alpha** (Krippendorff's alpha for interval data) is 1 - D_o / D_e: D_o is the mean squared difference between two
scores of the same item, D_e the mean squared difference between any two scores at all (the coincidence-matrix
formula, Krippendorff 2011, "Computing Krippendorff's Alpha-Reliability", written with sums instead of a matrix).
1 is perfect agreement, 0 agreement no better than chance, below 0 systematic disagreement. Content-analysis practice
relies on data with alpha >= 0.8 and draws tentative conclusions from alpha >= 0.667. A figure comes with the number
of items it rests on; with fewer than ``MIN_ITEMS`` items, or when every score is the same (no variation: alpha
is 0/0), there is none.

Written here rather than taken from the ``krippendorff`` package (PyPI, numpy-only): that package is GPL-3.0, and
for interval data the formula is the dozen lines of ``interval_alpha``, checked against Krippendorff's own worked
example in tests/feedback/test_agreement.py, and against the package itself there (a test-only dependency) on random and
degenerate data. The sums are centred first (numerically stable when scores barely vary).

Items whose reviews disagree and each reviewer's progress are reads (feedback/selectors.py: ``disagreements``,
``reviewer_progress``); a lead settling a disagreement is a write (feedback/services.py: ``settle``).
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from math import fsum
from typing import Optional

MIN_ITEMS = 2  # an alpha needs at least two items with two reviews each
RELIABLE, TENTATIVE = 0.8, 0.667  # Krippendorff's thresholds
# Float rounding: scores that differ by less than this (relative to their size) are the same score.
_EPS = 1e-9


def _squared_differences(values: Sequence[float]) -> float:
    """Sum of (a - b)^2 over the ordered pairs of distinct positions, computed centred: 2 * n * sum((v - mean)^2).
    The textbook 2 * (n * sum(v^2) - sum(v)^2) subtracts two nearly equal numbers when the scores barely vary
    (0.95 thirty times gave alpha 0.676, and values up to 1.5 occurred); centring first keeps every digit."""
    n = len(values)
    mean = fsum(values) / n
    return 2.0 * n * fsum((v - mean) ** 2 for v in values)


def _varies(values: Sequence[float]) -> bool:
    """Whether the scores differ by more than float rounding (relative to their size): 0.6 and 0.6000000000000001
    (a mean of reviews) are the same score."""
    low, high = min(values), max(values)
    return high - low > _EPS * max(1.0, abs(low), abs(high))


def interval_alpha(units: Iterable[Sequence[float]]) -> Optional[float]:
    """Krippendorff's alpha for interval data. ``units``: the scores each item got (one per reviewer, any number);
    items with fewer than two scores cannot be paired and are left out. None when fewer than ``MIN_ITEMS`` items
    remain or all their scores are equal (no variation: every page then shows "—").

    With n the number of pairable scores and m_u the number on item u (Krippendorff's coincidence formulation):
        D_o = 1/n * sum_u [ sum_{i != j in u} (v_i - v_j)^2 / (m_u - 1) ]
        D_e = 1/(n (n - 1)) * sum_{i != j over all scores} (v_i - v_j)^2
        alpha = 1 - D_o / D_e
    Checked against the ``krippendorff`` package on random and degenerate data (tests/feedback/test_agreement.py).
    """
    pairable = [list(map(float, u)) for u in units if len(u) >= 2]
    if len(pairable) < MIN_ITEMS:
        return None
    values = [v for u in pairable for v in u]
    if not _varies(values):
        return None  # no variation at all: alpha is 0/0, undefined
    n = len(values)
    expected = _squared_differences(values) / (n * (n - 1))
    observed = fsum(_squared_differences(u) / (len(u) - 1) for u in pairable if _varies(u)) / n
    return 1.0 - observed / expected


@dataclass(frozen=True)
class Agreement:
    """An alpha and what it rests on: ``items`` (items with two or more scores) and ``scores`` (their scores)."""

    alpha: Optional[float]
    items: int
    scores: int

    @property
    def verdict(self) -> str:
        if self.alpha is None:
            return "too little data" if self.items < MIN_ITEMS else "no variation in the scores"
        if self.alpha >= RELIABLE:
            return "reliable"
        if self.alpha >= TENTATIVE:
            return "tentative"
        return "unreliable"

    @property
    def display(self) -> str:
        return "—" if self.alpha is None else f"{self.alpha:.3f}"


def agreement_of(units: Sequence[Sequence[float]]) -> Agreement:
    pairable = [u for u in units if len(u) >= 2]
    return Agreement(alpha=interval_alpha(pairable), items=len(pairable), scores=sum(len(u) for u in pairable))


@dataclass(frozen=True)
class PairAgreement:
    first: str  # usernames, in alphabetical order
    second: str
    agreement: Agreement


@dataclass
class AgentAgreement:
    overall: Agreement
    pairs: list[PairAgreement] = field(default_factory=list)


def reviewer_agreements(by_item: dict[int, dict]) -> dict[int, Agreement]:
    """Each reviewer against the others: alpha over every (their score, another reviewer's score) pair on the
    same item, each pair a unit; ``items`` counts the items they share with someone. One pass over the items."""
    units: dict[int, list[list[float]]] = defaultdict(list)
    items: dict[int, int] = defaultdict(int)
    for scores in by_item.values():
        for who, score in scores.items():
            if not isinstance(who, int):
                continue  # a deleted user's review counts for the others, not as a reviewer of its own
            items[who] += 1
            units[who] += [[score, other] for other_who, other in scores.items() if other_who != who]
    return {
        who: Agreement(alpha=interval_alpha(units[who]) if items[who] >= MIN_ITEMS else None, items=items[who],
                       scores=2 * len(units[who]))
        for who in units
    }


NO_AGREEMENT = Agreement(alpha=None, items=0, scores=0)
