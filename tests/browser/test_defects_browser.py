"""In a real headless Chromium, the defects a new user hit (issue 13, defects 1, 5, 7, 8): the preset form keeps the
operator's base model, the version page while it trains, where / leads and the favicon, and layouts at 1280 px
(the Feedback list without horizontal scrolling, the compare page's sample columns of equal width).

Screenshots go to test-artifacts/ (defects-*.png).
"""
import json
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.utils import timezone

from feedback.models import Feedback
from policies.models import Agent, PolicyVersion
from tests.browser.test_browser import ARTIFACTS, CHROMIUM, browser  # noqa: F401  (the fixture)
from tests.sites import add_steps
from training.files import version_dir
from training.samples import SAMPLES_FILE, sample_prompts

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is missing (apt-get install -y chromium)"),
]

WIDE = {"width": 1280, "height": 800}
LONG_PROMPT = ("My order #48213 arrived with a cracked screen protector and the charger is the wrong plug type for "
               "the UK; I would like to know whether I can get a replacement sent out before the weekend. ") * 2
LONG_RESPONSE = ("I'm sorry to hear that. I have arranged a replacement screen protector and a UK charger, sent by "
                 "express delivery today; you should receive them by Friday. No need to return the originals. ") * 3


@pytest.fixture
def engineer(transactional_db):
    return User.objects.create_superuser("eng", password="correct horse battery")


def log_in(page, url: str) -> None:
    page.goto(f"{url}/admin/login/")
    page.fill("#id_username", "eng")
    page.fill("#id_password", "correct horse battery")
    page.click("input[type=submit]")
    page.wait_for_url(lambda u: "/login/" not in u)


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"defects-{name}.png"), full_page=True)


def no_horizontal_scroll(page) -> tuple[int, int]:
    return page.evaluate("[document.scrollingElement.scrollWidth, document.scrollingElement.clientWidth]")


def test_a_preset_keeps_the_operators_base_model(live_server, browser, engineer, settings, tmp_path):  # noqa: F811
    """Defect 1: Agent -> Train, choose quick_test, Preview: the operator's base model, no "'gpt2' is unavailable"."""
    settings.MODELS_DIR = tmp_path
    settings.N3_DEFAULT_BASE_MODEL = "n3-tiny-random"
    agent = Agent.objects.create(name="support")
    for i in range(12):
        Feedback.objects.create(agent=agent, prompt=f"Question {i}?", response=f"Answer {i}.", score=(i % 10) / 10)
    page = browser.new_page(viewport=WIDE)
    log_in(page, live_server.url)
    page.goto(f"{live_server.url}/admin/policies/agent/{agent.pk}/change/")
    with page.expect_navigation():
        page.get_by_role("link", name="Train").first.click()
    assert page.inner_text("#n3-base-model") == "n3-tiny-random"  # the form says which base model it will use
    page.select_option("#id_preset", "quick_test")
    with page.expect_navigation():
        page.click("input[name=preview]")
    page.locator("#n3-preview").wait_for()
    shot(page, "preset-preview")
    assert page.inner_text("#n3-preview-base-model") == "n3-tiny-random"
    text = page.inner_text("#content")
    assert "unavailable" not in text and "gpt2" not in text
    config = json.loads(page.eval_on_selector("#n3-preview pre.n3-config", "e => e.textContent"))
    assert config["base_model"] == "n3-tiny-random" and config["max_steps"] > 0


def test_slash_leads_to_the_admin_and_the_favicon_answers(live_server, browser, engineer):  # noqa: F811
    """Defect 7: / and "View site" lead somewhere, and /favicon.ico is not a 404."""
    page = browser.new_page(viewport=WIDE)
    page.goto(f"{live_server.url}/")
    assert "/admin/login/" in page.url  # anonymous: the login, which comes back to /
    page.fill("#id_username", "eng")
    page.fill("#id_password", "correct horse battery")
    with page.expect_navigation():
        page.click("input[type=submit]")
    page.wait_for_url(f"{live_server.url}/admin/")
    with page.expect_navigation():
        page.get_by_role("link", name="View site").click()
    assert page.url == f"{live_server.url}/admin/"  # an engineer's site is the admin
    icon = page.request.get(f"{live_server.url}/favicon.ico")
    assert icon.status == 200 and icon.headers["content-type"].startswith("image/svg+xml")
    linked = page.eval_on_selector("link[rel=icon]", "e => e.href")
    assert page.request.get(linked).status == 200
    shot(page, "admin-index")


def test_the_feedback_list_fits_1280_pixels(live_server, browser, engineer, settings, tmp_path):  # noqa: F811
    """Defect 8: agent, reviewer, source, policy version and created are visible without scrolling sideways."""
    settings.MODELS_DIR = tmp_path
    agent = Agent.objects.create(name="customer_support_agent")
    version = PolicyVersion.objects.create(agent=agent, number=12, status="trained")
    for i in range(12):
        Feedback.objects.create(
            agent=agent, prompt=f"{i}: {LONG_PROMPT}", response=LONG_RESPONSE, score=0.8 if i % 2 else None,
            reviewer=engineer if i % 2 else None, policy_version=version if i % 3 else None, source="api",
            notes="Polite and complete; could mention the returns label." if i % 4 == 0 else "",
        )
    page = browser.new_page(viewport=WIDE)
    log_in(page, live_server.url)
    page.goto(f"{live_server.url}/admin/feedback/feedback/")
    page.locator("#result_list").wait_for()
    shot(page, "feedback-list-1280")
    scroll_width, client_width = no_horizontal_scroll(page)
    assert scroll_width <= client_width
    table_scroll, table_width = page.eval_on_selector(".results", "e => [e.scrollWidth, e.clientWidth]")
    assert table_scroll <= table_width  # the list's own box does not scroll sideways either
    for column in ("agent_name", "reviewer", "source", "version", "created"):
        box = page.locator(f"#result_list th.column-{column}").bounding_box()
        assert box and box["x"] + box["width"] <= client_width, column
    title = page.locator("#result_list td.field-response_preview span").first.get_attribute("title")
    assert title == LONG_RESPONSE  # the whole text on hover


def test_the_compare_page_gives_both_versions_the_same_width(live_server, browser, engineer, settings,  # noqa: F811
                                                             tmp_path):
    """Defect 8: the second version's samples are not squeezed to a word per line."""
    settings.MODELS_DIR = tmp_path
    agent = Agent.objects.create(name="support")
    for i in range(4):
        Feedback.objects.create(agent=agent, prompt=f"Question {i}: {LONG_PROMPT}", response="a", score=0.5)
    pair = [PolicyVersion.objects.create(agent=agent, number=n, status="trained") for n in (1, 2)]
    prompts = sample_prompts(agent=agent)
    for version, text in zip(pair, ("Short answer.", LONG_RESPONSE)):
        directory = version_dir(agent.name, version.number)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / SAMPLES_FILE).write_text(json.dumps({"prompts": prompts, "outputs": [text] * len(prompts)}))
    page = browser.new_page(viewport=WIDE)
    log_in(page, live_server.url)
    page.goto(f"{live_server.url}/admin/policies/policyversion/{pair[0].pk}/compare/?other={pair[1].pk}")
    page.locator("table.n3-samples").wait_for()
    shot(page, "compare-samples")
    widths = page.eval_on_selector_all("table.n3-samples thead th", "cells => cells.map(c => c.offsetWidth)")
    assert len(widths) == 3 and abs(widths[1] - widths[2]) <= 2, widths  # v1 and v2: the same width
    assert min(widths) >= 200, widths
    scroll_width, client_width = no_horizontal_scroll(page)
    assert scroll_width <= client_width


def test_the_version_page_while_training(live_server, browser, engineer, settings, tmp_path):  # noqa: F811
    """Defect 5: the badge keeps its case when version.js updates it; the reward model's batches, then steps;
    whole-number step ticks and a reward axis within 0..1."""
    settings.MODELS_DIR = tmp_path
    agent = Agent.objects.create(name="demo_agent")
    version = PolicyVersion.objects.create(agent=agent, number=1, status="queued", max_steps=40,
                                           config={"algorithm": "ppo", "base_model": "n3-tiny"})
    page = browser.new_page(viewport=WIDE)
    log_in(page, live_server.url)
    page.goto(f"{live_server.url}/admin/policies/policyversion/{version.pk}/change/")
    assert page.inner_text("#n3-status-badge") == "Queued"

    now = time.time()
    PolicyVersion.objects.filter(pk=version.pk).update(
        status="running", started_at=timezone.now() - timedelta(seconds=25),
        metrics={"phase": "reward_model", "reward_model_loss": 0.08,
                 "phase_progress": {"step": 12, "total": 30, "at": now, "pace": 0.5, "timed": 10, "epoch": 2}},
    )
    page.wait_for_function("document.getElementById('n3-unit').textContent === 'reward-model batches'")
    assert page.inner_text("#n3-status-badge") == "Running"  # the same case as the server's render
    assert page.inner_text("#n3-step") == "12" and page.inner_text("#n3-max-steps") == "30"
    assert page.inner_text("#n3-phase") == "· epoch 2"
    shot(page, "version-reward-model-phase")

    add_steps(version, [{"step": s, "objective/scores": 0.45 + 0.05 * s, "objective/kl": 0.02 * s,
                         "loss/total": 0.9 / s} for s in (1, 2, 3)])
    PolicyVersion.objects.filter(pk=version.pk).update(
        step=3, metrics={"phase": "policy", "objective/scores": 0.6, "objective/kl": 0.06, "loss/total": 0.3,
                         "phase_progress": {"step": 3, "total": 40, "at": time.time(), "pace": 3.0, "timed": 2}},
    )
    page.wait_for_function("document.getElementById('n3-unit').textContent === 'steps'")
    page.locator("svg.n3-chart").first.wait_for()
    assert page.inner_text("#n3-eta") == "estimating…"  # two steps timed: not yet
    assert page.inner_text("#n3-phase") == "· PPO phase" and page.inner_text("#n3-status-badge") == "Running"
    summary = dict(page.eval_on_selector_all("tr[data-summary]", "rows => rows.map(r => [r.dataset.summary, "
                                                                 "r.querySelector('td').textContent])"))
    assert (summary["status"], summary["steps"], summary["reward-mean"], summary["kl"]) == (
        "Running", "3 / 40", "0.6", "0.06"), summary  # the summary says what the status box says
    ticks = page.eval_on_selector_all("svg.n3-chart text[text-anchor=middle]", "t => t.map(e => e.textContent)")
    assert ticks == ["1", "2", "3"] * 3
    reward_ticks = page.eval_on_selector_all("[data-chart='objective/scores'] svg text[text-anchor=end]",
                                             "t => t.map(e => e.textContent)")
    assert max(float(t) for t in reward_ticks if t.replace(".", "").isdigit()) <= 1.0, reward_ticks
    shot(page, "version-policy-phase")
