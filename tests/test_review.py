"""The review queue: claim/lease between reviewers, scoring, skipping, and who may use it."""
from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from feedback import review
from feedback.models import Feedback
from n3site.exceptions import Conflict, ServiceError
from policies.models import Agent

pytestmark = pytest.mark.django_db


def make_reviewer(username: str, *perms: str) -> User:
    user = User.objects.create_user(username, password="pw", is_staff=True)
    codenames = perms or ("change_feedback", "view_feedback")
    user.user_permissions.set(Permission.objects.filter(content_type__app_label="feedback", codename__in=codenames))
    return User.objects.get(pk=user.pk)  # fresh object: no stale permission cache


def add_feedback(agent: Agent, count: int, **fields) -> list[Feedback]:
    return [
        Feedback.objects.create(agent=agent, prompt=f"Question {i}", response=f"Answer {i}", **fields)
        for i in range(count)
    ]


@pytest.fixture
def agent():
    return Agent.objects.create(name="support")


@pytest.fixture
def alice():
    return make_reviewer("alice")


@pytest.fixture
def bob():
    return make_reviewer("bob")


def client_for(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


# --- claim / lease -----------------------------------------------------------------------------


def test_queue_is_oldest_unscored_first_and_two_reviewers_get_different_items(agent, alice, bob):
    first, second, third = add_feedback(agent, 3)
    Feedback.objects.create(agent=agent, prompt="done", response="done", score=0.5)

    a = review.claim_next(user=alice)
    b = review.claim_next(user=bob)

    assert (a.pk, b.pk) == (first.pk, second.pk)
    first.refresh_from_db()
    assert first.claimed_by == alice and first.claimed_until > timezone.now() + timedelta(minutes=4)


def test_of_two_reviewers_who_saw_the_same_free_item_only_the_first_claims_it(agent, alice, bob):
    """The race, step by step: both read item 1 as free; the second conditional UPDATE matches nothing."""
    first, second = add_feedback(agent, 2)
    assert review.try_claim(feedback_id=first.pk, user=alice)
    assert not review.try_claim(feedback_id=first.pk, user=bob)
    assert review.claim_next(user=bob).pk == second.pk
    first.refresh_from_db()
    assert first.claimed_by == alice


def test_reloading_returns_the_item_already_held(agent, alice):
    add_feedback(agent, 2)
    held = review.claim_next(user=alice)
    assert review.claim_next(user=alice).pk == held.pk


def test_a_claim_never_overrides_a_live_lease_of_someone_else(agent, alice, bob):
    (only,) = add_feedback(agent, 1)
    assert review.claim_next(user=alice).pk == only.pk
    assert review.claim_next(user=bob) is None
    with pytest.raises(Conflict, match="being reviewed by alice"):
        review.score_feedback(feedback_id=only.pk, user=bob, score=0.9)


def test_an_expired_lease_is_reclaimable(agent, alice, bob):
    (only,) = add_feedback(agent, 1)
    review.claim_next(user=alice)
    Feedback.objects.filter(pk=only.pk).update(claimed_until=timezone.now() - timedelta(seconds=1))

    assert review.claim_next(user=bob).pk == only.pk
    only.refresh_from_db()
    assert only.claimed_by == bob


def test_skip_releases_the_item_to_others(agent, alice, bob):
    first, second = add_feedback(agent, 2)
    review.claim_next(user=alice)
    review.release_claim(feedback_id=first.pk, user=alice)

    assert review.claim_next(user=bob).pk == first.pk
    assert review.claim_next(user=alice, exclude_ids=[first.pk]).pk == second.pk


def test_claiming_a_new_item_releases_the_previous_one(agent, alice, bob):
    first, second = add_feedback(agent, 2)
    review.claim_next(user=alice)
    review.claim_next(user=alice, exclude_ids=[first.pk])  # e.g. moved on without skipping

    assert review.claim_next(user=bob).pk == first.pk


def test_agent_filter(agent, alice):
    other = Agent.objects.create(name="sales")
    add_feedback(other, 1)
    (mine,) = add_feedback(agent, 1)
    assert review.claim_next(user=alice, agent_name="support").pk == mine.pk


def test_score_records_reviewer_and_time_and_ends_the_claim(agent, alice):
    (item,) = add_feedback(agent, 1)
    review.claim_next(user=alice)
    saved = review.score_feedback(feedback_id=item.pk, user=alice, score=0.8, notes="clear")
    assert (saved.score, saved.notes, saved.reviewer, saved.claimed_by) == (0.8, "clear", alice, None)
    assert timezone.now() - saved.reviewed_at < timedelta(seconds=5)
    with pytest.raises(Conflict, match="already scored"):
        review.score_feedback(feedback_id=item.pk, user=alice, score=0.1)


@pytest.mark.parametrize("bad", [1.5, -0.1, "abc", float("nan")])
def test_score_must_be_between_0_and_1(agent, alice, bad):
    (item,) = add_feedback(agent, 1)
    with pytest.raises(ServiceError, match="between 0 and 1"):
        review.score_feedback(feedback_id=item.pk, user=alice, score=bad)


def test_score_bands_are_the_spec_table():
    assert [(b.key, b.value, b.range_label, b.quality) for b in review.SCORE_BANDS] == [
        ("5", 0.95, "0.9-1.0", "Excellent"),
        ("4", 0.8, "0.7-0.9", "Good"),
        ("3", 0.6, "0.5-0.7", "Mediocre"),
        ("2", 0.4, "0.3-0.5", "Poor"),
        ("1", 0.1, "0.0-0.3", "Very Poor"),
    ]
    assert all(review.band_for(b.value) == b for b in review.SCORE_BANDS)
    assert review.band_for(1.0).quality == "Excellent" and review.band_for(0.7).quality == "Good"


# --- JSON views ------------------------------------------------------------------------------


def post_json(client: Client, url: str, data: dict):
    return client.post(url, data, content_type="application/json")


def test_save_returns_the_next_item_in_the_same_round_trip(agent, alice):
    first, second = add_feedback(agent, 2)
    client = client_for(alice)

    shown = post_json(client, reverse("review:next"), {"agent": "support"}).json()
    assert shown["item"]["id"] == first.pk and shown["item"]["prompt"] == "Question 0"
    assert shown["remaining"] == 2

    answer = post_json(client, reverse("review:score", args=[first.pk]),
                       {"score": 0.95, "notes": "great", "agent": "support"})
    assert answer.status_code == 200
    body = answer.json()
    assert body["saved"] == {"id": first.pk, "score": 0.95, "reviewer": "alice"}
    assert body["item"]["id"] == second.pk and body["remaining"] == 1
    first.refresh_from_db()
    assert (first.score, first.notes, first.reviewer) == (0.95, "great", alice)


def test_skip_view_hides_the_item_for_this_reviewer_only(agent, alice, bob):
    first, second = add_feedback(agent, 2)
    client = client_for(alice)
    post_json(client, reverse("review:next"), {})
    body = post_json(client, reverse("review:skip", args=[first.pk]), {}).json()
    assert body["item"]["id"] == second.pk and body["skipped"] == 1

    assert post_json(client_for(bob), reverse("review:next"), {}).json()["item"]["id"] == first.pk

    # Once alice is done, she can go back to what she skipped (bob's lease is released first).
    post_json(client, reverse("review:score", args=[second.pk]), {"score": 0.4})
    review.release_claim(feedback_id=first.pk, user=User.objects.get(username="bob"))
    empty = post_json(client, reverse("review:next"), {}).json()
    assert empty["item"] is None and empty["skipped"] == 1
    again = post_json(client, reverse("review:next"), {"includeSkipped": True}).json()
    assert again["item"]["id"] == first.pk


def test_score_view_errors_are_json_details(agent, alice, bob):
    (item,) = add_feedback(agent, 1)
    review.claim_next(user=bob)
    client = client_for(alice)
    url = reverse("review:score", args=[item.pk])

    conflict = post_json(client, url, {"score": 0.5})
    assert conflict.status_code == 409 and "bob" in conflict.json()["detail"]
    missing = post_json(client, url, {})
    assert missing.status_code == 400 and "Score is required" in missing.json()["detail"]
    bad = post_json(client, url, {"score": 7})
    assert bad.status_code == 400 and "between 0 and 1" in bad.json()["detail"]
    gone = post_json(client, reverse("review:score", args=[99999]), {"score": 0.5})
    assert gone.status_code == 404
    garbled = client.post(url, "{not json", content_type="application/json")
    assert garbled.status_code == 400 and garbled.json()["detail"] == "Request body is not valid JSON"


def test_json_views_need_the_csrf_token(agent, alice):
    add_feedback(agent, 1)
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    assert post_json(client, reverse("review:next"), {}).status_code == 403


def test_json_views_refuse_get(alice):
    assert client_for(alice).get(reverse("review:next")).status_code == 405


# --- page and permissions ----------------------------------------------------------------------


def test_queue_page_shows_guidelines_and_agents(agent, alice):
    add_feedback(agent, 2)
    page = client_for(alice).get(reverse("review:queue"), {"agent": "support"})
    assert page.status_code == 200
    html = page.content.decode()
    assert "Feedback Scoring Guidelines" in html
    assert "Perfect answer, comprehensive, accurate" in html and "Wrong, misleading, or unhelpful" in html
    assert 'data-agent="support"' in html and "support (2 unscored)" in html
    assert "n3/review.js" in html


@pytest.mark.parametrize("url_name, method, args", [
    ("review:queue", "get", []), ("review:next", "post", []), ("review:score", "post", [1]),
    ("review:skip", "post", [1]),
])
def test_anonymous_users_are_sent_to_the_admin_login(url_name, method, args):
    url = reverse(url_name, args=args)
    response = getattr(Client(), method)(url)
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("admin:login")) and "next=" in response["Location"]


def test_non_staff_users_are_sent_to_the_admin_login(agent):
    user = make_reviewer("outsider")
    user.is_staff = False
    user.save()
    response = client_for(user).get(reverse("review:queue"))
    assert response.status_code == 302 and response["Location"].startswith(reverse("admin:login"))


@pytest.mark.parametrize("url_name, method, args", [
    ("review:queue", "get", []), ("review:next", "post", []), ("review:score", "post", [1]),
    ("review:skip", "post", [1]),
])
def test_staff_without_the_change_permission_get_403(agent, url_name, method, args):
    viewer = make_reviewer("viewer", "view_feedback")
    (item,) = add_feedback(agent, 1)
    response = getattr(client_for(viewer), method)(reverse(url_name, args=args))
    assert response.status_code == 403
    item.refresh_from_db()
    assert item.claimed_by is None and item.score is None


def test_admin_index_links_the_queue_with_counts(agent, alice):
    add_feedback(agent, 3)
    html = client_for(alice).get(reverse("admin:index")).content.decode()
    assert reverse("review:queue") in html and "3 responses awaiting a score" in html
    assert f'{reverse("review:queue")}?agent=support' in html


@pytest.mark.parametrize("typed", ["-0.2", "1.5"])
def test_a_score_out_of_range_in_the_admin_list_is_a_message_on_the_field(agent, alice, typed):
    """Not the database's "Constraint feedback_score_between_0_and_1 is violated": the reviewer's score check."""
    item = add_feedback(agent, 1)[0]
    response = client_for(alice).post(reverse("admin:feedback_feedback_changelist"), {
        "form-TOTAL_FORMS": "1", "form-INITIAL_FORMS": "1", "form-0-id": str(item.pk),
        "form-0-score": typed, "form-0-notes": "", "_save": "Save",
    })
    assert response.status_code == 200
    message = f"Score must be between 0 and 1, got {float(typed)!r}"
    assert response.context["cl"].formset.errors == [{"score": [message]}]
    assert "Constraint" not in response.content.decode()
    item.refresh_from_db()
    assert item.score is None


def test_minus_zero_from_a_reviewer_is_stored_as_zero(agent, alice):
    item = add_feedback(agent, 1)[0]
    assert str(review.score_feedback(feedback_id=item.pk, user=alice, score="-0").score) == "0.0"


def test_the_admin_add_form_refuses_what_the_api_refuses(agent):
    admin = User.objects.create_superuser("root", password="pw")
    form = {"agent": agent.pk, "prompt": "\u200b", "response": "r", "score": "-0", "notes": "", "run_id": "r\x00",
            "policy_version": ""}
    response = client_for(admin).post(reverse("admin:feedback_feedback_add"), form)
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert errors["prompt"] == [
        "Must contain visible text, not only whitespace or invisible characters (such as U+200B)"]
    assert "Null characters" in errors["run_id"][0]
    assert not Feedback.objects.exists()

    response = client_for(admin).post(reverse("admin:feedback_feedback_add"), {**form, "prompt": "q", "run_id": "r"})
    assert response.status_code == 302
    assert str(Feedback.objects.get().score) == "0.0"
