"""End to end in a real headless Chromium: a reviewer logs in and scores three responses from the keyboard.

Playwright cannot download its own browser here, so it drives Debian's Chromium (apt-get install chromium).
Screenshots of the queue and of a trained version's curves go to test-artifacts/.
"""
from datetime import timedelta
from pathlib import Path

import pytest
from django.contrib.auth.models import Permission, User
from django.utils import timezone

from feedback.models import Feedback
from policies.models import Agent, PolicyVersion
from tests.sites import add_steps

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is missing (apt-get install -y chromium)"),
]

RESPONSES = [
    ("How do I reverse a list in Python?",
     "Use slicing or the reverse() method:\n\n    items = [1, 2, 3]\n    items.reverse()      # in place\n"
     "    backwards = items[::-1]  # a reversed copy\n\nreversed(items) gives an iterator without copying."),
    ("What is the capital of Australia?", "Sydney is the capital of Australia."),
    ("Summarise the refund policy.",
     "Refunds are possible within 30 days if the item is unused. " * 6 + "\nShipping costs are not refunded."),
    ("Is water wet?", "It depends on what you mean by wet."),
]


@pytest.fixture
def browser(monkeypatch):
    sync_api = pytest.importorskip("playwright.sync_api")
    # Playwright's sync API keeps an event loop running in this thread; the test's ORM calls are still
    # plain synchronous calls, which Django would otherwise refuse.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run"],
        )
        yield browser
        browser.close()


@pytest.fixture
def reviewer(transactional_db):
    user = User.objects.create_user("rita", password="correct horse battery", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(
        content_type__app_label__in=["feedback", "policies"], codename__startswith="view_",
    ) | Permission.objects.filter(codename="change_feedback"))
    return user


def test_reviewer_scores_three_responses_with_the_keyboard(live_server, browser, reviewer, settings, tmp_path):
    settings.MODELS_DIR = tmp_path
    ARTIFACTS.mkdir(exist_ok=True)
    agent = Agent.objects.create(name="support")
    items = [Feedback.objects.create(agent=agent, prompt=p, response=r) for p, r in RESPONSES]

    page = browser.new_page(viewport={"width": 1400, "height": 950})
    page.goto(f"{live_server.url}/review/?agent=support")
    assert "/admin/login/" in page.url  # anonymous: sent to the admin login first
    page.fill("#id_username", "rita")
    page.fill("#id_password", "correct horse battery")
    page.click("input[type=submit]")

    prompt = page.locator("#n3-prompt")
    prompt.wait_for()
    assert prompt.inner_text() == RESPONSES[0][0]
    page.keyboard.press("4")
    page.keyboard.press("n")
    page.keyboard.type("Correct, could mention sorted() too")
    page.keyboard.press("Escape")
    page.keyboard.press("5")  # changed my mind: excellent
    page.screenshot(path=str(ARTIFACTS / "review-queue.png"), full_page=True)
    page.keyboard.press("s")

    page.wait_for_function("document.getElementById('n3-prompt').textContent.startsWith('What is the capital')")
    page.keyboard.press("1")
    page.keyboard.press("Enter")

    page.wait_for_function("document.getElementById('n3-prompt').textContent.startsWith('Summarise')")
    page.keyboard.press(".")  # an exact score
    page.keyboard.type("73")
    page.keyboard.press("Enter")

    page.wait_for_function("document.getElementById('n3-prompt').textContent.startsWith('Is water wet')")
    assert page.inner_text("#n3-done") == "3"
    assert page.inner_text("#n3-remaining") == "1"
    page.keyboard.press("k")  # skip the last one
    page.locator("#n3-empty").wait_for()

    scores = {f.pk: (f.score, f.reviewer_id, f.notes) for f in Feedback.objects.all()}
    assert scores[items[0].pk] == (0.95, reviewer.pk, "Correct, could mention sorted() too")
    assert scores[items[1].pk] == (0.1, reviewer.pk, "")
    assert scores[items[2].pk] == (0.73, reviewer.pk, "")
    assert scores[items[3].pk] == (None, None, "")
    assert Feedback.objects.get(pk=items[3].pk).claimed_by is None  # skipping released it

    # An engineer's view of a finished run: the curves page.
    version = trained_version(agent)
    log = tmp_path / "support" / "v1" / "training.log"
    log.parent.mkdir(parents=True)
    log.write_text("".join(f"step {s:3d}/60  reward=0.{40 + s // 3:02d}  kl={0.04 * s:.2f}\n" for s in range(1, 61)))
    page.goto(f"{live_server.url}/admin/policies/policyversion/{version.pk}/change/")
    page.locator(".n3-chart").first.wait_for()
    assert page.locator("polyline.n3-line").count() == 3
    page.screenshot(path=str(ARTIFACTS / "version-curves.png"), full_page=True)


def trained_version(agent: Agent) -> PolicyVersion:
    import math

    history = [
        {"step": s, "objective/scores": 0.42 + 0.33 * (1 - math.exp(-s / 18)) + 0.02 * math.sin(s),
         "objective/kl": 0.09 * s + 0.3 * math.sin(s / 3),
         "loss/total": 0.9 * math.exp(-s / 25) + 0.1 + 0.03 * math.cos(s)}
        for s in range(1, 61)
    ]
    now = timezone.now()
    version = PolicyVersion.objects.create(
        agent=agent, number=1, status="trained", step=60, max_steps=60, feedback_count=84,
        config={"base_model": "n3-tiny", "algorithm": "ppo", "learning_rate": 1e-5, "use_lora": True, "max_steps": 60},
        metrics={"objective/scores": history[-1]["objective/scores"], "objective/scores_std": 0.14,
                 "objective/kl": history[-1]["objective/kl"], "loss/total": history[-1]["loss/total"],
                 "reward_model": {"val_mse": 0.0312, "val_mse_baseline": 0.0655, "val_pearson": 0.81,
                                  "val_spearman": 0.78, "train_loss": 0.021, "train_size": 67, "val_size": 17,
                                  "epochs": 3}},
        started_at=now - timedelta(minutes=14, seconds=32), finished_at=now,
    )
    add_steps(version, history)
    return version
