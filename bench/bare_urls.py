"""The bare Django view bench/ingest_bench.py measures the feedback API against (via bench/bare_settings.py).

``POST /api/policies/feedback/<agent>`` with one JSON record: authenticates the ``Authorization: Token <key>``
header with the API's own CachedTokenAuthentication (one indexed SELECT of authtoken_token joined with the user,
cached per process for N3_TOKEN_CACHE_SECONDS, as the API does: that is the framework-level work), INSERTs the
record with one SQL statement, and answers 201 with its runId. No DRF, no validation, no idempotency check,
no permission check: the most any feedback POST on this Django, this gunicorn config and this database could do.
"""
import json

from django.db import connection
from django.http import HttpResponse, JsonResponse
from django.urls import path
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from rest_framework.exceptions import AuthenticationFailed

from api.authentication import CachedTokenAuthentication
from policies.models import Agent

_auth = CachedTokenAuthentication()
_agent_ids: dict[str, int] = {}  # the API caches the agent's row too (N3_AGENT_CACHE_SECONDS)
_COLUMNS = "agent_id, prompt, response, score, run_id, notes, source, created_at, updated_at"
_INSERT = f"INSERT INTO feedback_feedback ({_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"


@csrf_exempt
def feedback(request, agent: str) -> HttpResponse:
    if request.method != "POST":
        return HttpResponse(status=405)
    keyword, _, key = request.META.get("HTTP_AUTHORIZATION", "").partition(" ")
    try:
        if keyword != "Token" or not key:
            raise AuthenticationFailed("no token")
        _auth.authenticate_credentials(key)
    except AuthenticationFailed:
        return JsonResponse({"detail": "Invalid token."}, status=401)
    record = json.loads(request.body)
    agent_id = _agent_ids.get(agent)
    if agent_id is None:
        agent_id = _agent_ids[agent] = Agent.objects.get_or_create(name=agent)[0].pk
    now = timezone.now()
    with connection.cursor() as cursor:
        cursor.execute(_INSERT, [agent_id, record["prompt"], record["response"], record.get("score"),
                                 record.get("runId", ""), record.get("notes", ""), "api", now, now])
    return JsonResponse({"runId": record.get("runId", "")}, status=201)


urlpatterns = [path("api/policies/feedback/<str:agent>", feedback)]
