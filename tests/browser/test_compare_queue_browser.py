"""In a real headless Chromium: a lead starts a blind comparison on the compare page, sees "generating…" until the
worker's responses are stored, opens the queue, votes left, right and tie from the keyboard without ever seeing
which version wrote which response (and is never asked about the pair whose responses are identical), goes back to
the last pair and undoes a vote, and finds the tally on the compare page. Screenshots in test-artifacts/."""
from pathlib import Path

import pytest
from django.contrib.auth.models import Permission, User
from django.urls import reverse

from feedback import comparisons
from feedback.models import Comparison, Feedback
from policies.models import Agent, PolicyVersion
from tests.browser.test_browser import ARTIFACTS, CHROMIUM, browser  # noqa: F401  (the fixture)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is missing (apt-get install -y chromium)"),
]

PROMPTS = [
    "How do I reverse a list in Python?",
    "What is the capital of Australia?",
    "Write a haiku about autumn.",
    "Say hello.",
]
# (A's response, B's response): B is the better one each time, so the votes below are "B, A, tie".
RESPONSES = [
    ("Use a loop.", "Use slicing or `reverse()`:\n\n```python\nitems.reverse()      # in place\n"
                    "backwards = items[::-1]  # a copy\n```"),
    ("Canberra is the capital of Australia.", "Sydney."),
    ("Leaves fall, red and gold", "Crisp leaves drift and fall"),
    ("Hello!", "Hello!"),  # identical: a tie nobody is asked about
]


@pytest.fixture
def lead(transactional_db):
    user = User.objects.create_user("lena", password="correct horse battery", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(
        content_type__app_label__in=["feedback", "policies"], codename__startswith="view_",
    ) | Permission.objects.filter(codename__in=["change_feedback", "change_policyversion"]))
    return user


def test_blind_comparison_from_start_to_tally_by_keyboard(live_server, browser, lead, settings, tmp_path):  # noqa: F811
    settings.MODELS_DIR = tmp_path
    ARTIFACTS.mkdir(exist_ok=True)
    agent = Agent.objects.create(name="support")
    versions = []
    for number in (1, 2):
        policy = tmp_path / f"v{number}" / "policy"
        policy.mkdir(parents=True)
        versions.append(PolicyVersion.objects.create(agent=agent, number=number, status="trained",
                                                     model_path=str(policy)))
    v1, v2 = versions
    for prompt in reversed(PROMPTS):  # the newest first in the comparison
        Feedback.objects.create(agent=agent, prompt=prompt, response="...")

    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(f"{live_server.url}/admin/login/")
    page.fill("#id_username", "lena")
    page.fill("#id_password", "correct horse battery")
    page.click("input[type=submit]")
    compare_url = f"{live_server.url}{reverse('admin:policies_policyversion_compare', args=[v2.pk])}?other={v1.pk}"
    page.goto(compare_url)
    start = page.locator("#n3-blind-start")
    assert start.input_value() == "Start blind comparison (4 prompts)"
    start.click()
    page.locator("#n3-blind-generating").wait_for()
    assert "generating…" in page.locator("#n3-blind-generating").inner_text()
    comparison = Comparison.objects.get()
    assert [i.prompt for i in comparison.items.order_by("position")] == PROMPTS

    # The worker's part (its real run is tests/feedback/test_compare_queue.py's slow test): the page notices by itself.
    comparisons.set_responses(comparison_id=comparison.pk, responses_a=[a for a, _ in RESPONSES],
                              responses_b=[b for _, b in RESPONSES])
    queue_link = page.locator("#n3-blind-queue")
    queue_link.wait_for(timeout=15_000)
    assert page.locator("#n3-blind-result").inner_text() == "No pair judged yet."
    queue_link.click()

    keys = {"b": None, "a": None, "tie": "t"}
    for position, wanted in enumerate(["b", "a", "tie"]):
        page.locator("#n3-vote-form").wait_for()
        assert page.locator("#n3-prompt").inner_text() == PROMPTS[position]
        html = page.content()
        assert "v1" not in page.inner_text("body") and "v2" not in page.inner_text("body")
        left = page.locator("#n3-left").inner_text()
        a_text = RESPONSES[position][0]
        a_on_left = a_text in left
        assert a_on_left == comparison.items.get(position=position).a_on_left
        if position == 0:
            assert "<pre>" in html and "items.reverse()" in page.locator("#n3-left, #n3-right").all_inner_texts()[
                0 if not a_on_left else 1]  # B's Markdown code block rendered
            page.screenshot(path=str(ARTIFACTS / "compare_queue.png"), full_page=True)
        if wanted == "tie":
            key = keys["tie"]
        else:  # the side that shows the wanted version: "1"/"ArrowLeft" for left, "2"/"ArrowRight" for right
            on_left = a_on_left if wanted == "a" else not a_on_left
            key = ("1" if on_left else "ArrowRight") if position == 0 else ("ArrowLeft" if on_left else "2")
        with page.expect_navigation():
            page.keyboard.press(key)

    assert "All 3 pairs are judged" in page.locator("#n3-compare-empty").inner_text()
    # Going back: p reopens the last pair judged with the vote marked, Esc returns, u undoes the latest vote.
    with page.expect_navigation():
        page.keyboard.press("p")
    assert page.locator("#n3-prompt").inner_text() == PROMPTS[2]
    assert page.locator("#n3-my-vote").inner_text() == "a tie"
    page.screenshot(path=str(ARTIFACTS / "compare_queue_previous.png"), full_page=True)
    with page.expect_navigation():
        page.keyboard.press("Escape")
    with page.expect_navigation():
        page.keyboard.press("u")
    assert "Undone: your vote on pair 3 was removed" in page.inner_text("body")
    assert page.locator("#n3-prompt").inner_text() == PROMPTS[2]
    with page.expect_navigation():
        page.keyboard.press("t")
    assert "All 3 pairs are judged" in page.locator("#n3-compare-empty").inner_text()
    assert page.locator("#n3-identical").inner_text() == "1 pair with identical responses not asked"
    assert [(i.choice, i.identical) for i in comparison.items.order_by("position")] == [
        ("b", False), ("a", False), ("tie", False), ("tie", True)]

    page.goto(compare_url)
    result = page.locator("#n3-blind-result").inner_text()
    assert result == ("Win rate of v2 over v1: 50 % (95 % interval 13–87 %) on 3 judged pairs: "
                      "no evidence either way yet")
    cells = page.locator("#n3-blind-tally tbody td").all_inner_texts()
    assert cells == ["1", "1", "1", "3 of 3", "0", "1"]
    assert page.locator("#n3-blind-informative").inner_text() == (
        "3 informative pairs (responses that differ) of 4 prompts answered; the 1 with identical responses is a tie "
        "recorded without a vote and left out of the win rate. 4 were asked for: no more prompts that neither "
        "version trained on.")
    page.locator("#n3-blind-comparison").screenshot(path=str(ARTIFACTS / "compare_blind_panel.png"))
    page.screenshot(path=str(ARTIFACTS / "compare_page_blind.png"), full_page=True)
