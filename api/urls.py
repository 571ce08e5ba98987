"""/api/policies/...: the spec's URLs, without a trailing slash; each also answers with one.

Django's APPEND_SLASH would redirect a POST to the slash form and lose its body, so both forms are
routed here instead. Agent names in feedback/ and train_policy/ URLs are matched loosely so that a
bad one (``..%2F..%2Fetc``) reaches the view and is refused with 400 by the agent-name validator
instead of falling through to an HTML 404.
"""
from django.http import JsonResponse
from django.urls import re_path

from . import views

app_name = "policies"  # the URL names' namespace: the API lives under /api/policies/

ANY_AGENT = r"(?P<agent>.*[^/])"  # anything not ending in "/": validated by the service
AGENT = r"(?P<agent>[^/]+)"
VERSION = r"(?P<version>[^/]+)"
COMPARISON = r"(?P<comparison>[0-9]{1,18})"  # within a 64-bit id; anything else is no comparison (404)
RUN_ID = r"(?P<run_id>[\s\S]*[^/])"  # the rest of the path: a runId may contain "/" (sent as %2F) or a newline


def _route(regex: str, view, name: str) -> list:
    return [re_path(rf"^{regex}$", view, name=name), re_path(rf"^{regex}/$", view)]


def api_not_found(request, *args, **kwargs) -> JsonResponse:
    return JsonResponse({"detail": f"No API endpoint at {request.path}"}, status=404)


def without_trailing_slash_aliases(endpoints, **kwargs):
    """drf-spectacular preprocessing hook: list each API URL once, in the spec's form (no trailing slash; the list of
    agents is /api/policies/ itself)."""
    return [
        endpoint for endpoint in endpoints
        if not (endpoint[0].startswith("/api/policies/") and endpoint[0].endswith("/"))
        or endpoint[0] == "/api/policies/"
    ]


urlpatterns = [
    re_path(r"^$", views.AgentListView.as_view(), name="agent-list"),  # /api/policies/: its one form
    *_route(rf"feedback/{AGENT}/{RUN_ID}", views.FeedbackRecordView.as_view(), "feedback-record"),
    *_route(rf"feedback/{ANY_AGENT}", views.FeedbackView.as_view(), "feedback"),
    *_route(rf"train_policy/{ANY_AGENT}", views.TrainPolicyView.as_view(), "train-policy"),
    *_route(AGENT, views.PolicyVersionListView.as_view(), "version-list"),
    *_route(rf"{AGENT}/traffic", views.TrafficView.as_view(), "traffic"),  # before {VERSION}: "traffic" is no version
    *_route(rf"{AGENT}/compare", views.CompareView.as_view(), "compare"),  # and these: no versions either
    *_route(rf"{AGENT}/comparisons", views.ComparisonListView.as_view(), "comparison-list"),
    *_route(rf"{AGENT}/comparisons/{COMPARISON}", views.ComparisonDetailView.as_view(), "comparison-detail"),
    *_route(rf"{AGENT}/{VERSION}", views.PolicyVersionDetailView.as_view(), "version-detail"),
    *_route(rf"{AGENT}/{VERSION}/events", views.PolicyVersionEventsView.as_view(), "version-events"),
    *_route(rf"{AGENT}/{VERSION}/cancel", views.PolicyVersionCancelView.as_view(), "version-cancel"),
    *_route(rf"{AGENT}/{VERSION}/promote", views.PromoteView.as_view(), "version-promote"),
    re_path(r"", api_not_found),
]
