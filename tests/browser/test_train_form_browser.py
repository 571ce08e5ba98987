"""In a real headless Chromium (issue 21, item 5): Agent -> Train, pick DPO, start from the active version, promote if
better, Preview: the dry run names the algorithm and the pairs the feedback gives. The screenshot is the test's
(tmp_path/train-form.png)."""
from pathlib import Path

import pytest
from django.contrib.auth.models import User

from feedback.models import Feedback
from policies.models import Agent, PolicyVersion
from tests.browser.test_browser import CHROMIUM, browser  # noqa: F401  (the fixture)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is missing (apt-get install -y chromium)"),
]

TINY = "n3-tiny-random"


@pytest.fixture
def engineer(transactional_db):
    return User.objects.create_superuser("eng", password="correct horse battery")


def test_the_train_form_previews_dpo_with_its_pairs(live_server, browser, engineer, settings, tmp_path):  # noqa: F811
    settings.MODELS_DIR = tmp_path / "models"
    settings.N3_DEFAULT_BASE_MODEL = TINY
    agent = Agent.objects.create(name="support")
    for p in range(10):  # 3 scored responses a prompt: 3 pairs each, 2 prompts held out for the evaluation
        for r, score in enumerate((0.9, 0.5, 0.1)):
            Feedback.objects.create(agent=agent, prompt=f"Question {p}?", response=f"Answer {p}.{r}", score=score)
    v1 = PolicyVersion.objects.create(agent=agent, number=1, status="trained", config={"base_model": TINY})
    agent.active_version = v1
    agent.save()

    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(f"{live_server.url}/admin/login/")
    page.fill("#id_username", "eng")
    page.fill("#id_password", "correct horse battery")
    page.click("input[type=submit]")
    page.wait_for_url(lambda u: "/login/" not in u)
    page.goto(f"{live_server.url}/admin/policies/agent/{agent.pk}/train/")
    page.select_option("#id_algorithm", "dpo")
    page.select_option("#id_init_from", "active")
    page.select_option("#id_promote", "if_better")
    page.fill("#id_max_steps", "20")
    page.fill("#id_extra", '{"dpoPairMargin": 0.3}')  # camelCase, as the API takes it
    with page.expect_navigation():
        page.click("input[name=preview]")
    page.locator("#n3-preview").wait_for()
    page.screenshot(path=str(tmp_path / "train-form.png"), full_page=True)

    assert page.inner_text("#n3-preview-algorithm") == "dpo"
    assert page.inner_text("#n3-preview-preference") == "24"
    assert page.inner_text("#n3-preview-init-from") == "v1"
    assert page.inner_text("#n3-preview-promote") == "if_better"
    assert "24 preference pairs" in page.inner_text("#n3-preview-preference-text")
    assert page.locator(".errornote, .errorlist").count() == 0
    # The form keeps what was chosen, for Start training to send it again.
    assert (page.input_value("#id_algorithm"), page.input_value("#id_init_from")) == ("dpo", "active")

    with page.expect_navigation():
        page.click("input[name=confirm]")
    version = PolicyVersion.objects.get(number=2)
    assert (version.config["algorithm"], version.config["init_from"], version.config["promote"]) == (
        "dpo", "v1", "if_better")
    assert version.config["dpo_pair_margin"] == 0.3
