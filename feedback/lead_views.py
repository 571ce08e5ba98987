"""The lead reviewer's pages (mounted under /review/): disagreements to settle, and every reviewer's progress.

Both need what the review queue needs (staff, ``feedback.change_feedback``): whoever may score may settle. The
reads are in feedback/selectors.py, settling in feedback/services.py; these views read the query, call them and
render.
"""
from __future__ import annotations

from urllib.parse import urlencode

from django.contrib import admin, messages
from django.http import HttpRequest, HttpResponseRedirect, JsonResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from n3site.exceptions import ServiceError
from policies.models import Agent

from . import agreement, rendering, review, selectors, services
from .views import reviewer_required


def _filters(source) -> dict:
    """spread, agent and settled from a query string or form, spread checked (ServiceError -> 400)."""
    return {
        "spread": selectors.parse_spread(source.get("spread")),
        "agent_name": source.get("agent", ""),
        "include_settled": source.get("settled") in ("1", "on", "true"),
    }


def _disagreements_page(request: HttpRequest, filters: dict, *, error: str = "", error_item=None, status=200):
    items = selectors.disagreements(**filters) if filters else []
    # Up to 100 items, each with a prompt and a response of any size: rendered within one page's budget.
    texts = []
    for d in items:
        prompt_url, response_url = (reverse("admin:feedback_feedback_text", args=[d.item.pk, field])
                                    for field in ("prompt", "response"))
        texts += [(d.item.prompt_head, d.item.prompt_chars, prompt_url),
                  (d.item.response_head, d.item.response_chars, response_url)]
    html = rendering.render_list(texts)
    for i, d in enumerate(items):
        d.item.prompt_html, d.item.response_html = html[2 * i], html[2 * i + 1]
    agent_name = (filters or {}).get("agent_name", request.GET.get("agent", ""))
    context = {
        **admin.site.each_context(request),
        "title": "Disagreements",
        "items": items,
        "filters": filters,
        "spread": (filters or {}).get("spread", request.GET.get("spread", "")),
        "agent_name": agent_name,
        "agents": Agent.objects.order_by("name"),
        "error": error,
        "error_item": error_item,
        "default_spread": selectors.DEFAULT_SPREAD,
        "limit": 100,
        # A reviewer who may settle but not change versions still scores blind (review.sees_versions).
        "show_versions": review.sees_versions(request.user),
    }
    return render(request, "feedback/disagreements.html", context, status=status)


@require_GET
@reviewer_required
def disagreements_page(request: HttpRequest):
    """Items whose reviews spread more than ``?spread=`` (default 0.3), most recently reviewed first;
    ``?agent=`` narrows to one agent, ``?settled=1`` shows settled items too. A bad spread is a 400."""
    try:
        filters = _filters(request.GET)
    except ServiceError as exc:
        return _disagreements_page(request, {}, error=str(exc), status=exc.status_code)
    return _disagreements_page(request, filters)


@require_POST
@reviewer_required
def settle_item(request: HttpRequest, pk: int):
    """Settle one item at the lead's ``score`` (with ``notes``). A form post returns to the list it came from; a
    JSON client (Accept: application/json) gets the item's new score, or ``{"detail"}`` with a 4xx."""
    wants_json = "application/json" in request.headers.get("Accept", "")
    try:
        if request.POST.get("score", "").strip() == "":
            raise ServiceError("Score is required: the final score, a number between 0 and 1")
        item = services.settle(feedback_id=pk, user=request.user, score=request.POST["score"],
                                notes=request.POST.get("notes", ""))
    except ServiceError as exc:
        if wants_json:
            return JsonResponse({"detail": str(exc)}, status=exc.status_code)
        try:
            filters = _filters(request.POST)
        except ServiceError:
            filters = _filters({})
        return _disagreements_page(request, filters, error=str(exc), error_item=pk, status=exc.status_code)
    if wants_json:
        return JsonResponse({"id": item.pk, "score": item.score, "reviewer": request.user.get_username(),
                             "notes": item.notes})
    messages.success(request, f"Feedback #{item.pk} settled at {item.score:g}: training now reads this score.")
    query = {k: v for k, v in (("spread", request.POST.get("spread", "")), ("agent", request.POST.get("agent", "")),
                                ("settled", request.POST.get("settled", ""))) if v}
    url = reverse("review:disagreements") + (f"?{urlencode(query)}" if query else "")
    return HttpResponseRedirect(url)


@require_GET
@reviewer_required
def progress_page(request: HttpRequest):
    """Per reviewer and per agent: scored today, in all, remaining, and agreement with the other reviewers."""
    context = {
        **admin.site.each_context(request),
        "title": "Reviewer progress",
        "progress": selectors.reviewer_progress(),
        "reliable": agreement.RELIABLE,
        "tentative": agreement.TENTATIVE,
    }
    return render(request, "feedback/progress.html", context)
