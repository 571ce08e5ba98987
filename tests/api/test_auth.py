"""Who may call the API: token or session auth, one model permission per endpoint, optional public reads."""
import pytest
from django.contrib.auth.models import Permission
from django.test import override_settings
from rest_framework.test import APIClient

from feedback.models import Feedback
from policies.models import Agent, PolicyVersion

pytestmark = pytest.mark.django_db

FEEDBACK = {"prompt": "p", "response": "r", "score": 0.5}

# (method, path, body, the permission it needs)
WRITES = [
    ("post", "/api/policies/feedback/bot", FEEDBACK, "feedback.add_feedback"),
    ("patch", "/api/policies/feedback/bot/run_1", {"score": 0.5}, "feedback.change_feedback"),
    ("post", "/api/policies/train_policy/bot", {"dryRun": False}, "policies.add_policyversion"),
    ("post", "/api/policies/bot/v1/cancel", None, "policies.change_policyversion"),
    ("post", "/api/policies/bot/v1/promote", None, "policies.change_policyversion"),
    ("put", "/api/policies/bot/traffic", {"v1": 1}, "policies.change_policyversion"),
    ("post", "/api/policies/bot/comparisons", {"a": "v1", "b": "v2", "count": 5}, "policies.change_policyversion"),
]
READS = ["/api/policies/", "/api/policies/bot", "/api/policies/bot/v1", "/api/policies/bot/traffic"]


@pytest.fixture(autouse=True)
def queued_version(db):
    agent = Agent.objects.create(name="bot")
    return PolicyVersion.objects.create(agent=agent, number=1, status="queued")


def call(client: APIClient, method: str, path: str, body):
    return getattr(client, method)(path, body)


@pytest.mark.parametrize("method, path, body, perm", WRITES)
def test_writes_without_credentials_are_401_with_a_token_challenge(anonymous, method, path, body, perm):
    response = call(anonymous, method, path, body)

    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Token"
    assert response.json() == {"detail": "Authentication credentials were not provided."}


@pytest.mark.parametrize("method, path, body, perm", WRITES)
def test_writes_with_a_wrong_token_are_401(method, path, body, perm):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token not-a-real-token")
    response = call(client, method, path, body)
    assert response.status_code == 401
    assert response.json() == {"detail": "Invalid token."}


@pytest.mark.parametrize("method, path, body, perm", WRITES)
def test_writes_without_the_permission_are_403(api_without_permissions, method, path, body, perm):
    response = call(api_without_permissions, method, path, body)

    assert response.status_code == 403
    assert perm in response.json()["detail"]


@pytest.mark.parametrize("method, path, body, perm", WRITES)
def test_each_write_needs_its_own_permission(make_user, client_for, method, path, body, perm):
    """Holding every API permission but the one an endpoint needs is not enough."""
    others = [p for _, _, _, p in WRITES if p != perm] + ["policies.view_policyversion"]
    response = call(client_for(make_user("almost", *others)), method, path, body)
    assert response.status_code == 403

    allowed = call(client_for(make_user("exact", perm)), method, path, body)
    assert allowed.status_code not in (401, 403), allowed.content


@override_settings(N3_PUBLIC_READ=True)
@pytest.mark.parametrize("method, path, body, perm", WRITES)
def test_public_read_never_opens_writes(anonymous, method, path, body, perm):
    assert call(anonymous, method, path, body).status_code == 401
    assert not Feedback.objects.exists()
    assert PolicyVersion.objects.get().status == "queued"


@pytest.mark.parametrize("path", READS)
def test_reads_need_credentials_and_the_view_permission(
    anonymous, api_without_permissions, make_user, client_for, path
):
    assert anonymous.get(path).status_code == 401
    denied = api_without_permissions.get(path)
    assert denied.status_code == 403 and "policies.view_policyversion" in denied.json()["detail"]
    reader = client_for(make_user("reader", "policies.view_policyversion"))
    assert reader.get(path).status_code == 200


@override_settings(N3_PUBLIC_READ=True)
@pytest.mark.parametrize("path", READS)
def test_public_read_opens_reads_to_everyone(anonymous, api_without_permissions, path):
    assert anonymous.get(path).status_code == 200
    assert api_without_permissions.get(path).status_code == 200


def test_a_superuser_may_do_everything(django_user_model, client_for):
    admin = client_for(django_user_model.objects.create_superuser("root", password="unused"))
    assert admin.post("/api/policies/feedback/bot", FEEDBACK).status_code == 201
    assert admin.get("/api/policies/bot").status_code == 200


def test_session_auth_works_for_reads_and_enforces_csrf_on_writes(make_user):
    user = make_user("reviewer", "feedback.add_feedback", "policies.view_policyversion")
    browser = APIClient(enforce_csrf_checks=True)
    browser.force_login(user)

    assert browser.get("/api/policies/bot").status_code == 200
    refused = browser.post("/api/policies/feedback/bot", FEEDBACK)
    assert refused.status_code == 403 and "CSRF" in refused.json()["detail"]
    assert not Feedback.objects.exists()


def test_the_schema_and_docs_are_public(anonymous):
    assert anonymous.get("/api/schema/").status_code == 200
    assert anonymous.get("/api/docs/").status_code == 200


def test_a_removed_permission_takes_effect_within_the_cache_time(make_user, client_for, settings):
    from django.core.cache import cache

    user = make_user("bot", "feedback.add_feedback")
    client = client_for(user)
    assert client.post("/api/policies/feedback/bot", FEEDBACK).status_code == 201
    user.user_permissions.clear()

    assert client.post("/api/policies/feedback/bot", {**FEEDBACK, "prompt": "q2"}).status_code == 201  # cached
    cache.clear()  # what N3_PERMISSION_CACHE_SECONDS later looks like
    assert client.post("/api/policies/feedback/bot", {**FEEDBACK, "prompt": "q3"}).status_code == 403

    settings.N3_PERMISSION_CACHE_SECONDS = 0  # no cache: at once
    user.user_permissions.add(Permission.objects.get(codename="add_feedback"))
    assert client.post("/api/policies/feedback/bot", {**FEEDBACK, "prompt": "q4"}).status_code == 201
    user.user_permissions.clear()
    assert client.post("/api/policies/feedback/bot", {**FEEDBACK, "prompt": "q5"}).status_code == 403


def test_a_deactivated_user_is_refused_at_once_despite_the_cache(make_user, client_for):
    user = make_user("bot", "feedback.add_feedback")
    client = client_for(user)
    assert client.post("/api/policies/feedback/bot", FEEDBACK).status_code == 201
    user.is_active = False
    user.save()
    assert client.post("/api/policies/feedback/bot", {**FEEDBACK, "prompt": "q2"}).status_code == 401


def test_a_feedback_post_takes_few_queries(api, django_assert_max_num_queries):
    api.post("/api/policies/feedback/bot", FEEDBACK)  # permissions cached, agent created
    # token+user, agent, and the INSERT in its savepoint
    with django_assert_max_num_queries(5):
        assert api.post("/api/policies/feedback/bot", {**FEEDBACK, "runId": "r1"}).status_code == 201
