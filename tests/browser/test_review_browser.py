"""The review queue in a real headless Chromium, round 2: going back (previous, undo, "my recent reviews"), two
reviewers sharing items that need two reviews each (two browser contexts, one per reviewer), and the empty queue
when every waiting item was skipped. Screenshots go to test-artifacts/review-*.png.
"""
from pathlib import Path

import pytest
from django.contrib.auth.models import Permission, User

from feedback.models import Feedback, Review
from policies.models import Agent
from tests.browser.test_browser import ARTIFACTS, CHROMIUM, browser  # noqa: F401  (the fixture)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is missing (apt-get install -y chromium)"),
]

PASSWORD = "correct horse battery"
QUESTIONS = [
    ("How do I reverse a list in Python?", "items.reverse() in place, or items[::-1] for a reversed copy."),
    ("What is the capital of Australia?", "Sydney is the capital of Australia."),
    ("Summarise the refund policy.", "Refunds within 30 days if the item is unused; shipping is not refunded."),
    ("Is water wet?", "It depends on what you mean by wet."),
]


def reviewer(username: str) -> User:
    user = User.objects.create_user(username, password=PASSWORD, is_staff=True)
    user.user_permissions.set(Permission.objects.filter(
        content_type__app_label="feedback", codename__in=["view_feedback", "change_feedback"]))
    return user


def open_queue(browser, url: str, username: str):  # noqa: F811  (the fixture's name)
    page = browser.new_context(viewport={"width": 1400, "height": 950}).new_page()
    page.goto(f"{url}/admin/login/?next=/review/%3Fagent%3Dsupport")
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.locator("#n3-item, #n3-empty").first.wait_for()
    return page


def shows(page, prompt: str) -> None:
    page.wait_for_function(
        "(text) => !document.getElementById('n3-item').hidden && "
        "document.getElementById('n3-prompt').textContent === text", arg=prompt)


def test_going_back_previous_undo_and_my_recent_reviews(live_server, browser, transactional_db):  # noqa: F811
    ARTIFACTS.mkdir(exist_ok=True)
    rita = reviewer("rita")
    agent = Agent.objects.create(name="support")
    items = [Feedback.objects.create(agent=agent, prompt=p, response=r) for p, r in QUESTIONS]
    page = open_queue(browser, live_server.url, "rita")

    shows(page, QUESTIONS[0][0])
    assert page.locator("#n3-overlap").is_hidden()  # overlap 1: no "review 1 of N"
    page.keyboard.press("4")
    page.keyboard.press("s")
    shows(page, QUESTIONS[1][0])
    page.keyboard.press("2")
    page.keyboard.press("n")
    page.keyboard.type("wrong city")
    page.keyboard.press("Control+Enter")
    shows(page, QUESTIONS[2][0])

    # Previous: the last item scored, with its score and notes; again: the one before.
    page.keyboard.press("p")
    shows(page, QUESTIONS[1][0])
    assert page.locator("#n3-editing").is_visible()
    assert page.input_value("#n3-score") == "0.4" and page.input_value("#n3-notes") == "wrong city"
    page.keyboard.press("p")
    shows(page, QUESTIONS[0][0])
    assert page.input_value("#n3-score") == "0.8"
    page.keyboard.press("5")
    page.screenshot(path=str(ARTIFACTS / "review-previous.png"), full_page=True)
    page.keyboard.press("s")  # saves the change and returns to the queue
    shows(page, QUESTIONS[2][0])
    assert f"Changed your review of #{items[0].pk} to 0.95" in page.inner_text("#n3-status")
    assert page.locator("#n3-editing").is_hidden()
    assert Feedback.objects.get(pk=items[0].pk).score == 0.95

    # Undo: the last save is removed and its item shown again with what was entered.
    page.keyboard.press("3")
    page.keyboard.press("s")
    shows(page, QUESTIONS[3][0])
    assert Feedback.objects.get(pk=items[2].pk).score == 0.6
    page.keyboard.press("u")
    shows(page, QUESTIONS[2][0])
    assert f"Undone: your score 0.6 of #{items[2].pk} was removed" in page.inner_text("#n3-status")
    assert page.input_value("#n3-score") == "0.6"
    page.screenshot(path=str(ARTIFACTS / "review-undo.png"), full_page=True)
    assert Feedback.objects.get(pk=items[2].pk).score is None
    assert not Review.objects.filter(feedback=items[2]).exists()
    assert page.inner_text("#n3-remaining") == "2"
    page.keyboard.press("1")
    page.keyboard.press("s")
    shows(page, QUESTIONS[3][0])
    assert Feedback.objects.get(pk=items[2].pk).score == 0.1

    # My recent reviews: the latest saved first, each editable in place.
    page.keyboard.press("m")
    page.wait_for_url("**/review/mine?agent=support")
    rows = page.locator("table.n3-mine tbody tr")
    assert rows.count() == 3
    assert "Summarise the refund policy." in rows.nth(0).inner_text()
    row = page.locator(f"#review-{Review.objects.get(feedback=items[1]).pk}")
    row.locator("input[name=score]").fill("0.3")
    row.locator("textarea").fill("wrong city, confidently")
    row.locator("button").click()
    page.wait_for_url("**/review/mine?agent=support")
    assert f"Changed your review of feedback #{items[1].pk} to 0.3." in page.inner_text("ul.messagelist")
    page.screenshot(path=str(ARTIFACTS / "review-mine.png"), full_page=True)
    item = Feedback.objects.get(pk=items[1].pk)
    assert (item.score, item.notes, item.reviewer) == (0.3, "wrong city, confidently", rita)


def test_two_reviewers_share_items_that_need_two_reviews(live_server, browser, transactional_db):  # noqa: F811
    ARTIFACTS.mkdir(exist_ok=True)
    reviewer("alice")
    reviewer("bob")
    agent = Agent.objects.create(name="support", review_overlap=2)
    first, second = [Feedback.objects.create(agent=agent, prompt=p, response=r) for p, r in QUESTIONS[:2]]
    alice = open_queue(browser, live_server.url, "alice")
    shows(alice, QUESTIONS[0][0])
    bob = open_queue(browser, live_server.url, "bob")
    shows(bob, QUESTIONS[1][0])  # the first is alice's while she reads it
    assert alice.inner_text("#n3-overlap").startswith("Review 1 of 2")

    alice.keyboard.press("4")
    alice.keyboard.press("s")
    alice.locator("#n3-empty").wait_for()  # the second is bob's, the first she reviewed
    assert alice.inner_text("#n3-empty-title") == "1 item awaits review, none free for you right now."
    assert alice.inner_text("#n3-empty-lines").splitlines() == [
        "1 item is being reviewed by someone else right now (held for up to 5 minutes).",
        "1 item awaits other reviewers (you reviewed it).",
    ]
    assert alice.inner_text("#n3-remaining") == "1" and alice.inner_text("#n3-reviewed") == "1"
    alice.screenshot(path=str(ARTIFACTS / "review-overlap-waiting.png"), full_page=True)
    assert Feedback.objects.get(pk=first.pk).score is None

    bob.keyboard.press("3")
    bob.keyboard.press("s")
    shows(bob, QUESTIONS[0][0])  # now free, and bob has not reviewed it
    assert bob.inner_text("#n3-overlap").startswith("Review 2 of 2")
    assert bob.input_value("#n3-notes") == ""
    bob.screenshot(path=str(ARTIFACTS / "review-overlap-second.png"), full_page=True)
    bob.keyboard.press("2")
    bob.keyboard.press("s")
    bob.locator("#n3-empty").wait_for()
    assert bob.inner_text("#n3-empty-title") == "Nothing awaiting your review for support."
    assert Feedback.objects.get(pk=first.pk).score == 0.6  # the mean of 0.8 and 0.4

    alice.click("#n3-refresh")
    shows(alice, QUESTIONS[1][0])
    assert alice.inner_text("#n3-overlap").startswith("Review 2 of 2")
    alice.keyboard.press("5")
    alice.keyboard.press("s")
    alice.locator("#n3-empty").wait_for()
    assert Feedback.objects.get(pk=second.pk).score == 0.775  # the mean of 0.6 and 0.95
    assert Review.objects.count() == 4


def test_the_empty_queue_says_every_item_was_skipped_and_brings_them_back(live_server, browser,  # noqa: F811
                                                                          transactional_db):
    ARTIFACTS.mkdir(exist_ok=True)
    reviewer("rita")
    agent = Agent.objects.create(name="support")
    for p, r in QUESTIONS[:3]:
        Feedback.objects.create(agent=agent, prompt=p, response=r)
    page = open_queue(browser, live_server.url, "rita")
    for prompt, _ in QUESTIONS[:3]:
        shows(page, prompt)
        page.keyboard.press("k")
    page.locator("#n3-empty").wait_for()
    assert page.inner_text("#n3-remaining") == "3"
    assert page.inner_text("#n3-empty-title") == "You skipped all 3 items awaiting review."
    page.screenshot(path=str(ARTIFACTS / "review-all-skipped.png"), full_page=True)
    page.click("#n3-review-skipped")
    shows(page, QUESTIONS[0][0])


def test_the_blind_queue_under_a_split_shows_no_version_and_identical_answers_once(
        live_server, browser, transactional_db):  # noqa: F811
    """Issue 21, item 4: served responses of two versions under a traffic split. A reviewer sees neither version
    (a lead does), and the same served answer, stored three times, is one item with its count: one score for all."""
    from policies.models import PolicyVersion

    ARTIFACTS.mkdir(exist_ok=True)
    reviewer("rita")
    lead = reviewer("lena")
    lead.user_permissions.add(Permission.objects.get(codename="change_policyversion"))
    agent = Agent.objects.create(name="support")
    v1, v2 = [PolicyVersion.objects.create(agent=agent, number=n, status="trained") for n in (1, 2)]
    served = [Feedback.objects.create(agent=agent, prompt="Where is my order?", policy_version=v2, run_id=f"c-{i}",
                                      response="It ships **today**; you get a tracking link by email.")
              for i in range(3)]
    other = Feedback.objects.create(agent=agent, prompt="Can I pay by invoice?", response="Yes, for companies.",
                                    policy_version=v1, run_id="c-other")

    page = open_queue(browser, live_server.url, "rita")
    shows(page, "Where is my order?")
    meta = page.inner_text("#n3-meta")
    assert "policy" not in meta and "v2" not in meta and "v1" not in page.inner_text("body")
    assert page.locator("#n3-blind-note").is_visible()
    assert page.inner_text("#n3-identical") == ("This prompt and response are in the queue 3 times (the same answer, "
                                                "stored each time it was served): your score applies to all 3.")
    page.keyboard.press("4")
    page.screenshot(path=str(ARTIFACTS / "review-blind-queue.png"), full_page=True)
    page.keyboard.press("s")
    shows(page, "Can I pay by invoice?")
    assert f"Saved #{served[0].pk} and its 2 identical items = 0.8" in page.inner_text("#n3-status")
    assert [Feedback.objects.get(pk=f.pk).score for f in served] == [0.8, 0.8, 0.8]
    assert page.locator("#n3-identical").is_hidden()
    page.keyboard.press("u")
    shows(page, "Where is my order?")
    assert f"of #{served[0].pk} and its 2 identical items was removed" in page.inner_text("#n3-status")
    assert not Review.objects.exists()
    assert Feedback.objects.get(pk=other.pk).score is None

    lead_page = open_queue(browser, live_server.url, "lena")
    lead_page.locator("#n3-meta").wait_for()
    assert "policy v" in lead_page.inner_text("#n3-meta") and lead_page.locator("#n3-blind-note").count() == 0
