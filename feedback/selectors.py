"""Reads of feedback: an agent's records filtered (the API's list and export), one record by runId, every agent
with its counts, the agent's blind comparisons with their results; the review queue, a reviewer's own reviews, an
agent's score summary; reviewer agreement, disagreements and each reviewer's progress (the statistics are
feedback/agreement.py's). The API's reads raise NotFound (unknown agent, record or comparison) or ValidationError
keyed by the filter as the API names it (a reviewer or version that does not exist) with a message a client can
act on.

The list is read in id order: ids are unique and given in insertion order, so a cursor on them never skips or
repeats a record, whatever timestamps a bulk import gave (DRF's cursor on created_at falls back to an offset among
equal timestamps). The index ``feedback_agent_id`` (agent, id) answers a page with a seek, however deep.
"""
from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from itertools import combinations
from typing import Optional

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser, Permission
from django.core.exceptions import ValidationError
from django.db.models import Count, Exists, F, Max, Min, OuterRef, Prefetch, Q, QuerySet, Subquery
from django.db.models.functions import Length, Substr
from django.utils import timezone

from n3_server.rlhf.data import FeedbackRecord, feedback_warnings
from n3_server.rlhf.errors import MIN_FEEDBACK, InsufficientFeedbackError
from n3site.exceptions import NotFound, ServiceError
from policies.models import Agent, PolicyVersion
from policies.selectors import get_agent

from . import rendering
from .agreement import NO_AGREEMENT, AgentAgreement, Agreement, PairAgreement, agreement_of, reviewer_agreements
from .comparisons import Tally, latest_comparison, tally
from .models import Comparison, Feedback, Review, band_for, free_for

# A reviewer with up to this many reviews is filtered from their reviews; above it, from the agent's records.
_FEW_REVIEWS = 10_000


def feedback_for(
    *,
    agent_name: str,
    scored: Optional[bool] = None,
    reviewer: Optional[str] = None,
    policy_version: Optional[str] = None,
    source: Optional[str] = None,
    since: Optional[datetime] = None,
) -> QuerySet[Feedback]:
    """The agent's feedback, filtered (None: no filter), unordered (the caller orders: the list by id, export by time).

    ``scored``: has a score (True) or awaits review (False). ``reviewer``: a username; records that user reviewed
    (one of the record's reviews is theirs, as in the review queue with several reviewers per item).
    ``policy_version``: "v3", the agent's version that produced the response. ``source``: api, admin or import.
    ``since``: created at or after this time.
    """
    agent = get_agent(name=agent_name)
    queryset = Feedback.objects.filter(agent=agent)
    if scored is not None:
        queryset = queryset.filter(score__isnull=not scored)
    if reviewer is not None:
        user = get_user_model().objects.filter(**{get_user_model().USERNAME_FIELD: reviewer}).first()
        if user is None:
            raise ValidationError({"reviewer": [f"No user is named '{reviewer}'"]})
        reviews = Review.objects.filter(reviewer=user)
        if len(reviews.values_list("id")[:_FEW_REVIEWS + 1]) <= _FEW_REVIEWS:
            # Few reviews (or none): start from them (index review_reviewer_updated) instead of scanning the agent's
            # records for the rare one they reviewed.
            queryset = queryset.filter(id__in=reviews.values("feedback_id"))
        else:
            # Many: the agent's records in id order, each checked (index one_review_per_reviewer), stop at a page.
            queryset = queryset.filter(Exists(reviews.filter(feedback=OuterRef("pk"))))
    if policy_version is not None:
        number = int(policy_version[1:]) if policy_version[1:].isdigit() else 0
        version = PolicyVersion.objects.filter(agent=agent, number=number).first()
        if version is None:
            raise ValidationError({"policyVersion": [f"'{policy_version}' is not a version of agent '{agent.name}'"]})
        queryset = queryset.filter(policy_version=version)
    if source is not None:
        queryset = queryset.filter(source=source)
    if since is not None:
        # The records from ``since`` on start at the smallest id among them (index feedback_agent_created gives it,
        # reading only those records' entries): the page then seeks there instead of scanning the older records.
        # Exact, not an estimate: ids and times need not be in the same order.
        first = (Feedback.objects.filter(agent=agent, created_at__gte=since).order_by()
                 .values("agent").annotate(first=Min("id")).values("first"))
        queryset = queryset.filter(created_at__gte=since, id__gte=Subquery(first))
    return queryset


def with_details(queryset: QuerySet[Feedback]) -> QuerySet[Feedback]:
    """What answering a record reads, in a fixed number of queries per page: its agent, version, reviewer, and its
    reviews (oldest first) with their reviewers."""
    reviews = Review.objects.select_related("reviewer").order_by("id")
    return queryset.select_related("agent", "policy_version", "reviewer").prefetch_related(
        Prefetch("reviews", queryset=reviews)
    )


def get_feedback(*, agent_name: str, run_id: str) -> Feedback:
    """The agent's record with this runId, with its reviews."""
    agent = get_agent(name=agent_name)
    found = with_details(Feedback.objects.filter(agent=agent, run_id=run_id)).first() if run_id else None
    if found is None:
        raise NotFound(f"No feedback with runId '{run_id}' for agent '{agent_name}'")
    return found


@dataclass(frozen=True)
class AgentCounts:
    agent: Agent
    feedback_count: int
    scored_count: int
    version_count: int


def agents_with_counts() -> list[AgentCounts]:
    """Every agent, by name, with its feedback (all and scored) and its number of versions: three queries in all
    (two grouped counts), whatever the number of agents."""
    agents = Agent.objects.select_related("active_version").order_by("name")
    feedback = {
        row["agent"]: (row["total"], row["scored"])
        for row in Feedback.objects.order_by().values("agent").annotate(total=Count("*"), scored=Count("score"))
    }
    versions = dict(PolicyVersion.objects.order_by().values_list("agent").annotate(count=Count("*")))
    return [
        AgentCounts(agent=agent, feedback_count=feedback.get(agent.pk, (0, 0))[0],
                    scored_count=feedback.get(agent.pk, (0, 0))[1], version_count=versions.get(agent.pk, 0))
        for agent in agents
    ]


# --- blind comparisons -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ComparisonResult:
    """A blind comparison and its votes so far (comparisons.tally: B's wins over A, losses, ties, the win rate of B
    with its Wilson interval)."""

    comparison: Comparison
    tally: Tally

    @property
    def preferred(self) -> Optional[PolicyVersion]:
        """The version reviewers prefer, once the interval excludes 0.5; None while there is no evidence either way.
        The one rule for the verdict: the API's ``preferred`` and the compare page's sentence both read it."""
        if self.tally.ci is None:
            return None
        low, high = self.tally.ci
        return self.comparison.version_b if low > 0.5 else self.comparison.version_a if high < 0.5 else None


def _comparisons(agent: Agent) -> QuerySet[Comparison]:
    return Comparison.objects.filter(agent=agent).select_related("agent", "version_a", "version_b")


def comparisons_for(
    *, agent_name: str, limit: int, before: Optional[int] = None
) -> tuple[list[ComparisonResult], bool]:
    """The agent's blind comparisons, newest first (by id), ``limit`` of them with ids below ``before``; and whether
    there are more. One tally query per comparison: a page holds at most api's MAX_COMPARISONS."""
    queryset = _comparisons(get_agent(name=agent_name)).order_by("-id")
    if before is not None:
        queryset = queryset.filter(id__lt=before)
    found = list(queryset[:limit + 1])
    return [ComparisonResult(c, tally(comparison=c)) for c in found[:limit]], len(found) > limit


def get_comparison(*, agent_name: str, comparison_id: int) -> ComparisonResult:
    """The agent's comparison with this id and its tally; NotFound for an unknown agent or comparison (one of
    another agent is not found under this one)."""
    found = _comparisons(get_agent(name=agent_name)).filter(pk=comparison_id).first()
    if found is None:
        raise NotFound(f"No blind comparison {comparison_id} for agent '{agent_name}'")
    return ComparisonResult(found, tally(comparison=found))


def latest_comparison_of(*, version_a: PolicyVersion, version_b: PolicyVersion) -> Optional[ComparisonResult]:
    """The newest blind comparison of these two versions (either order) with its tally, as the compare page's panel
    shows it; None when there is none."""
    found = latest_comparison(version_a=version_a, version_b=version_b)
    return ComparisonResult(found, tally(comparison=found)) if found else None


# --- the review queue ------------------------------------------------------------------------------------------


def unscored_feedback(*, agent_name: str = "") -> QuerySet[Feedback]:
    """The queue: responses awaiting a score (fewer reviews than their agent's ``review_overlap``), oldest first."""
    qs = Feedback.objects.filter(score__isnull=True)
    if agent_name:
        qs = qs.filter(agent__name=agent_name)
    return qs.order_by("created_at", "id")


def reviewable_by(*, user: AbstractBaseUser, agent_name: str = "") -> QuerySet[Feedback]:
    """``user``'s queue: items awaiting a score that ``user`` has not reviewed yet, oldest first."""
    return unscored_feedback(agent_name=agent_name).exclude(reviews__reviewer=user)


def not_reviewed_by(user: AbstractBaseUser) -> Exists:
    return ~Exists(Review.objects.filter(feedback=OuterRef("pk"), reviewer=user))


def identical_items(*, item: Feedback, user: AbstractBaseUser, now=None) -> QuerySet[Feedback]:
    """The other items of ``item``'s agent with the same prompt and response (the same served answer, stored each
    time it was served) that ``user`` may score now: unscored, not reviewed by them, not held by anyone else. What
    the queue shows as "N identical items", and what a score given with ``identical=True`` applies to."""
    now = now or timezone.now()
    return (
        Feedback.objects.filter(agent_id=item.agent_id, score__isnull=True, prompt=item.prompt,
                                response=item.response)
        .exclude(pk=item.pk).filter(free_for(user, now), not_reviewed_by(user)).order_by("id")
    )


# --- a reviewer's own reviews (going back) ------------------------------------------------------------------


def recent_reviews(*, user: AbstractBaseUser, agent_name: str = "", limit: int = 50) -> QuerySet[Review]:
    """``user``'s reviews, the latest saved first (an edit counts as a save), with their items."""
    qs = Review.objects.filter(reviewer=user).select_related("feedback", "feedback__agent",
                                                             "feedback__policy_version")
    if agent_name:
        qs = qs.filter(feedback__agent__name=agent_name)
    return qs.order_by("-updated_at", "-id")[:limit]


def previous_review(*, user: AbstractBaseUser, before: Optional[int] = None, agent_name: str = "") -> Optional[Review]:
    """The review ``user`` gave last, or the one given just before review ``before``; None when there is none.

    Reviews are taken in the order they were given (an edit does not move one), so pressing "previous" again
    walks back through the reviewer's history.
    """
    qs = Review.objects.filter(reviewer=user).select_related("feedback", "feedback__agent",
                                                             "feedback__policy_version")
    if agent_name:
        qs = qs.filter(feedback__agent__name=agent_name)
    if before is not None:
        qs = qs.filter(id__lt=before)
        # One score given to identical items (score_feedback's ``identical``) is one step back, not one per item.
        shown = Feedback.objects.filter(reviews__pk=before, reviews__reviewer=user).first()
        if shown is not None:
            qs = qs.exclude(feedback__agent_id=shown.agent_id, feedback__prompt=shown.prompt,
                            feedback__response=shown.response)
    return qs.order_by("-id").first()


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


# --- agreement between reviewers (the statistics are feedback/agreement.py's) --------------------------------


def _scores_by_item(reviews: QuerySet[Review]) -> dict[int, dict[Optional[int], float]]:
    """{feedback id: {reviewer id: score}} for items with two or more reviews. A review whose reviewer was deleted
    (reviewer null) counts for the agent's alpha under a key of its own, and in no pair."""
    by_item: dict[int, dict] = defaultdict(dict)
    for feedback_id, review_id, reviewer_id, score in reviews.values_list("feedback_id", "id", "reviewer_id", "score"):
        by_item[feedback_id][reviewer_id if reviewer_id is not None else f"deleted-{review_id}"] = score
    return {item: scores for item, scores in by_item.items() if len(scores) >= 2}


def _usernames(ids: Iterable) -> dict[int, str]:
    ids = {i for i in ids if isinstance(i, int)}
    return dict(get_user_model().objects.filter(pk__in=ids).values_list("pk", get_user_model().USERNAME_FIELD))


def agent_agreement(*, agent: Agent) -> AgentAgreement:
    """Alpha over all the agent's items with two or more reviews, and per pair of reviewers over the items both
    reviewed (pairs sharing no item are left out), pairs ordered by their usernames."""
    by_item = _scores_by_item(Review.objects.filter(feedback__agent=agent))
    overall = agreement_of([list(scores.values()) for scores in by_item.values()])
    shared: dict[tuple[int, int], list[list[float]]] = defaultdict(list)
    for scores in by_item.values():
        people = sorted(r for r in scores if isinstance(r, int))
        for a, b in combinations(people, 2):
            shared[(a, b)].append([scores[a], scores[b]])
    names = _usernames(r for pair in shared for r in pair)
    pairs = [
        PairAgreement(*sorted((names.get(a, f"#{a}"), names.get(b, f"#{b}"))), agreement_of(units))
        for (a, b), units in shared.items()
    ]
    return AgentAgreement(overall=overall, pairs=sorted(pairs, key=lambda p: (p.first, p.second)))


# --- disagreements (a lead settles one: services.settle) -------------------------------------

DEFAULT_SPREAD = 0.3  # the disagreements view lists items whose reviews spread more than this
SETTLED_PREFIX = "Settled by "  # how a settled item's notes begin (services.settle writes them)
# Scores are stored as floats: 0.8 - 0.5 is 0.30000000000000004, which is not "more than 0.3".
_EPS = 1e-9


@dataclass
class Disagreement:
    item: Feedback
    reviews: list[Review]
    spread: float  # highest minus lowest review score
    settled: bool  # a lead settled it (the item's notes say so) and no review changed since


def is_settled(item: Feedback, reviews: Sequence[Review]) -> bool:
    latest = max((r.updated_at for r in reviews), default=None)
    return (
        item.notes.startswith(SETTLED_PREFIX) and item.reviewed_at is not None
        and (latest is None or item.reviewed_at >= latest)
    )


def parse_spread(value) -> float:
    """The disagreements view's threshold: a number in [0, 1); ServiceError (a 400) otherwise."""
    if value in (None, ""):
        return DEFAULT_SPREAD
    try:
        spread = float(value)
    except (TypeError, ValueError):
        raise ServiceError(f"spread must be a number between 0 and 1, not {str(value)[:40]!r}") from None
    if not 0.0 <= spread < 1.0:
        raise ServiceError(f"spread must be at least 0 and below 1 (scores lie in 0..1), not {spread:g}")
    return spread


def disagreements(
    *, spread: float = DEFAULT_SPREAD, agent_name: str = "", include_settled: bool = False, limit: int = 100
) -> list[Disagreement]:
    """Items with two or more reviews whose scores spread (max - min) more than ``spread``, the most recently
    reviewed first, each with all its reviews. Settled items only with ``include_settled``."""
    # Grouped by the primary key alone: grouping by every column (as annotating whole rows does on SQLite) sorts
    # the texts themselves, seconds for a multi-megabyte record.
    qs = Feedback.objects.values("pk").annotate(
        n_reviews=Count("reviews"), low=Min("reviews__score"), high=Max("reviews__score"),
        last_review=Max("reviews__updated_at"),
    ).filter(n_reviews__gte=2).annotate(spread=F("high") - F("low")).filter(spread__gt=spread + _EPS)
    if agent_name:
        qs = qs.filter(agent__name=agent_name)
    if not include_settled:
        # Settled (see is_settled) needs both the notes' mark and no review saved after the settlement.
        qs = qs.exclude(Q(notes__startswith=SETTLED_PREFIX) & Q(reviewed_at__gte=F("last_review")))
    spreads = dict(qs.order_by("-last_review", "-pk").values_list("pk", "spread")[:limit])
    # The page shows the start of each text (rendering.LIST_CHARS): a record of any size is not read whole.
    head = rendering.LIST_CHARS + 1
    found = Feedback.objects.filter(pk__in=spreads).defer("prompt", "response").annotate(
        prompt_head=Substr("prompt", 1, head), prompt_chars=Length("prompt"),
        response_head=Substr("response", 1, head), response_chars=Length("response"),
    ).select_related("agent", "reviewer", "policy_version").in_bulk()
    items = [found[pk] for pk in spreads if pk in found]
    for item in items:
        item.spread = spreads[item.pk]
    reviews: dict[int, list[Review]] = defaultdict(list)
    for review in Review.objects.filter(feedback__in=items).select_related("reviewer").order_by("score", "id"):
        reviews[review.feedback_id].append(review)
    return [
        Disagreement(item=item, reviews=reviews[item.pk], spread=item.spread,
                     settled=is_settled(item, reviews[item.pk]))
        for item in items
    ]


# --- progress for reviewers -------------------------------------------------------------------


@dataclass
class ReviewerRow:
    username: str
    user_id: int
    today: int  # reviews given since local midnight
    total: int
    remaining: int  # items awaiting a score that this reviewer has not reviewed
    agreement: Agreement


@dataclass
class AgentProgress:
    agent: Agent
    awaiting: int  # items awaiting a score (fewer reviews than the overlap)
    rows: list[ReviewerRow]


@dataclass
class Progress:
    everyone: list[ReviewerRow]  # per reviewer, all agents together
    agents: list[AgentProgress]
    since: datetime


def reviewers() -> QuerySet:
    """Active staff users who may score feedback (directly, through a group, or as superusers)."""
    perm = Permission.objects.get(content_type__app_label="feedback", codename="change_feedback")
    return get_user_model().objects.filter(is_active=True, is_staff=True).filter(
        Q(is_superuser=True) | Q(user_permissions=perm) | Q(groups__permissions=perm)
    ).distinct()


def reviewer_progress(*, now: Optional[datetime] = None) -> Progress:
    """Per reviewer and per agent: reviews today, reviews in all, items still awaiting them, and their alpha
    against the other reviewers (``reviewer_agreements``). Reviewers: who may score, and anyone who reviewed."""
    since = timezone.localtime(now or timezone.now()).replace(hour=0, minute=0, second=0, microsecond=0)
    users = {pk: name for pk, name in reviewers().values_list("pk", get_user_model().USERNAME_FIELD)}
    counts = Review.objects.filter(reviewer__isnull=False).values("reviewer_id", "feedback__agent_id").annotate(
        total=Count("id"), today=Count("id", filter=Q(created_at__gte=since)),
        pending=Count("id", filter=Q(feedback__score__isnull=True)),
    )
    by_pair = {(c["reviewer_id"], c["feedback__agent_id"]): c for c in counts}
    users.update(_usernames({c["reviewer_id"] for c in counts} - set(users)))
    # Exists, not a filter on feedback: a second join would multiply the count.
    agents = list(Agent.objects.annotate(awaiting=Count("feedback", filter=Q(feedback__score__isnull=True)))
                  .filter(Exists(Feedback.objects.filter(agent=OuterRef("pk")))).order_by("name"))
    all_items: dict[int, dict] = {}
    per_agent = []
    for agent in agents:
        by_item = _scores_by_item(Review.objects.filter(feedback__agent=agent))
        all_items.update(by_item)
        agreements = reviewer_agreements(by_item)
        rows = []
        for pk, name in sorted(users.items(), key=lambda kv: kv[1]):
            c = by_pair.get((pk, agent.pk), {"total": 0, "today": 0, "pending": 0})
            rows.append(ReviewerRow(name, pk, c["today"], c["total"], agent.awaiting - c["pending"],
                                    agreements.get(pk, NO_AGREEMENT)))
        per_agent.append(AgentProgress(agent=agent, awaiting=agent.awaiting, rows=rows))
    overall = reviewer_agreements(all_items)
    everyone = [
        ReviewerRow(name, pk, sum(r.today for a in per_agent for r in a.rows if r.user_id == pk),
                    sum(r.total for a in per_agent for r in a.rows if r.user_id == pk),
                    sum(r.remaining for a in per_agent for r in a.rows if r.user_id == pk),
                    overall.get(pk, NO_AGREEMENT))
        for pk, name in sorted(users.items(), key=lambda kv: kv[1])
    ]
    return Progress(everyone=everyone, agents=per_agent, since=since)
