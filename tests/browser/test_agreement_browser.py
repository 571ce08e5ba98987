"""In a real headless Chromium (Debian's, as tests/browser/test_browser.py drives it): two reviewers' reviews seeded, a
lead sees the alpha computed by hand on the Agent page, settles the one disagreement, and looks at reviewer progress;
prompts and responses rendered (Markdown, chat) with nothing in them run. Screenshots go to test-artifacts/."""
import json
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

CHAT = json.dumps([
    {"role": "system", "content": "You are a helpful Python tutor."},
    {"role": "user", "content": "How do I reverse a list?"},
])
MARKDOWN = (
    "Two ways:\n\n1. **In place**: `items.reverse()`\n2. **A copy**: slicing\n\n```python\nitems = [1, 2, 3]\n"
    "backwards = items[::-1]\n```\n\nSee [the docs](https://docs.python.org/3/tutorial/datastructures.html)."
    " <img src=x onerror=\"alert('xss')\"> [click](javascript:alert('xss'))"
)


@pytest.fixture
def lead(transactional_db):
    user = User.objects.create_user("lena", password="correct horse battery", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(
        content_type__app_label__in=["feedback", "policies"], codename__startswith="view_",
    ) | Permission.objects.filter(codename="change_feedback"))
    return user


def seed() -> tuple[Agent, Feedback]:
    """alice and bob, three items: (0, 0), (0.5, 1), (1, 1). Alpha by hand
    (tests/feedback/test_agreement.py's tiny example): D_o = 1/12, D_e = 14.5/30, alpha = 24/29 = 0.828. The middle
    item spreads 0.5: the one disagreement."""
    agent = Agent.objects.create(name="tutor", review_overlap=2)
    alice = User.objects.create_user("alice", is_staff=True)
    bob = User.objects.create_user("bob", is_staff=True)
    disputed = None
    for i, (a, b) in enumerate([(0.0, 0.0), (0.5, 1.0), (1.0, 1.0)]):
        item = Feedback.objects.create(
            agent=agent, prompt=CHAT if i == 1 else f"Question {i}", response=MARKDOWN if i == 1 else f"Answer {i}",
            score=(a + b) / 2, reviewer=bob,
        )
        Review.objects.create(feedback=item, reviewer=alice, score=a, notes="too terse" if i == 1 else "")
        Review.objects.create(feedback=item, reviewer=bob, score=b, notes="clear and correct" if i == 1 else "")
        disputed = item if i == 1 else disputed
    return agent, disputed


def test_lead_sees_alpha_and_settles_a_disagreement(live_server, browser, lead):  # noqa: F811
    ARTIFACTS.mkdir(exist_ok=True)
    agent, disputed = seed()
    dialogs = []
    page = browser.new_page(viewport={"width": 1400, "height": 950})
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))

    page.goto(f"{live_server.url}/admin/policies/agent/{agent.pk}/change/")
    page.fill("#id_username", "lena")
    page.fill("#id_password", "correct horse battery")
    page.click("input[type=submit]")
    page.locator("#n3-agreement-panel").wait_for()
    assert page.inner_text("#n3-alpha") == "0.828"
    assert page.locator("#n3-agreement-pairs tbody tr").inner_text().split("\t")[:3] == ["alice & bob", "0.828", "3"]
    page.locator("#n3-agreement-panel").screenshot(path=str(ARTIFACTS / "agent-agreement.png"))

    page.click("#n3-agreement-panel >> text=Disagreements")
    card = page.locator(f"#n3-item-{disputed.pk}")
    card.wait_for()
    assert page.locator(".n3-disagreement").count() == 1
    assert card.locator(".n3-spread").inner_text() == "0.50"
    # The prompt is a conversation, the response Markdown with its code block; the HTML in it is text.
    assert card.locator(".n3-chat-role").all_inner_texts() == ["SYSTEM", "USER"]
    assert card.locator(".n3-response pre code").inner_text().startswith("items = [1, 2, 3]")
    assert card.locator(".n3-response a").count() == 1  # the docs link; the javascript: one is text
    assert "<img src=x" in card.locator(".n3-response").inner_text()
    assert [row.split("\t")[:3] for row in card.locator(".n3-reviews tbody tr").all_inner_texts()] == [
        ["alice", "0.5", "too terse"], ["bob", "1", "clear and correct"]]
    page.screenshot(path=str(ARTIFACTS / "disagreements.png"), full_page=True)

    card.locator("input[name=score]").fill("0.8")
    card.locator("input[name=notes]").fill("Correct; a little terse")
    card.locator("button[type=submit]").click()
    page.locator(".messagelist").wait_for()
    assert f"Feedback #{disputed.pk} settled at 0.8" in page.inner_text(".messagelist")
    assert page.locator(".n3-disagreement").count() == 0
    page.screenshot(path=str(ARTIFACTS / "disagreements-settled.png"), full_page=True)
    disputed.refresh_from_db()
    assert (disputed.score, disputed.reviewer) == (0.8, lead)
    assert disputed.notes == "Settled by lena at 0.8 (reviews: alice 0.5, bob 1). Correct; a little terse"
    assert Review.objects.filter(feedback=disputed).count() == 2

    page.goto(f"{live_server.url}/review/disagreements/?settled=1")
    assert "settled at 0.8 by lena" in page.locator(f"#n3-item-{disputed.pk} .n3-settled").inner_text()

    page.goto(f"{live_server.url}/review/progress/")
    rows = page.locator("#n3-progress-tutor tbody tr").all_inner_texts()
    assert [r.split("\t")[:5] for r in rows] == [
        ["alice", "3", "3", "0", "0.828 reliable"], ["bob", "3", "3", "0", "0.828 reliable"],
        ["lena (you)", "0", "0", "0", "—"]]
    page.screenshot(path=str(ARTIFACTS / "reviewer-progress.png"), full_page=True)

    # The queue renders the same way: an unscored chat prompt with a Markdown answer.
    Feedback.objects.create(agent=agent, prompt=CHAT, response=MARKDOWN)
    page.goto(f"{live_server.url}/review/?agent=tutor")
    page.locator("#n3-response pre code").wait_for()
    assert page.locator("#n3-prompt .n3-chat-message").count() == 2
    assert page.locator("#n3-response img").count() == 0
    page.screenshot(path=str(ARTIFACTS / "review-queue-rendered.png"), full_page=True)
    page.keyboard.press("4")  # the keys still work on rendered text
    page.keyboard.press("s")
    page.locator("#n3-empty").wait_for()
    assert Review.objects.filter(reviewer=lead).count() == 1
    assert dialogs == []  # nothing in the responses ran
