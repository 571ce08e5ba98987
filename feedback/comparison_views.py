"""The blind comparison queue (/review/compare/<id>/): one prompt, two versions' responses as "left" and "right",
a vote for a side or a tie. Plain forms (each vote a POST that redirects to the next pair), with keys added by
static/n3/compare_queue.js. Which version a side shows is never in the page (feedback.comparisons). Going back as in
the review queue: the previous pair judged (its vote marked, to change it; again: further back) and undo of the
latest vote.

Reviewers are staff users with ``feedback.change_feedback``, as for the review queue.
"""
from __future__ import annotations

from typing import Optional

from django.contrib import admin, messages
from django.http import HttpRequest
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from n3site.exceptions import ServiceError

from . import comparisons
from .models import LEASE, Comparison, ComparisonItem
from .views import reviewer_required

# Items this reviewer skipped, per browser session and comparison: they stay in the queue for everyone else.
SKIPPED_KEY = "n3_compare_skipped"


def _skipped(request: HttpRequest, comparison_id: int) -> list[int]:
    return list(request.session.get(SKIPPED_KEY, {}).get(str(comparison_id), []))


def _set_skipped(request: HttpRequest, comparison_id: int, ids: list[int]) -> None:
    skipped = dict(request.session.get(SKIPPED_KEY, {}))
    skipped[str(comparison_id)] = ids[-1000:]
    request.session[SKIPPED_KEY] = skipped


@require_GET
@reviewer_required
def compare_queue(request: HttpRequest, pk: int):
    if request.GET.get("skipped") == "again":
        get_object_or_404(Comparison, pk=pk)
        _set_skipped(request, pk, [])
        return redirect("review:compare", pk)
    return _queue_page(request, pk)


def _queue_page(request: HttpRequest, pk: int, *, status: int = 200, previous: Optional[ComparisonItem] = None,
                comparison: Optional[Comparison] = None):
    """The pair this reviewer holds (or the next one), the tally so far; with ``previous``, that pair this reviewer
    judged, their vote marked, to change it (the pair they hold stays theirs)."""
    comparison = comparison or get_object_or_404(Comparison.objects.select_related("agent"), pk=pk)
    skipped = _skipped(request, pk)
    if previous is None:
        item = comparisons.claim_next_item(comparison=comparison, user=request.user, exclude_ids=skipped)
    else:
        item = previous
    tally = comparisons.tally(comparison=comparison)
    if item is not None:
        left, right = (item.response_a, item.response_b) if item.a_on_left else (item.response_b, item.response_a)
    else:
        left = right = ""
    context = {
        "editing": previous is not None,
        "my_side": comparisons.side_of(previous) if previous is not None else "",
        # Undo removes the reviewer's latest vote here (the queue's page; going back changes votes instead).
        "last_vote": comparisons.previous_vote(comparison=comparison, user=request.user) if previous is None else None,
        **admin.site.each_context(request),
        # The agent, not the versions: the reviewer must not know which is which.
        "title": f"Blind comparison {comparison.pk}: {comparison.agent.name}",
        "comparison": comparison,
        "item": item,
        "left": left,
        "right": right,
        "tally": tally,
        "skipped": len(skipped),
        "lease_minutes": int(LEASE.total_seconds() // 60),
    }
    return render(request, "feedback/compare_queue.html", context, status=status)


@require_POST
@reviewer_required
def vote_item(request: HttpRequest, pk: int, item_pk: int):
    """``choice``: left, right or tie; then the next pair. A vote that does not count (no responses yet, a pair
    this reviewer does not hold, judged already) answers its 4xx with the queue and the reason."""
    try:
        comparisons.vote(item_id=item_pk, user=request.user, side=request.POST.get("choice", ""), comparison_id=pk)
    except ServiceError as exc:
        messages.error(request, str(exc))
        return _queue_page(request, pk, status=exc.status_code)
    return redirect("review:compare", pk)


@require_GET
@reviewer_required
def previous_item(request: HttpRequest, pk: int):
    """The pair this reviewer judged last (``?before=<pair>``: the one judged before it), their vote marked."""
    comparison = get_object_or_404(Comparison.objects.select_related("agent"), pk=pk)
    before = request.GET.get("before") or None
    try:
        if before is not None and not before.isdigit():
            raise ServiceError(f"before must be a whole number, got {before!r}")
        item = comparisons.previous_vote(comparison=comparison, user=request.user,
                                         before=int(before) if before else None)
    except ServiceError as exc:
        messages.error(request, str(exc))
        return redirect("review:compare", pk)
    if item is None:
        messages.info(request, "No earlier vote: that was the first pair you judged." if before
                      else "You have not judged a pair of this comparison yet.")
        return redirect("review:compare", pk)
    return _queue_page(request, pk, previous=item, comparison=comparison)


@require_POST
@reviewer_required
def change_item(request: HttpRequest, pk: int, item_pk: int):
    """Change this reviewer's vote on a pair they judged (``choice``: left, right or tie); back to the queue."""
    try:
        item = comparisons.change_vote(item_id=item_pk, user=request.user, side=request.POST.get("choice", ""),
                                       comparison_id=pk)
    except ServiceError as exc:
        messages.error(request, str(exc))
        return redirect("review:compare", pk)
    messages.success(request, f"Changed your vote on pair {item.position + 1} to {_said(comparisons.side_of(item))}.")
    return redirect("review:compare", pk)


@require_POST
@reviewer_required
def undo_item(request: HttpRequest, pk: int, item_pk: int):
    """Remove this reviewer's vote on a pair (undo): the pair is undecided again and shown to them next."""
    try:
        item = comparisons.undo_vote(item_id=item_pk, user=request.user, comparison_id=pk)
    except ServiceError as exc:
        messages.error(request, str(exc))
        return redirect("review:compare", pk)
    messages.success(request, f"Undone: your vote on pair {item.position + 1} was removed. Judge it again, or skip it.")
    return redirect("review:compare", pk)


def _said(side: str) -> str:
    return "a tie" if side == "tie" else f"{side} is better"


@require_POST
@reviewer_required
def skip_item(request: HttpRequest, pk: int, item_pk: int):
    """Leave the pair for someone else; this reviewer does not see it again this session."""
    comparisons.release_item(item_id=item_pk, user=request.user)
    skipped = _skipped(request, pk)
    if item_pk not in skipped:
        _set_skipped(request, pk, skipped + [item_pk])
    return redirect(reverse("review:compare", args=[pk]))
