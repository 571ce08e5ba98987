"""Reads of feedback: an agent's records filtered (the API's list and export), one record by runId, every agent
with its counts, and the agent's blind comparisons with their results. Each raises NotFound (unknown agent, record
or comparison) or ValidationError keyed by the filter as the API names it (a reviewer or version that does not
exist) with a message a client can act on.

The list is read in id order: ids are unique and given in insertion order, so a cursor on them never skips or
repeats a record, whatever timestamps a bulk import gave (DRF's cursor on created_at falls back to an offset among
equal timestamps). The index ``feedback_agent_id`` (agent, id) answers a page with a seek, however deep.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Optional

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db.models import Count, Exists, Min, OuterRef, Prefetch, QuerySet, Subquery

from n3site.exceptions import NotFound
from policies.models import Agent, PolicyVersion
from policies.selectors import get_agent

from .comparisons import Tally, latest_comparison, tally
from .models import Comparison, Feedback, Review

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
        """The version reviewers prefer, once the interval excludes 0.5 (as the compare page's sentence says it);
        None while there is no evidence either way."""
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
