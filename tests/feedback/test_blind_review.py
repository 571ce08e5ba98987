"""Scoring is blind to the version (issue 21, item 4): under a traffic split a reviewer must not know which arm
wrote the response they score; leads (who may change versions) still see it."""
import pytest
from django.urls import reverse

from feedback import review
from feedback.models import Feedback
from policies.models import Agent, PolicyVersion
from tests.users import login, staff

pytestmark = pytest.mark.django_db

REVIEWER_PERMS = ("feedback.change_feedback", "feedback.view_feedback")


@pytest.fixture
def served():
    """Two versions under a split, each with a served response awaiting a score."""
    agent = Agent.objects.create(name="support")
    versions = [PolicyVersion.objects.create(agent=agent, number=n, status="trained") for n in (1, 2)]
    return [Feedback.objects.create(agent=agent, prompt=f"Question {v.number}", response=f"Answer {v.number}",
                                    policy_version=v, run_id=f"chatcmpl-{v.number}") for v in versions]


@pytest.fixture
def reviewer():
    return staff("rita", *REVIEWER_PERMS)


@pytest.fixture
def lead():
    return staff("lena", *REVIEWER_PERMS, "policies.change_policyversion", "policies.view_policyversion")


def _queue(client) -> tuple[str, str]:
    page = client.get(reverse("review:queue")).content.decode()
    payload = client.post(reverse("review:next"), {}, content_type="application/json").content.decode()
    return page, payload


def test_a_reviewers_queue_page_and_its_json_name_no_version(served, reviewer):
    client = login(reviewer)
    page, payload = _queue(client)
    assert "Scored blind" in page
    assert f'"id": {served[0].pk}' in payload
    for text in (page, payload):
        assert "policyVersion" not in text and '"v1"' not in text and "policy v1" not in text
    # Saving and going back answer the same item again: still without its version.
    saved = client.post(reverse("review:score", args=[served[0].pk]), {"score": 0.8},
                        content_type="application/json").json()
    assert "policyVersion" not in saved["item"]
    previous = client.post(reverse("review:previous"), {}, content_type="application/json").json()
    assert previous["item"]["id"] == served[0].pk and "policyVersion" not in previous["item"]


def test_a_lead_sees_the_version_in_the_queue(served, lead):
    page, payload = _queue(login(lead))
    assert "Scored blind" not in page
    assert '"policyVersion": "v1"' in payload


def test_the_feedback_admin_hides_the_version_from_reviewers_only(served, reviewer, lead):
    changelist = reverse("admin:feedback_feedback_changelist")
    change = reverse("admin:feedback_feedback_change", args=[served[0].pk])
    blind = login(reviewer)
    list_page = blind.get(changelist)
    assert list_page.status_code == 200
    assert "column-version" not in list_page.content.decode() and "policy_version__id__exact" not in \
        list_page.content.decode()
    assert "field-policy_version" not in blind.get(change).content.decode()
    sighted = login(lead)
    assert "column-version" in sighted.get(changelist).content.decode()
    assert "field-policy_version" in sighted.get(change).content.decode()


def test_the_disagreements_page_names_the_version_for_leads_only(served, reviewer, lead):
    other = staff("sam", *REVIEWER_PERMS)
    agent = served[0].agent
    agent.review_overlap = 2
    agent.save()
    review.score_feedback(feedback_id=served[0].pk, user=reviewer, score=0.1)
    review.score_feedback(feedback_id=served[0].pk, user=other, score=0.9)
    url = reverse("review:disagreements")
    assert "policy v1" not in login(reviewer).get(url).content.decode()
    assert "policy v1" in login(lead).get(url).content.decode()
