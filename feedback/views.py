"""The review queue: one page, and three small JSON views its script calls (CSRF-protected POSTs).

Reviewers are staff users with ``feedback.change_feedback``. Anyone not logged in as staff is sent
to the admin login; a staff user without the permission gets 403.
"""
from __future__ import annotations

import json
from functools import wraps

from django.contrib import admin
from django.contrib.admin.views.decorators import staff_member_required
from django.core.exceptions import PermissionDenied
from django.db.models import Count, Q
from django.http import HttpRequest, JsonResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from n3site.exceptions import ServiceError
from policies.models import Agent

from . import review
from .models import Feedback

# Items this reviewer skipped, per browser session: they stay in the queue for everyone else.
SKIPPED_KEY = "n3_review_skipped"
MAX_SKIPPED = 1000


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


def _item(feedback: Feedback) -> dict:
    return {
        "id": feedback.pk,
        "agent": feedback.agent.name,
        "prompt": feedback.prompt,
        "response": feedback.response,
        "notes": feedback.notes,
        "runId": feedback.run_id,
        "source": feedback.source,
        "policyVersion": feedback.policy_version.version if feedback.policy_version_id else None,
        "createdAt": feedback.created_at.isoformat(),
        "claimedUntil": feedback.claimed_until.isoformat() if feedback.claimed_until else None,
        "adminUrl": reverse("admin:feedback_feedback_change", args=[feedback.pk]),
    }


def _next_payload(request: HttpRequest, agent_name: str) -> dict:
    skipped = request.session.get(SKIPPED_KEY, [])
    item = review.claim_next(user=request.user, agent_name=agent_name, exclude_ids=skipped)
    queue = review.unscored_feedback(agent_name=agent_name)
    return {
        "item": _item(item) if item else None,
        "remaining": queue.count(),
        "skipped": queue.filter(id__in=skipped).count(),
    }


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
        "bands": review.SCORE_BANDS,
        "lease_minutes": int(review.LEASE.total_seconds() // 60),
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
    if data.get("score") in (None, ""):
        raise ServiceError("Score is required: press 1-5 or type a value between 0 and 1")
    notes = data.get("notes")
    saved = review.score_feedback(
        feedback_id=pk, user=request.user, score=data["score"], notes=None if notes is None else str(notes)
    )
    payload = _next_payload(request, data.get("agent", ""))
    payload["saved"] = {"id": saved.pk, "score": saved.score, "reviewer": saved.reviewer.get_username()}
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
