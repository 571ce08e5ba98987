"""The review queue: claim/lease between reviewers, scoring, skipping, and who may use it."""
import json
from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from feedback import review, selectors
from feedback.models import SCORE_BANDS, Feedback, Review, band_for
from n3site.exceptions import Conflict, NotFound, ServiceError
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
    assert [(b.key, b.value, b.range_label, b.quality) for b in SCORE_BANDS] == [
        ("5", 0.95, "0.9-1.0", "Excellent"),
        ("4", 0.8, "0.7-0.9", "Good"),
        ("3", 0.6, "0.5-0.7", "Mediocre"),
        ("2", 0.4, "0.3-0.5", "Poor"),
        ("1", 0.1, "0.0-0.3", "Very Poor"),
    ]
    assert all(band_for(b.value) == b for b in SCORE_BANDS)
    assert band_for(1.0).quality == "Excellent" and band_for(0.7).quality == "Good"


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
    assert body["saved"] == {"id": first.pk, "score": 0.95, "reviewer": "alice", "itemScore": 0.95,
                             "reviewId": Review.objects.get().pk, "reviews": 1, "overlap": 1,
                             "identicalReviewIds": []}
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


def test_the_agent_picker_names_its_count_apart_from_the_reviewers_own(agent, alice, bob):
    agent.review_overlap = 2
    agent.save()
    first, _ = add_feedback(agent, 2)
    review.score_feedback(feedback_id=first.pk, user=User.objects.get(username="bob"), score=0.5)
    html = client_for(bob).get(reverse("review:queue")).content.decode()
    # Both items still need a score, only one needs bob's: the picker's count says it counts every reviewer's.
    assert "support (2 unscored, all reviewers)" in html and "awaiting your review" in html


def test_the_queue_says_a_skip_lasts_until_logout(agent, alice):
    html = client_for(alice).get(reverse("review:queue")).content.decode()
    assert "skips last until you log out" in html.lower()


# --- page and permissions ----------------------------------------------------------------------


def test_queue_page_shows_guidelines_and_agents(agent, alice):
    add_feedback(agent, 2)
    page = client_for(alice).get(reverse("review:queue"), {"agent": "support"})
    assert page.status_code == 200
    html = page.content.decode()
    assert "Feedback Scoring Guidelines" in html
    assert "Perfect answer, comprehensive, accurate" in html and "Wrong, misleading, or unhelpful" in html
    assert 'data-agent="support"' in html and "support (2 unscored, all reviewers)" in html
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


# --- several reviewers per item (review_overlap) ------------------------------------------------


@pytest.fixture
def carol():
    return make_reviewer("carol")


def overlap(agent: Agent, n: int) -> Agent:
    agent.review_overlap = n
    agent.save(update_fields=["review_overlap"])
    return agent


def test_with_overlap_2_an_item_waits_for_two_reviewers_and_gets_their_mean(agent, alice, bob, carol):
    overlap(agent, 2)
    (item,) = add_feedback(agent, 1)

    assert review.claim_next(user=alice).pk == item.pk
    after_one = review.score_feedback(feedback_id=item.pk, user=alice, score=0.8, notes="good")
    assert after_one.score is None and after_one.claimed_by is None  # still in the queue, free for the next
    assert (after_one.reviewer, after_one.notes) == (alice, "good")  # the latest review's
    assert review.claim_next(user=alice) is None  # alice never sees it again

    assert review.claim_next(user=bob).pk == item.pk
    done = review.score_feedback(feedback_id=item.pk, user=bob, score=0.5, notes="vague")
    assert done.score == 0.65 and (done.reviewer, done.notes) == (bob, "vague")
    assert review.claim_next(user=carol) is None  # a third reviewer never sees it
    with pytest.raises(Conflict, match="already has its 2 reviews"):
        review.score_feedback(feedback_id=item.pk, user=carol, score=0.1)
    assert sorted(Review.objects.values_list("reviewer__username", "score")) == [("alice", 0.8), ("bob", 0.5)]


def test_a_reviewer_cannot_review_the_same_item_twice(agent, alice):
    overlap(agent, 3)
    (item,) = add_feedback(agent, 1)
    review.score_feedback(feedback_id=item.pk, user=alice, score=0.8)
    assert not review.try_claim(feedback_id=item.pk, user=alice)
    with pytest.raises(Conflict, match="You already reviewed feedback"):
        review.score_feedback(feedback_id=item.pk, user=alice, score=0.2)


def test_undo_of_the_completing_review_puts_the_item_back_in_the_queue(agent, alice, bob, carol):
    overlap(agent, 2)
    (item,) = add_feedback(agent, 1)
    review.score_feedback(feedback_id=item.pk, user=alice, score=0.8, notes="alice's")
    saved = review.score_feedback(feedback_id=item.pk, user=bob, score=0.4, notes="bob's")
    assert saved.score == 0.6

    back = review.undo_review(review_id=saved.saved_review.pk, user=bob)
    assert back.score is None and (back.reviewer, back.notes) == (alice, "alice's")
    assert review.claim_next(user=carol).pk == item.pk  # needs one more review again
    assert list(Review.objects.values_list("reviewer__username", flat=True)) == ["alice"]


def test_undo_with_overlap_1_returns_the_item_to_the_queue(agent, alice):
    (item,) = add_feedback(agent, 1)
    saved = review.score_feedback(feedback_id=item.pk, user=alice, score=0.9, notes="typo")
    back = review.undo_review(review_id=saved.saved_review.pk, user=alice)
    assert (back.score, back.reviewer, back.reviewed_at) == (None, None, None)
    assert review.claim_next(user=alice).pk == item.pk


def test_only_ones_own_review_can_be_undone_or_edited(agent, alice, bob):
    (item,) = add_feedback(agent, 1)
    mine = review.score_feedback(feedback_id=item.pk, user=alice, score=0.9).saved_review
    with pytest.raises(NotFound, match=f"You have no review {mine.pk}"):
        review.undo_review(review_id=mine.pk, user=bob)
    with pytest.raises(NotFound):
        review.edit_review(review_id=mine.pk, user=bob, score=0.1)
    with pytest.raises(NotFound):
        review.edit_review(review_id=99999, user=alice, score=0.1)
    assert Feedback.objects.get().score == 0.9


def test_editing_a_review_of_a_completed_item_recomputes_its_mean(agent, alice, bob):
    overlap(agent, 2)
    (item,) = add_feedback(agent, 1)
    first = review.score_feedback(feedback_id=item.pk, user=alice, score=0.8).saved_review
    review.score_feedback(feedback_id=item.pk, user=bob, score=0.4)

    changed = review.edit_review(review_id=first.pk, user=alice, score=0.2, notes="on second thought")
    assert changed.score == 0.2 and changed.feedback.score == 0.3
    item.refresh_from_db()
    assert (item.score, item.reviewer, item.notes) == (0.3, alice, "on second thought")


def test_editing_a_review_of_an_item_awaiting_reviews_keeps_it_in_the_queue(agent, alice, bob):
    overlap(agent, 2)
    (item,) = add_feedback(agent, 1)
    first = review.score_feedback(feedback_id=item.pk, user=alice, score=0.8).saved_review
    assert review.edit_review(review_id=first.pk, user=alice, score=0.6).feedback.score is None
    assert review.claim_next(user=bob).pk == item.pk


def test_previous_walks_back_through_the_reviewers_reviews_in_the_order_given(agent, alice, bob):
    items = add_feedback(agent, 3)
    given = [review.score_feedback(feedback_id=f.pk, user=alice, score=0.5).saved_review for f in items]
    review.edit_review(review_id=given[0].pk, user=alice, score=0.7)  # an edit does not reorder the history
    add_feedback(agent, 1)
    review.score_feedback(feedback_id=Feedback.objects.filter(score__isnull=True).get().pk, user=bob, score=0.1)

    walked, before = [], None
    while (mine := selectors.previous_review(user=alice, before=before)) is not None:
        walked.append(mine.feedback_id)
        before = mine.pk
    assert walked == [items[2].pk, items[1].pk, items[0].pk]
    assert [r.feedback_id for r in selectors.recent_reviews(user=alice)] == [items[0].pk, items[2].pk, items[1].pk]


def test_a_leads_score_is_the_items_score_and_their_review(agent, alice, bob):
    overlap(agent, 3)
    first, second = add_feedback(agent, 2)
    review.score_feedback(feedback_id=first.pk, user=alice, score=0.8)

    lead = make_reviewer("lead")
    assert review.set_scores(queryset=Feedback.objects.all(), score=0.3, user=lead) == 2
    assert list(Feedback.objects.order_by("id").values_list("score", "reviewer__username")) == [
        (0.3, "lead"), (0.3, "lead")]
    assert sorted(Review.objects.values_list("feedback_id", "reviewer__username", "score")) == [
        (first.pk, "alice", 0.8), (first.pk, "lead", 0.3), (second.pk, "lead", 0.3)]
    assert review.claim_next(user=bob) is None

    review.set_scores(queryset=Feedback.objects.filter(pk=first.pk), score=0.5, user=lead)  # the lead changes it
    assert Review.objects.get(feedback=first, reviewer=lead).score == 0.5

    assert review.clear_scores(queryset=Feedback.objects.filter(pk=first.pk)) == 1
    first.refresh_from_db()
    assert (first.score, first.reviewer) == (None, None) and not first.reviews.exists()
    assert review.claim_next(user=bob).pk == first.pk


def test_the_last_slot_taken_by_two_reviewers_one_after_the_other(agent, alice, bob, carol):
    """The race, step by step: bob and carol both saw the item free with one of its two reviews; the second to save
    finds the item complete (under the row lock) and gets a Conflict."""
    overlap(agent, 2)
    (item,) = add_feedback(agent, 1)
    review.score_feedback(feedback_id=item.pk, user=alice, score=0.8)
    assert selectors.reviewable_by(user=bob).get() == selectors.reviewable_by(user=carol).get() == item

    review.score_feedback(feedback_id=item.pk, user=bob, score=0.6)
    with pytest.raises(Conflict):
        review.score_feedback(feedback_id=item.pk, user=carol, score=0.1)
    assert Review.objects.count() == 2 and Feedback.objects.get().score == 0.7


def test_patch_with_a_score_is_a_leads_decision_and_null_clears_the_reviews(agent, alice):
    from rest_framework.test import APIClient  # noqa: PLC0415  (only this test speaks to the REST API)

    overlap(agent, 2)
    (item,) = add_feedback(agent, 1, run_id="run-1")
    review.score_feedback(feedback_id=item.pk, user=alice, score=0.8)
    lead = make_reviewer("lead")
    client = APIClient()
    client.force_authenticate(lead)
    url = "/api/policies/feedback/support/run-1"

    answer = client.patch(url, {"score": 0.2}, format="json")
    assert answer.status_code == 200 and answer.json()["score"] == 0.2
    assert sorted(Review.objects.values_list("reviewer__username", "score")) == [("alice", 0.8), ("lead", 0.2)]
    answer = client.patch(url, {"score": None}, format="json")
    assert answer.status_code == 200 and answer.json()["score"] is None
    assert not Review.objects.exists()


def test_the_admin_set_score_action_and_clearing_a_score_in_the_list(agent, alice):
    overlap(agent, 2)
    first, second = add_feedback(agent, 2)
    review.score_feedback(feedback_id=first.pk, user=alice, score=0.8)
    lead = User.objects.create_superuser("lead", password="pw")
    client = client_for(lead)
    changelist = reverse("admin:feedback_feedback_changelist")
    client.post(changelist, {"action": "set_score", "score": "0.4", "_selected_action": [first.pk, second.pk]})
    assert sorted(Review.objects.values_list("feedback_id", "reviewer__username", "score")) == [
        (first.pk, "alice", 0.8), (first.pk, "lead", 0.4), (second.pk, "lead", 0.4)]
    assert set(Feedback.objects.values_list("score", flat=True)) == {0.4}

    page = client.get(reverse("admin:feedback_feedback_change", args=[first.pk])).content.decode()
    assert "2 of 2 reviews" in page and "alice" in page

    client.post(changelist, {
        "form-TOTAL_FORMS": "1", "form-INITIAL_FORMS": "1", "form-0-id": str(first.pk),
        "form-0-score": "", "form-0-notes": "", "_save": "Save",
    }, QUERY_STRING=f"id__exact={first.pk}")
    first.refresh_from_db()
    assert first.score is None and not first.reviews.exists()


# --- going back and the empty state, through the views -----------------------------------------------


def test_views_previous_edit_and_undo(agent, alice):
    first, second, third = add_feedback(agent, 3)
    client = client_for(alice)
    post_json(client, reverse("review:next"), {})
    saved1 = post_json(client, reverse("review:score", args=[first.pk]), {"score": 0.8, "notes": "a"}).json()["saved"]
    saved2 = post_json(client, reverse("review:score", args=[second.pk]), {"score": 0.4}).json()["saved"]

    previous = post_json(client, reverse("review:previous"), {}).json()["item"]
    assert previous["id"] == second.pk and previous["review"]["score"] == 0.4
    earlier = post_json(client, reverse("review:previous"), {"before": previous["review"]["id"]}).json()["item"]
    assert earlier["id"] == first.pk and earlier["review"] == {**earlier["review"], "score": 0.8, "notes": "a"}
    none = post_json(client, reverse("review:previous"), {"before": earlier["review"]["id"]}).json()
    assert none == {"item": None}

    edited = post_json(client, reverse("review:edit", args=[saved1["reviewId"]]), {"score": 0.9, "notes": "b"})
    assert edited.status_code == 200 and edited.json()["saved"]["itemScore"] == 0.9
    # Going back kept the held item: the queue shows it again.
    assert post_json(client, reverse("review:next"), {}).json()["item"]["id"] == third.pk

    undone = post_json(client, reverse("review:undo", args=[saved2["reviewId"]]), {}).json()
    assert undone["undone"] == {"id": second.pk, "reviewId": saved2["reviewId"], "shownAgain": True}
    assert undone["item"]["id"] == second.pk and undone["remaining"] == 2
    second.refresh_from_db()
    assert second.score is None and second.claimed_by == alice
    third.refresh_from_db()
    assert third.claimed_by is None  # one item at a time


def test_views_going_back_refuse_bad_input_with_details(agent, alice, bob):
    (item,) = add_feedback(agent, 1)
    mine = review.score_feedback(feedback_id=item.pk, user=alice, score=0.5).saved_review
    client = client_for(alice)
    bad = post_json(client, reverse("review:previous"), {"before": "x"})
    assert bad.status_code == 400 and bad.json()["detail"] == "before must be a whole number, got 'x'"
    out_of_range = post_json(client, reverse("review:edit", args=[mine.pk]), {"score": 2})
    assert out_of_range.status_code == 400 and "between 0 and 1" in out_of_range.json()["detail"]
    missing = post_json(client, reverse("review:edit", args=[mine.pk]), {"notes": "x"})
    assert missing.status_code == 400 and "Score is required" in missing.json()["detail"]
    not_hers = post_json(client_for(bob), reverse("review:undo", args=[mine.pk]), {})
    assert not_hers.status_code == 404 and not_hers.json()["detail"] == f"You have no review {mine.pk}"
    assert client.get(reverse("review:undo", args=[mine.pk])).status_code == 405


def test_queue_payload_shows_overlap_progress_and_keeps_reviews_independent(agent, alice, bob):
    overlap(agent, 2)
    (item,) = add_feedback(agent, 1, notes="user: thumbs up")
    first = post_json(client_for(alice), reverse("review:next"), {}).json()["item"]
    assert (first["overlap"], first["reviews"], first["notes"]) == (2, 0, "user: thumbs up")
    post_json(client_for(alice), reverse("review:score", args=[item.pk]), {"score": 0.9, "notes": "alice: great"})
    second = post_json(client_for(bob), reverse("review:next"), {}).json()["item"]
    assert (second["id"], second["overlap"], second["reviews"], second["notes"]) == (item.pk, 2, 1, "")


def test_empty_state_when_every_waiting_item_was_skipped(agent, alice):
    items = add_feedback(agent, 3)
    client = client_for(alice)
    post_json(client, reverse("review:next"), {})
    for item in items:
        body = post_json(client, reverse("review:skip", args=[item.pk]), {}).json()
    assert body["item"] is None and body["remaining"] == body["skipped"] == 3
    assert body["empty"] == {"title": "You skipped all 3 items awaiting review.", "lines": []}
    back = post_json(client, reverse("review:next"), {"includeSkipped": True}).json()
    assert back["item"]["id"] == items[0].pk and back["skipped"] == 0


def test_empty_state_names_items_awaiting_others_and_items_held_by_others(agent, alice, bob):
    overlap(agent, 2)
    first, second, third = add_feedback(agent, 3)
    for item in (first, second):
        review.score_feedback(feedback_id=item.pk, user=alice, score=0.5)
    review.claim_next(user=bob, exclude_ids=[first.pk, second.pk])  # bob holds the third
    body = post_json(client_for(alice), reverse("review:next"), {}).json()
    assert body["item"] is None and (body["remaining"], body["held"], body["reviewed"]) == (1, 1, 2)
    assert body["empty"]["title"] == "1 item awaits review, none free for you right now."
    assert body["empty"]["lines"] == [
        "1 item is being reviewed by someone else right now (held for up to 5 minutes).",
        "2 items await other reviewers (you reviewed them).",
    ]
    review.score_feedback(feedback_id=third.pk, user=bob, score=0.5)
    review.score_feedback(feedback_id=third.pk, user=alice, score=0.5)
    body = post_json(client_for(alice), reverse("review:next"), {}).json()
    assert body["empty"]["title"] == "Nothing awaiting your review." and body["remaining"] == 0


def test_my_recent_reviews_render_chats_and_markdown_as_the_queue_does(agent, alice):
    chat = json.dumps([{"role": "user", "content": "Where is the Louvre?"}])
    item = Feedback.objects.create(agent=agent, prompt=chat, response="It is in **Paris**.")
    review.score_feedback(feedback_id=item.pk, user=alice, score=0.8)
    html = client_for(alice).get(reverse("review:mine")).content.decode()
    assert 'class="n3-chat"' in html and "Where is the Louvre?" in html and '&quot;role&quot;' not in html
    assert "<strong>Paris</strong>" in html and "**Paris**" not in html


def test_my_reviews_page_lists_and_edits_reviews(agent, alice):
    overlap(agent, 2)
    first, second = add_feedback(agent, 2)
    mine = review.score_feedback(feedback_id=first.pk, user=alice, score=0.8, notes="fine").saved_review
    client = client_for(alice)
    page = client.get(reverse("review:mine"))
    html = page.content.decode()
    assert page.status_code == 200 and f'id="review-{mine.pk}"' in html and "Question 0" in html
    assert "none yet: 1 of 2 reviews" in html and "Question 1" not in html

    answer = client.post(reverse("review:edit", args=[mine.pk]), {"score": "0.3", "notes": "worse", "agent": ""})
    assert answer.status_code == 302 and answer["Location"] == reverse("review:mine")
    mine.refresh_from_db()
    assert (mine.score, mine.notes) == (0.3, "worse")
    refused = client.post(reverse("review:edit", args=[mine.pk]), {"score": "7"}, follow=True)
    assert f"Review #{mine.pk} not changed: Score must be between 0 and 1" in refused.content.decode()
    assert client.get(reverse("review:queue")).content.decode().count(reverse("review:mine")) == 1


def test_queue_page_shows_the_going_back_keys_and_what_undo_does(agent, alice):
    html = client_for(alice).get(reverse("review:queue")).content.decode()
    for button in ("Previous item <kbd>p</kbd>", "Undo last save <kbd>u</kbd>", "My recent reviews <kbd>m</kbd>"):
        assert button in html
    assert "<strong>Undo</strong> removes the score you saved last" in html
    for route in ("previous", "edit", "undo"):
        assert f'data-{route}-url="/review/' in html


# --- identical items: the same served answer, shown once (issue 21, item 4) -------------------------------------


def served_again(agent: Agent, times: int, prompt: str = "Where is my order?", response: str = "It ships today.",
                 ) -> list[Feedback]:
    """The same answer stored each time it was served."""
    return [Feedback.objects.create(agent=agent, prompt=prompt, response=response, run_id=f"chatcmpl-{prompt}-{i}")
            for i in range(times)]


def test_identical_items_are_shown_once_with_their_count_and_one_score_applies_to_all(agent, alice, bob):
    first, *others = served_again(agent, 12)
    different = add_feedback(agent, 1)[0]
    other_agents = served_again(Agent.objects.create(name="sales"), 1)[0]  # another agent's: not the same item
    held = others[-1]
    review.try_claim(feedback_id=held.pk, user=bob)  # bob is reading one of them: it stays his
    client = client_for(alice)

    shown = post_json(client, reverse("review:next"), {}).json()
    assert shown["item"]["id"] == first.pk and shown["item"]["identical"] == 10  # 12, less bob's and this one

    saved = post_json(client, reverse("review:score", args=[first.pk]), {"score": 0.8, "notes": "fine"}).json()
    assert len(saved["saved"]["identicalReviewIds"]) == 10
    assert saved["item"]["id"] == different.pk  # the next item is not one of the twelve again
    scored = Feedback.objects.filter(pk__in=[first.pk] + [o.pk for o in others[:-1]])
    assert set(scored.values_list("score", "notes", "reviewer")) == {(0.8, "fine", alice.pk)} and len(scored) == 11
    assert Review.objects.filter(reviewer=alice).count() == 11
    for untouched in (held, other_agents, different):
        untouched.refresh_from_db()
        assert untouched.score is None and not untouched.reviews.exists()

    # Going back: one step for the one score, then the item scored before it (none here).
    previous = post_json(client, reverse("review:previous"), {}).json()["item"]
    assert previous["id"] == first.pk
    assert post_json(client, reverse("review:previous"), {"before": previous["review"]["id"]}).json() == \
        {"item": None}

    # Undo takes the score back from all of them.
    undone = post_json(client, reverse("review:undo", args=[saved["saved"]["reviewId"]]),
                       {"also": saved["saved"]["identicalReviewIds"]}).json()
    assert undone["undone"]["shownAgain"] and undone["item"]["id"] == first.pk
    assert not Review.objects.filter(reviewer=alice).exists()
    assert Feedback.objects.filter(score__isnull=False).count() == 0


def test_with_overlap_2_one_score_gives_each_identical_item_one_review(agent, alice, bob):
    agent.review_overlap = 2
    agent.save()
    items = served_again(agent, 3)
    review.score_feedback(feedback_id=items[0].pk, user=alice, score=0.2, identical=True)
    assert [Feedback.objects.get(pk=i.pk).score for i in items] == [None, None, None]  # each awaits a second
    assert review.claim_next(user=alice) is None  # alice reviewed all three
    second = review.claim_next(user=bob)
    assert second.pk == items[0].pk
    review.score_feedback(feedback_id=second.pk, user=bob, score=0.6, identical=True)
    assert [Feedback.objects.get(pk=i.pk).score for i in items] == [0.4, 0.4, 0.4]


def test_the_queue_page_says_the_score_applies_to_identical_items(agent, alice):
    page = client_for(alice).get(reverse("review:queue")).content.decode()
    assert 'id="n3-identical"' in page
