"""The review queue: one page and the small JSON views its script calls (CSRF-protected POSTs), and the
reviewer's "my recent reviews" page.

Reviewers are staff users with ``feedback.change_feedback``. Anyone not logged in as staff is sent
to the admin login; a staff user without the permission gets 403.
"""
from __future__ import annotations

import json
from functools import wraps
from typing import Optional

from django.contrib import admin, messages
from django.contrib.admin.views.decorators import staff_member_required
from django.core.exceptions import PermissionDenied
from django.db.models import Count, Q
from django.http import HttpRequest, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.http import urlencode
from django.views.decorators.http import require_GET, require_POST

from n3site.exceptions import NotFound, ServiceError
from policies.models import Agent

from . import rendering, review, selectors
from .models import LEASE, SCORE_BANDS, Feedback, Review
from .rendering import render_bounded

# Items this reviewer skipped, per browser session: they stay in the queue for everyone else.
SKIPPED_KEY = "n3_review_skipped"
MAX_SKIPPED = 1000
# Reviews on the "my recent reviews" page.
RECENT_REVIEWS = 50


def reviewer_required(view):
    """Staff login (else redirect to the admin login), then feedback.change_feedback (else 403)."""

    @wraps(view)
    def check_permission(request, *args, **kwargs):
        if not request.user.has_perm("feedback.change_feedback"):
            raise PermissionDenied("Scoring feedback needs the 'Can change feedback' permission.")
        return view(request, *args, **kwargs)

    return staff_member_required(check_permission)


def _json_errors(view):
    """Service errors become {"detail": ...} with their status, like the REST API's."""

    @wraps(view)
    def wrapper(request, *args, **kwargs):
        try:
            return view(request, *args, **kwargs)
        except ServiceError as exc:
            return JsonResponse({"detail": str(exc)}, status=exc.status_code)

    return wrapper


def _body(request: HttpRequest) -> dict:
    if request.content_type == "application/json":
        try:
            data = json.loads(request.body or b"{}")
        except ValueError:
            raise ServiceError("Request body is not valid JSON") from None
        if not isinstance(data, dict):
            raise ServiceError("Request body must be a JSON object")
        return data
    return request.POST.dict()


def _whole(feedback: Feedback, field: str) -> str:
    return reverse("admin:feedback_feedback_text", args=[feedback.pk, field])


def _item(feedback: Feedback, *, user, mine: Optional[Review] = None) -> dict:
    """An item as the queue's script shows it to ``user``. ``mine``: the reviewer's own review of it (going back),
    whose score and notes the page puts in the fields; otherwise the notes field starts with the item's notes only
    while it has no review (a second reviewer does not see the first one's notes: reviews stay independent).
    ``policyVersion`` only for a lead (review.sees_versions): reviewers score blind."""
    reviews = feedback.reviews.count()
    item = {
        "id": feedback.pk,
        "agent": feedback.agent.name,
        "prompt": feedback.prompt,
        "response": feedback.response,
        # As reviewers expect to read them (Markdown, chat, plain text), rendered safe by feedback/rendering.py.
        # A text over rendering.LIST_CHARS characters: its start and a link to all of it (raw, it is above).
        "promptHtml": render_bounded(feedback.prompt, url=_whole(feedback, "prompt")),
        "responseHtml": render_bounded(feedback.response, url=_whole(feedback, "response")),
        "notes": feedback.notes if mine is None and not reviews else "",
        "runId": feedback.run_id,
        "source": feedback.source,
        "createdAt": feedback.created_at.isoformat(),
        "claimedUntil": feedback.claimed_until.isoformat() if feedback.claimed_until else None,
        "adminUrl": reverse("admin:feedback_feedback_change", args=[feedback.pk]),
        # "review 2 of 3": the reviews it has (this reviewer's included when going back) and how many it needs.
        "overlap": feedback.agent.review_overlap,
        "reviews": reviews,
        "score": feedback.score if mine is not None else None,
        # The same prompt and response stored again (a served answer, each time served): shown once, and the
        # score saved here applies to these too (selectors.identical_items).
        "identical": selectors.identical_items(item=feedback, user=user).count() if mine is None else 0,
    }
    if review.sees_versions(user):
        item["policyVersion"] = feedback.policy_version.version if feedback.policy_version_id else None
    if mine is not None:
        item["review"] = {"id": mine.pk, "score": mine.score, "notes": mine.notes,
                          "createdAt": mine.created_at.isoformat(), "updatedAt": mine.updated_at.isoformat()}
    return item


def _plural(count: int, one: str, many: str) -> str:
    return f"{count} {one if count == 1 else many}"


def _empty_state(*, remaining: int, skipped: int, held: int, reviewed: int, agent_name: str) -> dict:
    """What the card says when there is no item for this reviewer; it agrees with the header's count."""
    waiting = _plural(remaining, "item awaits", "items await")
    lines = []
    if remaining == 0:
        title = "Nothing awaiting your review" + (f" for {agent_name}." if agent_name else ".")
    elif skipped == remaining:
        title = f"You skipped all {_plural(remaining, 'item', 'items')} awaiting review."
    else:
        title = f"{waiting} review, none free for you right now."
        if skipped:
            lines.append(f"You skipped {_plural(skipped, 'of them', 'of them')}.")
    if held:
        lines.append(f"{_plural(held, 'item is', 'items are')} being reviewed by someone else right now "
                     f"(held for up to {int(LEASE.total_seconds() // 60)} minutes).")
    if reviewed:
        lines.append(f"{_plural(reviewed, 'item awaits', 'items await')} other reviewers (you reviewed "
                     f"{'it' if reviewed == 1 else 'them'}).")
    return {"title": title, "lines": lines}


def _next_payload(request: HttpRequest, agent_name: str, *, item: Optional[Feedback] = None) -> dict:
    """The reviewer's current item (claimed now, unless given) and the counts the page shows.

    ``remaining``: items this reviewer may still review (the header's count), ``skipped``: those they skipped,
    ``held``: those others hold right now, ``reviewed``: items awaiting other reviewers that this one reviewed.
    """
    skipped_ids = request.session.get(SKIPPED_KEY, [])
    if item is None:
        item = review.claim_next(user=request.user, agent_name=agent_name, exclude_ids=skipped_ids)
    queue = selectors.reviewable_by(user=request.user, agent_name=agent_name)
    counts = queue.aggregate(
        remaining=Count("id"),
        skipped=Count("id", filter=Q(id__in=skipped_ids)),
        held=Count("id", filter=Q(claimed_until__gt=timezone.now()) & ~Q(claimed_by=request.user)
                   & ~Q(id__in=skipped_ids)),
    )
    counts["reviewed"] = (selectors.unscored_feedback(agent_name=agent_name)
                          .filter(reviews__reviewer=request.user).count())
    payload = {"item": _item(item, user=request.user) if item else None, **counts}
    if item is None:
        payload["empty"] = _empty_state(agent_name=agent_name, **counts)
    return payload


def _int(value, name: str) -> Optional[int]:
    if value in (None, ""):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ServiceError(f"{name} must be a whole number, got {value!r}") from None


def _score_from(data: dict):
    if data.get("score") in (None, ""):
        raise ServiceError("Score is required: press 1-5 or type a value between 0 and 1")
    return data["score"]


def _notes_from(data: dict) -> Optional[str]:
    notes = data.get("notes")
    return None if notes is None else str(notes)


@require_GET
@reviewer_required
def queue_page(request: HttpRequest):
    agent_name = request.GET.get("agent", "")
    agents = Agent.objects.annotate(unscored=Count("feedback", filter=Q(feedback__score__isnull=True)))
    context = {
        **admin.site.each_context(request),
        "title": f"Review queue: {agent_name}" if agent_name else "Review queue",
        "agent_name": agent_name,
        "agents": agents,
        "bands": SCORE_BANDS,
        "lease_minutes": int(LEASE.total_seconds() // 60),
        "blind": not review.sees_versions(request.user),
    }
    return render(request, "feedback/review_queue.html", context)


@require_POST
@reviewer_required
@_json_errors
def next_item(request: HttpRequest):
    """Claim the next item. ``{"agent": name}`` narrows the queue; ``{"includeSkipped": true}`` forgets skips."""
    data = _body(request)
    if data.get("includeSkipped") in (True, "true", "1"):
        request.session[SKIPPED_KEY] = []
    return JsonResponse(_next_payload(request, data.get("agent", "")))


@require_POST
@reviewer_required
@_json_errors
def score_item(request: HttpRequest, pk: int):
    """Save ``{"score", "notes"}`` on a claimed item and claim the next one in the same round trip."""
    data = _body(request)
    saved = review.score_feedback(feedback_id=pk, user=request.user, score=_score_from(data), notes=_notes_from(data),
                                  identical=True)
    payload = _next_payload(request, data.get("agent", ""))
    mine = saved.saved_review
    payload["saved"] = {"id": saved.pk, "score": mine.score, "reviewer": request.user.get_username(),
                        "reviewId": mine.pk, "itemScore": saved.score, "reviews": saved.reviews.count(),
                        "overlap": saved.agent.review_overlap,
                        # The same review given to the identical items (undo takes these back too).
                        "identicalReviewIds": [r.pk for r in saved.identical_reviews]}
    return JsonResponse(payload)


@require_POST
@reviewer_required
@_json_errors
def skip_item(request: HttpRequest, pk: int):
    """Release the item to other reviewers and move on; this reviewer won't see it again this session."""
    data = _body(request)
    review.release_claim(feedback_id=pk, user=request.user)
    skipped = request.session.get(SKIPPED_KEY, [])
    if pk not in skipped:
        request.session[SKIPPED_KEY] = (skipped + [pk])[-MAX_SKIPPED:]
    return JsonResponse(_next_payload(request, data.get("agent", "")))


@require_POST
@reviewer_required
@_json_errors
def previous_item(request: HttpRequest):
    """The reviewer's last review (``{"before": reviewId}``: the one given before it) with its item, to change it;
    ``{"item": null}`` when there is no earlier one. The item the reviewer holds in the queue stays theirs."""
    data = _body(request)
    mine = selectors.previous_review(user=request.user, before=_int(data.get("before"), "before"),
                                  agent_name=data.get("agent", ""))
    return JsonResponse({"item": _item(mine.feedback, user=request.user, mine=mine) if mine else None})


@require_POST
@reviewer_required
@_json_errors
def edit_item(request: HttpRequest, pk: int):
    """Change the reviewer's review ``pk`` (``{"score", "notes"}``); a completed item's score becomes the new mean.

    JSON in, JSON out for the queue's script; the "my reviews" page posts a plain form and is sent back to it."""
    data = _body(request)
    as_json = request.content_type == "application/json"
    try:
        changed = review.edit_review(review_id=pk, user=request.user, score=_score_from(data),
                                     notes=_notes_from(data))
    except ServiceError as exc:
        if as_json:
            raise
        messages.error(request, f"Review #{pk} not changed: {exc}")
        return redirect(_back_to_mine(data))
    item = changed.feedback
    if not as_json:
        messages.success(request, f"Changed your review of feedback #{item.pk} to {changed.score:g}.")
        return redirect(_back_to_mine(data))
    return JsonResponse({"saved": {"id": item.pk, "reviewId": changed.pk, "score": changed.score,
                                   "notes": changed.notes, "itemScore": item.score}})


def _back_to_mine(data: dict) -> str:
    agent_name = data.get("agent", "")
    return reverse("review:mine") + (f"?{urlencode({'agent': agent_name})}" if agent_name else "")


@require_POST
@reviewer_required
@_json_errors
def undo_item(request: HttpRequest, pk: int):
    """Remove the reviewer's review ``pk`` (undo of a save): the item returns to the queue if it had all its
    reviews, and is shown to this reviewer again when nobody else holds it; else the next item is. ``{"also":
    [reviewId, ...]}``: the reviews the same save gave to identical items, removed too."""
    data = _body(request)
    also = data.get("also") or []
    if not isinstance(also, list):
        raise ServiceError("also must be a list of review ids")
    item = review.undo_review(review_id=pk, user=request.user)
    for other in also:
        try:
            review.undo_review(review_id=_int(other, "also"), user=request.user)
        except NotFound:  # changed since (a lead cleared it): nothing of this reviewer's left to undo
            pass
    agent_name = data.get("agent", "")
    again = None
    if review.try_claim(feedback_id=item.pk, user=request.user):
        Feedback.objects.filter(claimed_by=request.user).exclude(pk=item.pk).update(claimed_by=None,
                                                                                   claimed_until=None)
        again = Feedback.objects.select_related("agent", "policy_version").get(pk=item.pk)
    payload = _next_payload(request, agent_name, item=again)
    payload["undone"] = {"id": item.pk, "reviewId": pk, "shownAgain": again is not None}
    return JsonResponse(payload)


@require_GET
@reviewer_required
def my_reviews(request: HttpRequest):
    """The reviewer's latest reviews, each score and note editable in place."""
    agent_name = request.GET.get("agent", "")
    reviews = list(selectors.recent_reviews(user=request.user, agent_name=agent_name, limit=RECENT_REVIEWS))
    for mine in reviews:
        mine.item_reviews = mine.feedback.reviews.count()
    # Prompts and responses as the queue shows them (chats as conversations, Markdown rendered), within a list
    # page's budget.
    texts = []
    for mine in reviews:
        item = mine.feedback
        texts += [(item.prompt[:rendering.LIST_CHARS + 1], len(item.prompt),
                   reverse("admin:feedback_feedback_text", args=[item.pk, "prompt"])),
                  (item.response[:rendering.LIST_CHARS + 1], len(item.response),
                   reverse("admin:feedback_feedback_text", args=[item.pk, "response"]))]
    html = rendering.render_list(texts)
    for i, mine in enumerate(reviews):
        mine.prompt_html, mine.response_html = html[2 * i], html[2 * i + 1]
    context = {
        **admin.site.each_context(request),
        "title": "My recent reviews",
        "agent_name": agent_name,
        "reviews": reviews,
        "limit": RECENT_REVIEWS,
    }
    return render(request, "feedback/my_reviews.html", context)
