"""How far reviewers agree: Krippendorff's alpha, items whose reviews disagree, a lead's settlement, and each
reviewer's progress.

**Alpha** (Krippendorff's alpha for interval data) is 1 - D_o / D_e: D_o is the mean squared difference between two
scores of the same item, D_e the mean squared difference between any two scores at all (the coincidence-matrix
formula, Krippendorff 2011, "Computing Krippendorff's Alpha-Reliability", written with sums instead of a matrix).
1 is perfect agreement, 0 agreement no better than chance, below 0 systematic disagreement. Content-analysis practice
relies on data with alpha >= 0.8 and draws tentative conclusions from alpha >= 0.667. A figure comes with the number
of items it rests on; with fewer than ``MIN_ITEMS`` items, or when every score is the same (no variation: alpha
is 0/0), there is none.

Written here rather than taken from the ``krippendorff`` package (PyPI, numpy-only): that package is GPL-3.0, and
for interval data the formula is the dozen lines of ``interval_alpha``, checked against Krippendorff's own worked
example in tests/test_agreement.py, and against the package itself there (a test-only dependency) on random and
degenerate data. The sums are centred first (numerically stable when scores barely vary).

Reads ``Review`` rows (feedback/review.py writes them). A lead *settles* a disagreement with ``settle``: the item's
score (what training reads) becomes the lead's, the reviews stay as they were (alpha still sees them), and the
item's notes say it was settled. An edit of one of its reviews later makes the score their mean again
(``review._settle``), and the item is a disagreement again.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from itertools import combinations
from math import fsum
from typing import Optional

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser, Permission
from django.db import transaction
from django.db.models import Count, Exists, F, Max, Min, OuterRef, Q, QuerySet
from django.db.models.functions import Length, Substr
from django.utils import timezone

from n3site.exceptions import Conflict, NotFound, ServiceError
from policies.models import Agent

from . import rendering
from .models import Feedback, Review
from .review import validate_score

MIN_ITEMS = 2  # an alpha needs at least two items with two reviews each
RELIABLE, TENTATIVE = 0.8, 0.667  # Krippendorff's thresholds
DEFAULT_SPREAD = 0.3  # the disagreements view lists items whose reviews spread more than this
SETTLED_PREFIX = "Settled by "
# Scores are stored as floats: 0.8 - 0.5 is 0.30000000000000004, which is not "more than 0.3".
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
    Checked against the ``krippendorff`` package on random and degenerate data (tests/test_agreement.py).
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


# --- disagreements and settling them ----------------------------------------------------------


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


def settle(*, feedback_id: int, user: AbstractBaseUser, score, notes: str = "") -> Feedback:
    """A lead's final score for an item its reviewers disagree on: ``Feedback.score`` (what training reads)
    becomes ``score`` and the item leaves the queue; reviewer = the lead; its notes say it was settled, from which
    reviews, with the lead's ``notes``. The reviews stay (alpha is about them). Needs two or more reviews."""
    score = validate_score(score)
    with transaction.atomic():
        item = Feedback.objects.select_for_update(of=("self",)).filter(pk=feedback_id).first()
        if item is None:
            raise NotFound(f"Feedback {feedback_id} does not exist")
        reviews = list(Review.objects.filter(feedback=item).select_related("reviewer").order_by("score", "id"))
        if len(reviews) < 2:
            raise Conflict(
                f"Feedback {feedback_id} has {len(reviews)} review(s): settling decides between two or more"
            )
        who = ", ".join(f"{r.reviewer.get_username() if r.reviewer else 'deleted user'} {r.score:g}" for r in reviews)
        note = f"{SETTLED_PREFIX}{user.get_username()} at {score:g} (reviews: {who})."
        item.notes = f"{note} {notes.strip()}" if notes and notes.strip() else note
        item.score, item.reviewer, item.reviewed_at = score, user, timezone.now()
        item.claimed_by, item.claimed_until = None, None
        item.save(update_fields=["score", "notes", "reviewer", "reviewed_at", "claimed_by", "claimed_until",
                                 "updated_at"])
    return item


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
