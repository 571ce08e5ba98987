"""Reviewing feedback: the score bands, the review queue's claim/lease, scoring, and score summaries.

Two reviewers working the same queue must never be shown the same response at the same moment.
A reviewer *claims* an item with a short lease (``claimed_by`` + ``claimed_until``); the claim is one
conditional UPDATE, so of two reviewers racing for the same row exactly one UPDATE matches and the
other moves on to the next candidate. A lease that runs out (closed tab, lunch) makes the item free
again without any clean-up job.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Optional

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Count, Q, QuerySet
from django.utils import timezone

from n3site.exceptions import Conflict, NotFound, ServiceError
from training.rlhf.data import FeedbackRecord, feedback_warnings
from training.rlhf.errors import MIN_FEEDBACK, InsufficientFeedbackError
from training.rlhf.records import check_score

from .models import Feedback

LEASE = timedelta(minutes=5)
# Candidates looked at per claim attempt; others may win some of them, so take a few at once.
_CLAIM_BATCH = 10


@dataclass(frozen=True)
class ScoreBand:
    """A row of the spec's "Feedback Scoring Guidelines" table, plus the value its key enters."""

    key: str  # keyboard key in the review queue
    value: float  # the score that key records
    low: float
    high: float
    quality: str
    example: str

    @property
    def range_label(self) -> str:
        return f"{self.low:.1f}-{self.high:.1f}"


# Best first, as in the spec's table. Each band is [low, high) except the top one, which includes 1.0.
SCORE_BANDS: tuple[ScoreBand, ...] = (
    ScoreBand("5", 0.95, 0.9, 1.0, "Excellent", "Perfect answer, comprehensive, accurate"),
    ScoreBand("4", 0.8, 0.7, 0.9, "Good", "Correct, clear, minor improvements possible"),
    ScoreBand("3", 0.6, 0.5, 0.7, "Mediocre", "Acceptable but vague or incomplete"),
    ScoreBand("2", 0.4, 0.3, 0.5, "Poor", "Partially incorrect or very incomplete"),
    ScoreBand("1", 0.1, 0.0, 0.3, "Very Poor", "Wrong, misleading, or unhelpful"),
)


def band_q(band: ScoreBand) -> Q:
    """A filter for the scores inside ``band``."""
    if band.high >= 1.0:
        return Q(score__gte=band.low, score__lte=1.0)
    return Q(score__gte=band.low, score__lt=band.high)


def band_for(score: Optional[float]) -> Optional[ScoreBand]:
    if score is None:
        return None
    for band in SCORE_BANDS:
        if band.low <= score < band.high or (band.high >= 1.0 and band.low <= score <= 1.0):
            return band
    return None


def validate_score(value) -> float:
    """A score as a float in [0, 1] (the records module's rule); raises ServiceError with a message a reviewer
    understands."""
    try:
        return check_score(value)
    except ValueError as exc:
        raise ServiceError(str(exc)) from None


# --- queue -----------------------------------------------------------------------------------


def unscored_feedback(*, agent_name: str = "") -> QuerySet[Feedback]:
    """The queue: responses awaiting a score, oldest first."""
    qs = Feedback.objects.filter(score__isnull=True)
    if agent_name:
        qs = qs.filter(agent__name=agent_name)
    return qs.order_by("created_at", "id")


def _free_for(user: AbstractBaseUser, now) -> Q:
    """Rows ``user`` may claim: unclaimed, lease run out, or already theirs."""
    return Q(claimed_until__isnull=True) | Q(claimed_until__lte=now) | Q(claimed_by=user)


def claim_next(
    *, user: AbstractBaseUser, agent_name: str = "", exclude_ids: Iterable[int] = ()
) -> Optional[Feedback]:
    """Claim the oldest unscored item that nobody else holds, for ``LEASE``; None when the queue is empty.

    An item the reviewer already holds comes first (a reloaded page shows the same item again).
    ``exclude_ids`` are items this reviewer skipped: they stay in the queue for others.
    """
    now = timezone.now()
    queue = unscored_feedback(agent_name=agent_name).exclude(id__in=list(exclude_ids))
    held = queue.filter(claimed_by=user, claimed_until__gt=now).select_related("agent", "policy_version").first()
    if held is not None:
        Feedback.objects.filter(pk=held.pk, claimed_by=user).update(claimed_until=now + LEASE)
        held.claimed_until = now + LEASE
        return held
    while True:
        candidates = list(queue.filter(_free_for(user, now)).values_list("id", flat=True)[:_CLAIM_BATCH])
        if not candidates:
            return None
        for pk in candidates:
            if try_claim(feedback_id=pk, user=user, now=now):
                # A reviewer works one item at a time: whatever else they held goes back to the queue.
                Feedback.objects.filter(claimed_by=user).exclude(pk=pk).update(claimed_by=None, claimed_until=None)
                return Feedback.objects.select_related("agent", "policy_version").get(pk=pk)
        # Every candidate went to someone else in the meantime: look again (the queue moved on).
        queue = queue.exclude(id__in=candidates)


def try_claim(*, feedback_id: int, user: AbstractBaseUser, now=None) -> bool:
    """Lease one unscored item to ``user`` if nobody else holds it; True when the claim is theirs.

    One conditional UPDATE: of two reviewers who both saw the item free, only the first UPDATE
    matches the row; the second finds the new lease in its WHERE clause and changes nothing.
    """
    now = now or timezone.now()
    return bool(
        Feedback.objects.filter(pk=feedback_id, score__isnull=True)
        .filter(_free_for(user, now))
        .update(claimed_by=user, claimed_until=now + LEASE)
    )


def release_claim(*, feedback_id: int, user: AbstractBaseUser) -> None:
    """Give an item back to the queue (skip). Only the holder's own claim is released."""
    Feedback.objects.filter(pk=feedback_id, claimed_by=user).update(claimed_by=None, claimed_until=None)


def score_feedback(
    *, feedback_id: int, user: AbstractBaseUser, score, notes: Optional[str] = None
) -> Feedback:
    """Record a reviewer's score (and notes) on a queue item, and release its claim.

    Refused with Conflict when another reviewer holds a live lease on it or scored it first.
    """
    score = validate_score(score)
    now = timezone.now()
    changes = {
        "score": score, "reviewer": user, "reviewed_at": now, "updated_at": now,
        "claimed_by": None, "claimed_until": None,
    }
    if notes is not None:
        changes["notes"] = notes
    updated = (
        Feedback.objects.filter(pk=feedback_id, score__isnull=True).filter(_free_for(user, now)).update(**changes)
    )
    if not updated:
        current = Feedback.objects.select_related("reviewer", "claimed_by").filter(pk=feedback_id).first()
        if current is None:
            raise NotFound(f"Feedback {feedback_id} does not exist")
        if current.score is not None:
            who = current.reviewer.get_username() if current.reviewer else "someone"
            raise Conflict(f"Feedback {feedback_id} was already scored ({current.score:g}) by {who}")
        who = current.claimed_by.get_username() if current.claimed_by else "another reviewer"
        raise Conflict(f"Feedback {feedback_id} is being reviewed by {who}")
    return Feedback.objects.select_related("agent", "reviewer").get(pk=feedback_id)


# --- bulk changes (admin list and actions) ---------------------------------------------------


def set_scores(*, queryset: QuerySet[Feedback], score, user: AbstractBaseUser) -> int:
    score = validate_score(score)
    now = timezone.now()
    return queryset.update(
        score=score, reviewer=user, reviewed_at=now, updated_at=now, claimed_by=None, claimed_until=None
    )


def clear_scores(*, queryset: QuerySet[Feedback]) -> int:
    """Put responses back into the review queue."""
    return queryset.update(score=None, reviewer=None, reviewed_at=None, updated_at=timezone.now())


# --- score summary (agent page) --------------------------------------------------------------


HISTOGRAM_BINS = 10  # 0.1 wide: the band edges (0.3, 0.5, 0.7, 0.9) fall on bin edges


@dataclass
class ScoreSummary:
    total: int
    scored: int
    unscored: int
    mean: Optional[float]
    std: Optional[float]
    # HISTOGRAM_BINS dicts, lowest scores first: low, high, count, band (the band the bin lies in)
    bins: list[dict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def score_summary(*, agent_name: str) -> ScoreSummary:
    """Counts per score bin, mean and spread, and the spec's feedback-quality warnings, for one agent."""
    qs = Feedback.objects.filter(agent__name=agent_name)
    edges = [i / HISTOGRAM_BINS for i in range(HISTOGRAM_BINS + 1)]
    aggregates = {"total": Count("id"), "scored": Count("id", filter=Q(score__isnull=False))}
    for i in range(HISTOGRAM_BINS):
        upper = Q(score__lte=1.0) if i == HISTOGRAM_BINS - 1 else Q(score__lt=edges[i + 1])
        aggregates[f"bin_{i}"] = Count("id", filter=Q(score__gte=edges[i]) & upper)
    counts = qs.aggregate(**aggregates)
    scores = list(qs.filter(score__isnull=False).values_list("score", flat=True))
    scored = counts["scored"]
    mean = sum(scores) / scored if scored else None
    std = math.sqrt(sum((s - mean) ** 2 for s in scores) / scored) if scored else None
    bins = [
        {"low": edges[i], "high": edges[i + 1], "count": counts[f"bin_{i}"], "band": band_for(edges[i])}
        for i in range(HISTOGRAM_BINS)
    ]
    return ScoreSummary(
        total=counts["total"], scored=scored, unscored=counts["total"] - scored, mean=mean, std=std, bins=bins,
        warnings=_warnings(scores),
    )


def _warnings(scores: list[float]) -> list[str]:
    """The feedback-quality warnings a dry run would give now (the training core words them)."""
    warnings = [str(InsufficientFeedbackError(len(scores)))] if len(scores) < MIN_FEEDBACK else []
    if scores:
        records = [FeedbackRecord(prompt="", response="", score=score) for score in scores]
        warnings += feedback_warnings(records)
    return warnings
