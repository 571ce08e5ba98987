"""In a real headless Chromium: the buttons that start server work (the Train page's Preview and Start training, the
compare page's Generate samples) say they are working once pressed, and a second press sends nothing."""
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django_q.models import OrmQ

from feedback.models import Feedback
from policies.models import Agent, PolicyVersion
from tests.browser.test_browser import CHROMIUM, browser  # noqa: F401  (the fixture)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is missing (apt-get install -y chromium)"),
]

# Press the button twice in one go, then read it once the first press's submission has been built.
PRESS_TWICE = """async (selector) => {
    const button = document.querySelector(selector);
    button.form.requestSubmit(button);
    button.form.requestSubmit(button);
    await new Promise((resolve) => setTimeout(resolve, 0));
    return [button.disabled, button.value];
}"""


@pytest.fixture
def engineer(transactional_db):
    return User.objects.create_superuser("eng", password="correct horse battery")


def log_in(page, url: str) -> None:
    page.goto(f"{url}/admin/login/")
    page.fill("#id_username", "eng")
    page.fill("#id_password", "correct horse battery")
    page.click("input[type=submit]")


def posts_to(page, path: str) -> list:
    sent = []
    page.on("request", lambda r: sent.append(r) if r.method == "POST" and path in r.url else None)
    return sent


def test_preview_and_generate_samples_show_they_work_and_submit_once(live_server, browser, engineer, settings,  # noqa: F811
                                                                     tmp_path):
    settings.MODELS_DIR = tmp_path
    agent = Agent.objects.create(name="support")
    for i in range(12):
        Feedback.objects.create(agent=agent, prompt=f"Question {i}?", response=f"Answer {i}.", score=(i % 10) / 10)
    policy = tmp_path / "policy"
    policy.mkdir()
    first = PolicyVersion.objects.create(agent=agent, number=1, status="trained", model_path=str(policy))
    second = PolicyVersion.objects.create(agent=agent, number=2, status="trained", model_path=str(policy))
    page = browser.new_page()
    log_in(page, live_server.url)

    train = f"/admin/policies/agent/{agent.pk}/train/"
    page.goto(f"{live_server.url}{train}")
    page.fill("#id_base_model", "n3-tiny-random")
    sent = posts_to(page, train)
    with page.expect_navigation():
        disabled, label = page.evaluate(PRESS_TWICE, "input[name=preview]")
    assert (disabled, label) == (True, "Estimating…")
    page.locator("#n3-preview").wait_for()
    assert len(sent) == 1 and "preview=" in sent[0].post_data

    with page.expect_navigation():
        disabled, label = page.evaluate(PRESS_TWICE, "input[name=confirm]")
    assert (disabled, label) == (True, "Starting…")
    assert len(sent) == 2 and "confirm=" in sent[1].post_data
    assert PolicyVersion.objects.filter(status="queued").count() == 1  # one training, not two

    compare = f"/admin/policies/policyversion/{first.pk}/compare/"
    page.goto(f"{live_server.url}{compare}?other={second.pk}")
    sent = posts_to(page, compare)
    with page.expect_navigation():
        disabled, label = page.evaluate(PRESS_TWICE, "input[name=generate]")
    assert (disabled, label) == (True, "Queueing…")
    page.locator(".n3-generating").first.wait_for()
    assert len(sent) == 1
    assert page.locator("input[name=generate]").count() == 0  # nothing to press while it generates
    jobs = [task for task in OrmQ.objects.all() if task.func() == "training.tasks.generate_version_samples"]
    assert len(jobs) == 2  # one per version
