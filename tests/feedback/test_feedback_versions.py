"""Feedback tied to the version that produced it (policyVersion), and scored later (PATCH feedback/<agent>/<runId>).

Issue 12 item 1: the API, the service, the admin (files: tests/feedback/test_importexport.py).
"""
from urllib.parse import quote

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from feedback import services as feedback_services
from feedback.models import Feedback
from policies.models import Agent, PolicyVersion

pytestmark = pytest.mark.django_db

RECORD = {"prompt": "What is 2+2?", "response": "4", "score": 0.9, "runId": "run_1"}


def feedback_url(agent: str, run_id: str = "") -> str:
    return f"/api/policies/feedback/{agent}" + (f"/{quote(run_id, safe='')}" if run_id else "")


def versions(agent_name: str, *numbers: int) -> list[PolicyVersion]:
    agent, _ = Agent.objects.get_or_create(name=agent_name)
    return [PolicyVersion.objects.create(agent=agent, number=n, status="trained") for n in numbers]


def error(response, status: int) -> dict:
    assert response.status_code == status, response.content
    body = response.json()
    assert isinstance(body["detail"], str) and body["detail"]
    return body


# --- policyVersion on POST -----------------------------------------------------------------------------------------


def test_a_record_is_tied_to_the_version_that_produced_it(api):
    (v1,) = versions("bot", 1)

    body = api.post(feedback_url("bot"), {**RECORD, "policyVersion": "v1"}).json()
    plain = api.post(feedback_url("bot"), {"prompt": "p", "response": "r"}).json()

    assert body["policyVersion"] == "v1" and Feedback.objects.get(pk=body["id"]).policy_version == v1
    assert plain["policyVersion"] is None and plain["reviewedAt"] is None
    assert api.post(feedback_url("bot"), {"prompt": "p", "response": "r", "policyVersion": None}).status_code == 201


@pytest.mark.parametrize("version", ["3", "v01", "v0", "V1", "", 3, ["v1"], "v1 "])
def test_a_version_not_written_as_vN_is_refused_naming_the_field(api, version):
    versions("bot", 1, 3)
    body = error(api.post(feedback_url("bot"), {**RECORD, "policyVersion": version}), 400)
    assert list(body["errors"]) == ["policyVersion"]
    assert not Feedback.objects.exists()


def test_a_version_the_agent_does_not_have_is_a_400_naming_it_and_creates_nothing(api):
    versions("other", 1, 2)
    versions("bot", 1)

    body = error(api.post(feedback_url("bot"), {**RECORD, "policyVersion": "v2"}), 400)
    assert body["errors"] == {"policyVersion": ["'v2' is not a version of agent 'bot'"]}
    assert "policyVersion" in body["detail"] and "'v2'" in body["detail"]

    body = error(api.post(feedback_url("newcomer"), {**RECORD, "policyVersion": "v1"}), 400)
    assert "'v1' is not a version of agent 'newcomer'" in body["detail"]
    assert not Feedback.objects.exists() and not Agent.objects.filter(name="newcomer").exists()


def test_a_list_names_the_record_with_an_unknown_version_and_stores_nothing(api):
    versions("bot", 1, 2)
    records = [{"prompt": f"q{i}", "response": "a", "policyVersion": f"v{i % 2 + 1}"} for i in range(4)]
    records[2]["policyVersion"] = "v9"

    body = error(api.post(feedback_url("bot"), records), 400)

    assert body["errors"] == {"[2]": ["policyVersion 'v9' is not a version of agent 'bot'"]}
    assert not Feedback.objects.exists()


def test_a_list_looks_its_versions_up_in_one_query(api):
    v1, v2 = versions("bot", 1, 2)
    records = [{"prompt": f"q{i}", "response": "a", "policyVersion": f"v{i % 2 + 1}"} for i in range(50)]

    with CaptureQueriesContext(connection) as queries:
        response = api.post(feedback_url("bot"), records)

    assert response.status_code == 201
    assert [item["policyVersion"] for item in response.json()[:3]] == ["v1", "v2", "v1"]
    assert len([q for q in queries.captured_queries if "policies_policyversion" in q["sql"]]) == 1
    assert Feedback.objects.filter(policy_version=v2).count() == 25


def test_the_idempotency_check_compares_the_version(api):
    versions("bot", 1, 2)
    first = api.post(feedback_url("bot"), {**RECORD, "policyVersion": "v1"})
    assert first.status_code == 201

    assert api.post(feedback_url("bot"), {**RECORD, "policyVersion": "v1"}).json()["id"] == first.json()["id"]
    assert api.post(feedback_url("bot"), [{**RECORD, "policyVersion": "v1"}]).status_code == 200
    error(api.post(feedback_url("bot"), {**RECORD, "policyVersion": "v2"}), 409)
    error(api.post(feedback_url("bot"), RECORD), 409)
    error(api.post(feedback_url("bot"), [{**RECORD, "policyVersion": "v2"}]), 409)
    assert Feedback.objects.count() == 1


def test_the_service_takes_a_version_row_of_the_agent_only():
    (v1,) = versions("bot", 1)
    (other,) = versions("other", 1)

    feedback, created = feedback_services.record_feedback(agent_name="bot", prompt="p", response="r",
                                                          policy_version=v1)
    assert created and feedback.policy_version == v1 and feedback.agent.name == "bot"
    with pytest.raises(Exception, match="'v1' is not a version of agent 'bot'"):
        feedback_services.record_feedback(agent_name="bot", prompt="p", response="r", policy_version=other)


# --- PATCH feedback/<agent>/<runId> --------------------------------------------------------------------------------


@pytest.fixture
def scorer(make_user, client_for):
    user = make_user("thumbs", "feedback.change_feedback")
    return user, client_for(user)


def test_a_later_score_is_set_with_its_reviewer_and_time(api, scorer):
    user, client = scorer
    versions("bot", 1)
    api.post(feedback_url("bot"), {"prompt": "p", "response": "r", "runId": "chatcmpl-1", "policyVersion": "v1"})
    Feedback.objects.update(claimed_by=user, claimed_until=timezone.now())  # a reviewer holds it in the queue
    before = timezone.now()

    response = client.patch(feedback_url("bot", "chatcmpl-1"), {"score": 1}, format="json")

    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["score"], body["runId"], body["policyVersion"], body["source"]) == (1.0, "chatcmpl-1", "v1", "api")
    stored = Feedback.objects.get()
    assert stored.score == 1.0 and stored.reviewer == user and stored.reviewed_at >= before
    assert stored.claimed_by is None and body["reviewedAt"] is not None


def test_notes_alone_leave_the_review_and_a_null_score_puts_it_back_in_the_queue(api, scorer):
    user, client = scorer
    api.post(feedback_url("bot"), RECORD)
    client.patch(feedback_url("bot", "run_1"), {"score": 0.2}, format="json")

    noted = client.patch(feedback_url("bot", "run_1"), {"notes": "user: thumbs down"}, format="json").json()
    assert (noted["score"], noted["notes"]) == (0.2, "user: thumbs down")
    assert Feedback.objects.get().reviewer == user

    cleared = client.patch(feedback_url("bot", "run_1") + "/", {"score": None}, format="json").json()
    assert cleared["score"] is None and cleared["reviewedAt"] is None
    stored = Feedback.objects.get()
    assert (stored.score, stored.reviewer, stored.notes) == (None, None, "user: thumbs down")


def test_a_run_id_with_slashes_and_spaces_is_found(api, scorer):
    api.post(feedback_url("bot"), {**RECORD, "runId": "a/b c?"})
    response = scorer[1].patch(feedback_url("bot", "a/b c?"), {"score": 0.5}, format="json")
    assert response.status_code == 200 and response.json()["runId"] == "a/b c?"


def test_an_unknown_run_id_or_agent_is_a_404_naming_it(api, scorer):
    api.post(feedback_url("bot"), RECORD)
    body = error(scorer[1].patch(feedback_url("bot", "nope"), {"score": 0.5}, format="json"), 404)
    assert "runId 'nope'" in body["detail"] and "'bot'" in body["detail"]
    body = error(scorer[1].patch(feedback_url("ghost", "run_1"), {"score": 0.5}, format="json"), 404)
    assert "Agent 'ghost' not found" in body["detail"]
    assert Feedback.objects.get().score == 0.9


@pytest.mark.parametrize("change, field", [
    ({"score": 1.5}, "score"), ({"score": "0.5"}, "score"), ({"score": True}, "score"), ({"notes": 3}, "notes"),
    ({"notes": "a\x00"}, "notes"), ({}, "non_field_errors"), ({"prompt": "other"}, "prompt"),
    ({"policyVersion": "v1"}, "policyVersion"), ({"scroe": 0.5}, "scroe"), ([{"score": 0.5}], "non_field_errors"),
])
def test_a_bad_change_is_a_400_naming_the_field_and_changes_nothing(api, scorer, change, field):
    api.post(feedback_url("bot"), RECORD)
    body = error(scorer[1].patch(feedback_url("bot", "run_1"), change, format="json"), 400)
    assert list(body["errors"]) == [field]
    assert Feedback.objects.get().score == 0.9


def test_patch_needs_the_change_permission(api, anonymous):
    api.post(feedback_url("bot"), RECORD)
    error(api.patch(feedback_url("bot", "run_1"), {"score": 0.1}, format="json"), 403)
    error(anonymous.patch(feedback_url("bot", "run_1"), {"score": 0.1}, format="json"), 401)
    assert Feedback.objects.get().score == 0.9


def test_a_record_url_takes_patch_only(api):
    error(api.post("/api/policies/feedback/bot/run_1", RECORD), 405)
    assert not Agent.objects.exists()


# --- admin ---------------------------------------------------------------------------------------------------------


@pytest.fixture
def admin_client():
    client = Client()
    client.force_login(User.objects.create_superuser("admin", password="pw"))
    return client


def test_the_admin_form_takes_only_a_version_of_the_records_agent(admin_client):
    (v1,) = versions("bot", 1)
    (other,) = versions("other", 1)
    agent = Agent.objects.get(name="bot")
    form = {"agent": agent.pk, "prompt": "p", "response": "r", "score": "", "notes": "", "run_id": ""}

    refused = admin_client.post(reverse("admin:feedback_feedback_add"), {**form, "policy_version": other.pk})
    assert refused.status_code == 200 and "v1 is a version of agent &#x27;other&#x27;" in refused.content.decode()
    stored = admin_client.post(reverse("admin:feedback_feedback_add"), {**form, "policy_version": v1.pk})
    assert stored.status_code == 302 and Feedback.objects.get().policy_version == v1


def test_the_admin_list_shows_and_filters_by_policy_version(admin_client):
    v1, v2 = versions("bot", 1, 2)
    for version, prompt in ((v1, "from one"), (v2, "from two"), (None, "unknown")):
        feedback_services.record_feedback(agent_name="bot", prompt=prompt, response="r", policy_version=version)

    page = admin_client.get(reverse("admin:feedback_feedback_changelist"), {"policy_version__id__exact": v2.pk})

    html = page.content.decode()
    assert page.status_code == 200 and "from two" in html and "from one" not in html and "unknown" not in html
    assert "bot v2" in html
