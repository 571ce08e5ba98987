"""The admin as reviewers and engineers use it: feedback list, agent health, version pages, permissions."""
import json
from datetime import timedelta
from html import unescape

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from feedback.models import Feedback
from policies.models import Agent, PolicyVersion
from tests.sites import add_steps
from tests.users import login, staff

pytestmark = pytest.mark.django_db

CHANGELIST = "admin:feedback_feedback_changelist"




@pytest.fixture
def agent():
    return Agent.objects.create(name="support")


@pytest.fixture
def reviewer():
    return staff("rita", "feedback.view_feedback", "feedback.change_feedback", "feedback.delete_feedback",
                 "policies.view_agent")


@pytest.fixture
def engineer():
    return staff("eng", "policies.view_agent", "policies.view_policyversion", "policies.change_policyversion",
                 "policies.add_policyversion", "feedback.view_feedback")


@pytest.fixture
def scored(agent):
    """One response per band, one unscored, and one from another agent."""
    rows = {score: Feedback.objects.create(agent=agent, prompt=f"q{score}", response=f"a{score}", score=score)
            for score in (0.1, 0.4, 0.6, 0.8, 0.95, 1.0)}
    rows[None] = Feedback.objects.create(agent=agent, prompt="pending question", response="pending answer")
    other = Agent.objects.create(name="sales")
    Feedback.objects.create(agent=other, prompt="other", response="other", score=0.5)
    return rows


def listed_ids(response) -> set[int]:
    return {obj.pk for obj in response.context["cl"].result_list}


# --- feedback list -------------------------------------------------------------------------------


@pytest.mark.parametrize("band, scores", [
    ("5", {0.95, 1.0}), ("4", {0.8}), ("3", {0.6}), ("2", {0.4}), ("1", {0.1}), ("unscored", {None}),
])
def test_score_band_filter(scored, reviewer, band, scores):
    response = login(reviewer).get(reverse(CHANGELIST), {"score_band": band, "agent__id__exact": scored[0.1].agent_id})
    assert response.status_code == 200
    assert listed_ids(response) == {scored[s].pk for s in scores}


def test_other_filters_and_search(scored, reviewer, agent):
    client = login(reviewer)
    url = reverse(CHANGELIST)
    assert len(listed_ids(client.get(url, {"agent__id__exact": agent.pk}))) == 7
    assert listed_ids(client.get(url, {"q": "pending"})) == {scored[None].pk}
    assert len(listed_ids(client.get(url, {"source__exact": "api"}))) == 8
    midnight = timezone.now().replace(hour=0, minute=0, second=0, microsecond=0)
    assert len(listed_ids(client.get(url, {"created_at__gte": midnight.isoformat(" ")}))) == 8


def test_the_list_labels_the_api_source_api_not_api_title_cased(scored, reviewer):
    html = login(reviewer).get(reverse(CHANGELIST)).content.decode()
    assert ">API</td>" in html and ">Api<" not in html


def test_list_shows_import_export_and_queue_links(scored, reviewer):
    html = login(reviewer).get(reverse(CHANGELIST)).content.decode()
    assert "Review queue (1 unscored)" in html
    assert reverse("admin:feedback_feedback_export") + "?format=jsonl" in html
    # Import needs the add permission, which this reviewer lacks.
    assert reverse("admin:feedback_feedback_import") not in html


def test_score_edited_in_the_list_records_the_reviewer(agent, reviewer):
    item = Feedback.objects.create(agent=agent, prompt="q", response="a")
    response = login(reviewer).post(reverse(CHANGELIST), {
        "form-TOTAL_FORMS": "1", "form-INITIAL_FORMS": "1", "form-0-id": str(item.pk),
        "form-0-score": "0.7", "form-0-notes": "fine", "_save": "Save",
    })
    assert response.status_code == 302
    item.refresh_from_db()
    assert (item.score, item.notes, item.reviewer) == (0.7, "fine", reviewer)
    assert item.reviewed_at is not None


def test_list_edit_refuses_a_score_above_1(agent, reviewer):
    item = Feedback.objects.create(agent=agent, prompt="q", response="a")
    response = login(reviewer).post(reverse(CHANGELIST), {
        "form-TOTAL_FORMS": "1", "form-INITIAL_FORMS": "1", "form-0-id": str(item.pk),
        "form-0-score": "1.5", "form-0-notes": "", "_save": "Save",
    })
    assert response.status_code == 200 and response.context["cl"].formset.errors
    item.refresh_from_db()
    assert item.score is None


def run_action(client, action, ids, **extra):
    data = {"action": action, "index": "0", "_selected_action": [str(i) for i in ids], **extra}
    return client.post(reverse(CHANGELIST), data, follow=True)


def test_bulk_set_score(scored, reviewer):
    ids = [scored[None].pk, scored[0.1].pk]
    response = run_action(login(reviewer), "set_score", ids, score="0.6")
    assert "Set score 0.6 on 2 feedback" in response.content.decode()
    for item in Feedback.objects.filter(pk__in=ids):
        assert (item.score, item.reviewer) == (0.6, reviewer)


@pytest.mark.parametrize("score, message", [
    ("", "Enter a score between 0 and 1 in the box beside the action."),
    ("2", "Score must be between 0 and 1, got &#x27;2&#x27;"),
    ("x", "Score must be a number between 0 and 1, got &#x27;x&#x27;"),
])
def test_bulk_set_score_needs_a_valid_score(scored, reviewer, score, message):
    response = run_action(login(reviewer), "set_score", [scored[None].pk], score=score)
    assert "No score set: " + message in response.content.decode()
    assert Feedback.objects.get(pk=scored[None].pk).score is None


def test_bulk_clear_score_puts_items_back_in_the_queue(scored, reviewer):
    run_action(login(reviewer), "clear_score", [scored[0.8].pk])
    item = Feedback.objects.get(pk=scored[0.8].pk)
    assert (item.score, item.reviewer, item.reviewed_at) == (None, None, None)


def test_bulk_delete_asks_for_confirmation(scored, reviewer):
    client = login(reviewer)
    ids = [scored[0.1].pk, scored[0.4].pk]
    confirm = client.post(reverse(CHANGELIST), {"action": "delete_selected", "_selected_action": ids})
    assert confirm.status_code == 200 and "Are you sure" in confirm.content.decode()
    assert Feedback.objects.filter(pk__in=ids).count() == 2
    client.post(reverse(CHANGELIST), {"action": "delete_selected", "_selected_action": ids, "post": "yes"})
    assert not Feedback.objects.filter(pk__in=ids).exists()


def test_view_only_staff_cannot_change_scores(scored):
    viewer = staff("val", "feedback.view_feedback")
    client = login(viewer)
    assert client.get(reverse(CHANGELIST)).status_code == 200
    run_action(client, "set_score", [scored[None].pk], score="0.9")
    assert Feedback.objects.get(pk=scored[None].pk).score is None


# --- agent page ----------------------------------------------------------------------------------


def test_agent_page_histogram_counts_and_warnings(agent, engineer):
    for score in (0.5, 0.5, 0.5):
        Feedback.objects.create(agent=agent, prompt="q", response="a", score=score)
    Feedback.objects.create(agent=agent, prompt="q", response="a")
    html = login(engineer).get(reverse("admin:policies_agent_change", args=[agent.pk])).content.decode()
    assert '<svg class="n3-histogram"' in html
    assert "0.5–0.6: 3 responses (Mediocre)" in html  # the bar's tooltip
    assert "0.0–0.1: 0 responses (Very Poor)" in html
    assert "Insufficient feedback: 3 samples (minimum 10 required)" in html
    assert "All feedback scores are equal (0.5)" in html
    assert '<strong>3</strong><span>scored</span>' in html
    assert "Review queue (1)" in html


def test_agent_page_without_warnings_when_feedback_is_healthy(agent, engineer):
    for i in range(60):
        Feedback.objects.create(agent=agent, prompt=f"q{i}", response="a", score=(i % 10) / 10 + 0.05)
    html = login(engineer).get(reverse("admin:policies_agent_change", args=[agent.pk])).content.decode()
    assert 'class="n3-warnings"' not in html
    assert html.count('class="n3-hist-') == 10


def test_agent_page_versions_table(agent, engineer):
    PolicyVersion.objects.create(agent=agent, number=1, status="trained", step=50, max_steps=50,
                                 metrics={"objective/scores": 0.71, "objective/kl": 2.5})
    PolicyVersion.objects.create(agent=agent, number=2, status="running", step=10, max_steps=50)
    html = login(engineer).get(reverse("admin:policies_agent_change", args=[agent.pk])).content.decode()
    assert "0.710" in html and "2.500" in html and "10 / 50" in html
    assert html.index(">v2<") < html.index(">v1<")  # newest first
    # the change lists' columns: the agent's latest trained reward, each version's reward and KL
    agents = login(engineer).get(reverse("admin:policies_agent_changelist")).content.decode()
    assert '<td class="field-latest_reward">0.710</td>' in agents
    versions = login(engineer).get(reverse("admin:policies_policyversion_changelist")).content.decode()
    assert '<td class="field-reward_mean">0.710</td>' in versions and '<td class="field-kl">2.500</td>' in versions


def test_agent_list_counts(agent, engineer):
    Feedback.objects.create(agent=agent, prompt="q", response="a")
    Feedback.objects.create(agent=agent, prompt="q", response="a", score=0.3)
    html = login(engineer).get(reverse("admin:policies_agent_changelist")).content.decode()
    assert f'{reverse("review:queue")}?agent=support">1 — review' in html


# --- policy version page ---------------------------------------------------------------------------


def realistic_history(steps: int = 40) -> list[dict]:
    """A run's steps under the training core's names (TrainingStep rows)."""
    return [
        {"step": s, "objective/scores": 0.35 + 0.4 * s / steps, "objective/kl": 0.05 * s,
         "loss/total": 1.0 / (1 + 0.2 * s)}
        for s in range(1, steps + 1)
    ]


def version_with_steps(agent: Agent, number: int, steps: int, **fields) -> PolicyVersion:
    version = PolicyVersion.objects.create(agent=agent, number=number, **fields)
    add_steps(version, realistic_history(steps))
    return version


@pytest.fixture
def trained(agent, tmp_path, settings):
    settings.MODELS_DIR = tmp_path
    last = realistic_history()[-1]
    return version_with_steps(
        agent, 1, 40, status="trained", step=40, max_steps=40, feedback_count=60,
        config={"base_model": "n3-tiny", "learning_rate": 1e-5, "use_lora": True, "max_steps": 40},
        metrics={"objective/scores": last["objective/scores"], "objective/scores_std": 0.12,
                 "objective/kl": last["objective/kl"], "loss/total": last["loss/total"],
                 "reward_model": {"val_mse": 0.031, "val_pearson": 0.82, "val_spearman": 0.79}},
        started_at=timezone.now() - timedelta(minutes=12), finished_at=timezone.now(),
    )


def test_version_page_draws_curves_and_reward_model_metrics(trained, engineer):
    html = login(engineer).get(reverse("admin:policies_policyversion_change", args=[trained.pk])).content.decode()
    assert html.count('<polyline class="n3-line') == 3
    for title in ("Reward mean", "KL divergence", "Loss"):
        assert f"<title>{title} per step</title>" in html
    assert "target 0.7" not in html and "Target &gt; 0.7" not in html  # each version's reward is on its own scale
    assert "Validation MSE" in html and "0.031" in html and "Pearson r (validation)" in html
    assert "Retrain with this config" in html
    assert "Cancel training" not in html  # only while running
    assert 'name="_save"' not in html  # versions are read-only


def test_version_page_shows_the_log_tail(trained, engineer, settings):
    from training.files import version_dir

    log = version_dir("support", 1) / "training.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("".join(f"step {i}\n" for i in range(200)))
    html = login(engineer).get(reverse("admin:policies_policyversion_change", args=[trained.pk])).content.decode()
    assert "step 199" in html and "step 120" in html and "step 119\n" not in html


def test_version_page_shows_the_reward_models_figures_once_fitted_before_the_run_ends(agent, engineer, settings,
                                                                                     tmp_path):
    from training.files import version_dir

    settings.MODELS_DIR = tmp_path
    version = version_with_steps(agent, 3, 5, status="running", step=5, max_steps=40,
                                 started_at=timezone.now() - timedelta(minutes=2), metrics={"phase": "policy"})
    url = reverse("admin:policies_policyversion_change", args=[version.pk])
    assert "Not trained yet." in login(engineer).get(url).content.decode()
    log = version_dir("support", 3) / "training.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(
        "2026-12-07 21:52:16,752 INFO reward model (20-fold cross-validation): val_mse=0.0312 "
        "(predict-the-mean 0.0710), pearson=0.812, spearman=0.790, best epoch 3 of 4\n"
        "2026-12-07 21:52:20,001 INFO ppo step 5/40 reward=0.5\n"
    )
    panel = login(engineer).get(url).content.decode().split('id="n3-reward-model"')[1].split("</div>")[0]
    assert "Not trained yet." not in panel
    assert "Validation MSE" in panel and "0.0312" in panel and "20-fold cross-validation" in panel
    assert "0.812" in panel


def test_progress_json_while_running(agent, engineer):
    version = version_with_steps(
        agent, 3, 10, status="running", step=10, max_steps=40,
        started_at=timezone.now() - timedelta(seconds=100), metrics={"objective/kl": 0.5},
    )
    data = login(engineer).get(reverse("admin:policies_policyversion_progress", args=[version.pk])).json()
    assert (data["status"], data["step"], data["maxSteps"], data["percent"]) == ("running", 10, 40, 25.0)
    assert 99 <= data["elapsedSeconds"] <= 105 and 295 <= data["etaSeconds"] <= 320
    assert data["historyLength"] == 10 and data["kl"] == 0.5 and data["active"] is True
    page = login(engineer).get(reverse("admin:policies_policyversion_change", args=[version.pk])).content.decode()
    assert "Cancel training" in page and 'data-active="1"' in page
    fragment = login(engineer).get(reverse("admin:policies_policyversion_charts", args=[version.pk]))
    assert fragment.content.decode().count("<polyline") == 3


def test_compare_page_side_by_side(trained, engineer):
    worse = version_with_steps(
        trained.agent, 2, 20, status="trained", step=40, max_steps=40,
        metrics={"objective/scores": 0.5, "objective/kl": 9.0},
    )
    url = reverse("admin:policies_policyversion_compare", args=[trained.pk])
    html = login(engineer).get(url, {"other": worse.pk}).content.decode()
    assert html.count('<polyline class="n3-line') == 6
    # Each reward comes from the version's own reward model: shown, never ranked. The lower KL still is.
    assert ">0.75<" in html and ">0.5<" in html and 'n3-better">0.75<' not in html
    assert 'n3-better">2<' in html and html.count("n3-better") == 1
    assert "Generate samples" in html


# --- evaluation and warnings -----------------------------------------------------------------------------
POOR_FIT = ("Reward model is no better than predicting the mean score (cross-validated MSE 0.16 vs 0.15): "
            "its scores carry little of the reviewers' judgement.")
# metrics.evaluation as training.jobs.progress stores it (the core's names, held-out prompts counted, at most 8
# samples).
EVALUATION = {
    "better": True, "baseline": "base model n3-tiny", "scored_by": "this version's reward model", "n": 64,
    "heldout_prompts": 12, "split_seed": 42, "win_rate": 0.66, "win_rate_ci": [0.55, 0.76], "reward_mean": 0.71,
    "baseline_reward_mean": 0.52, "reward_diff": 0.19, "reward_diff_ci": [0.10, 0.28], "kl": 3.1,
    "response_length": 9.2, "baseline_response_length": 11.0,
    "samples": [{"prompt": "Where is the Louvre?", "response": "In Paris.", "baseline_response": "Museum museum.",
                 "score": 0.8, "baseline_score": 0.4}],
}
SENTENCE = ("Better than its start: yes — win rate 66 % (95 % interval 55–76 %) on 64 held-out samples, "
            "reward 0.52 → 0.71, KL 3.1")
NOT_COMPARABLE = ("Each version's reward is measured by its own reward model, so rewards are not comparable across "
                  "versions; compare their evaluations against their starting models instead.")


@pytest.fixture
def evaluated(trained):
    trained.metrics = {**trained.metrics, "evaluation": EVALUATION, "warnings": [POOR_FIT, "Only 12 prompts."]}
    trained.save()
    return trained


def page(user: User, name: str, *args, **params) -> str:
    return unescape(login(user).get(reverse(name, args=args), params).content.decode())


def test_version_page_shows_the_evaluation_its_samples_and_a_warning_badge(evaluated, engineer):
    html = page(engineer, "admin:policies_policyversion_change", evaluated.pk)
    assert SENTENCE in html
    assert "Started from" in html and "base model n3-tiny" in html and "+0.19 (95 % interval 0.10 to 0.28)" in html
    assert "11.0 → 9.2 tokens" in html and "12 (split seed 42)" in html
    samples = html[html.index('id="n3-evaluation-samples"'):]
    assert "Where is the Louvre?" in samples and "Museum museum." in samples and "0.40" in samples
    assert 'class="n3-warning-badge"' in html and ">2 warnings</span>" in html
    assert POOR_FIT in html and 'id="n3-warnings"' in html


def test_a_reward_difference_that_rounds_to_zero_shows_no_minus_sign(agent):
    from training.admin.views import evaluation_view

    version = PolicyVersion(agent=agent, number=1, metrics={
        "evaluation": {**EVALUATION, "reward_diff": -0.001, "reward_diff_ci": [-0.004, 0.003]}})
    rows = dict(evaluation_view(version)["rows"])
    assert rows["Reward difference"] == "0.00 (95 % interval 0.00 to 0.00)"
    version.metrics["evaluation"].update(reward_diff=-0.05, reward_diff_ci=[-0.12, 0.02])
    assert dict(evaluation_view(version)["rows"])["Reward difference"] == "-0.05 (95 % interval -0.12 to 0.02)"


def test_version_page_says_when_a_version_was_not_evaluated(trained, engineer):
    html = page(engineer, "admin:policies_policyversion_change", trained.pk)
    assert "trained before n3 evaluated its versions" in html and "n3-warning-badge" not in html
    trained.metrics = {**trained.metrics, "evaluation": {"skipped": "fewer than 2 distinct prompts"}}
    trained.save()
    html = page(engineer, "admin:policies_policyversion_change", trained.pk)
    assert "Not evaluated: fewer than 2 distinct prompts" in html and "Better than its start" not in html


def test_warning_badges_on_the_agent_page_and_the_change_list(evaluated, engineer):
    PolicyVersion.objects.create(agent=evaluated.agent, number=2, status="trained", metrics={"warnings": [POOR_FIT]})
    agent_page = page(engineer, "admin:policies_agent_change", evaluated.agent.pk)
    assert ">2 warnings</span>" in agent_page and ">1 warning</span>" in agent_page
    assert f'title="{POOR_FIT}' in agent_page  # the badge lists them
    change_list = page(engineer, "admin:policies_policyversion_changelist")
    assert ">2 warnings</span>" in change_list and ">1 warning</span>" in change_list
    assert "n3/n3.css" in change_list


def test_compare_page_shows_evaluations_instead_of_ranking_rewards(evaluated, engineer):
    other = version_with_steps(
        evaluated.agent, 2, 20, status="trained", step=40, max_steps=40,
        metrics={"objective/scores": 0.9, "objective/kl": 9.0,
                 "evaluation": {**EVALUATION, "better": False, "win_rate": 0.52, "win_rate_ci": [0.41, 0.63]}},
    )
    html = page(engineer, "admin:policies_policyversion_compare", evaluated.pk, other=other.pk)
    assert NOT_COMPARABLE in html
    assert 'n3-better">0.9<' not in html and 'n3-better">0.75<' not in html
    assert SENTENCE in html
    assert "Better than its start: no — win rate 52 % (95 % interval 41–63 %)" in html


def test_compare_samples_guard_missing_model_files(trained, engineer):
    other = PolicyVersion.objects.create(agent=trained.agent, number=2, status="failed")
    Feedback.objects.create(agent=trained.agent, prompt="What is 2+2?", response="4", score=0.9)
    url = reverse("admin:policies_policyversion_compare", args=[trained.pk])
    html = login(engineer).post(f"{url}?other={other.pk}", {"generate": "1"}, follow=True).content.decode()
    assert "No policy files at (no path recorded)" in html


# --- permissions -----------------------------------------------------------------------------------


def test_reviewers_cannot_reach_the_user_admin_but_superusers_can(reviewer):
    assert login(reviewer).get(reverse("admin:auth_user_changelist")).status_code == 403
    boss = User.objects.create_superuser("boss", password="pw")
    assert login(boss).get(reverse("admin:auth_user_changelist")).status_code == 200


def test_version_views_need_the_view_permission(trained, reviewer):
    client = login(reviewer)
    for name in ("progress", "charts", "change"):
        assert client.get(reverse(f"admin:policies_policyversion_{name}", args=[trained.pk])).status_code == 403
    assert client.get(reverse("admin:policies_policyversion_compare", args=[trained.pk]),
                      {"other": trained.pk}).status_code == 403


def test_anonymous_admin_pages_redirect_to_login(trained):
    response = Client().get(reverse("admin:policies_policyversion_progress", args=[trained.pk]))
    assert response.status_code == 302 and response["Location"].startswith(reverse("admin:login"))


# --- training from the admin --------------------------------------------------------------------------
# Real dry runs and real queueing (a django-q2 task row; no worker runs here) on the built-in tiny model.
TINY = "n3-tiny-random"


def seed(agent: Agent, scored: int) -> None:
    for i in range(scored):
        Feedback.objects.create(
            agent=agent, prompt=f"Question {i}?", response=f"Answer {i}.", score=(i % 10) / 10 + 0.05
        )


def train_url(agent: Agent) -> str:
    return reverse("admin:policies_agent_train", args=[agent.pk])


def test_train_form_previews_a_dry_run_then_queues_on_confirm(agent, engineer):
    from django_q.models import OrmQ

    seed(agent, 12)
    client = login(engineer)
    assert "quick_test" in client.get(train_url(agent)).content.decode()
    form = {"preset": "quick_test", "base_model": TINY, "max_steps": "20", "learning_rate": "", "batch_size": "4",
            "use_lora": "unknown", "extra": '{"mini_batch_size": 2}'}

    preview = client.post(train_url(agent), {**form, "preview": "1"})
    html = preview.content.decode()
    assert preview.status_code == 200 and 'id="n3-preview"' in html
    assert "<strong>12</strong><span>scored feedback</span>" in html
    assert "<strong>20</strong><span>steps</span>" in html
    config = json.loads(preview.context["preview"]["config_json"])
    assert (config["base_model"], config["learning_rate"], config["batch_size"]) == (TINY, 1e-4, 4)  # preset's rate
    assert "&quot;mini_batch_size&quot;: 2" in html
    assert not PolicyVersion.objects.exists()

    started = client.post(train_url(agent), {**form, "confirm": "1"})
    version = PolicyVersion.objects.get()
    assert started.status_code == 302
    assert started["Location"] == reverse("admin:policies_policyversion_change", args=[version.pk])
    assert (version.status, version.max_steps, version.config["mini_batch_size"], version.created_by) == (
        "queued", 20, 2, engineer)
    # One training job (besides the dry run's timing measurement, when this machine had none cached).
    assert [q.args() for q in OrmQ.objects.all() if q.func() == "training.tasks.run_policy_version"] == [(version.pk,)]


def test_train_form_shows_why_it_cannot_train(agent, engineer):
    seed(agent, 3)
    client = login(engineer)
    base = {"preset": "", "base_model": TINY, "use_lora": "unknown"}
    html = client.post(train_url(agent), {**base, "preview": "1"}).content.decode()
    assert "Insufficient feedback: 3 samples (minimum 10 required)" in html
    html = client.post(train_url(agent), {**base, "extra": "{oops", "preview": "1"}).content.decode()
    assert "Not valid JSON" in html
    seed(agent, 10)
    html = client.post(train_url(agent), {**base, "extra": '{"max_stepz": 3}', "confirm": "1"}).content.decode()
    assert "Unknown config field(s): max_stepz" in html
    assert not PolicyVersion.objects.exists()


def test_retrain_fills_the_form_with_the_versions_config(agent, engineer):
    old = PolicyVersion.objects.create(agent=agent, number=1, status="trained",
                                       config={"base_model": TINY, "max_steps": 7, "not_a_field": 1})
    form = login(engineer).get(train_url(agent), {"from_version": old.pk}).context["form"]
    assert '"max_steps": 7' in form.initial["extra"] and "not_a_field" not in form.initial["extra"]


def test_training_needs_the_add_version_permission(agent, reviewer):
    assert login(reviewer).get(train_url(agent)).status_code == 403


def test_train_now_action_uses_the_agents_default_config(agent, engineer):
    agent.default_training_config = {"base_model": TINY, "max_steps": 5}
    agent.save()
    seed(agent, 10)
    starved = Agent.objects.create(name="starved")
    response = login(engineer).post(reverse("admin:policies_agent_changelist"), {
        "action": "train_now", "index": "0", "_selected_action": [agent.pk, starved.pk]}, follow=True)
    html = response.content.decode()
    version = PolicyVersion.objects.get()
    assert (version.agent, version.max_steps, version.config["base_model"]) == (agent, 5, TINY)
    assert "Agent support: <a" in html and "v1</a> queued" in html
    assert "Agent starved: not started: Insufficient feedback: 0 samples (minimum 10 required)" in html


def test_cancel_button(agent, engineer):
    running = PolicyVersion.objects.create(agent=agent, number=1, status="running")
    done = PolicyVersion.objects.create(agent=agent, number=2, status="trained")
    client = login(engineer)
    client.post(reverse("admin:policies_policyversion_cancel", args=[running.pk]))
    running.refresh_from_db()
    assert running.cancel_requested and running.status == "running"  # stops at its next step
    page = client.post(reverse("admin:policies_policyversion_cancel", args=[done.pk]), follow=True).content.decode()
    assert "Could not cancel support v2: support v2 is already trained" in page
    assert client.get(reverse("admin:policies_policyversion_cancel", args=[done.pk])).status_code == 405


def test_cancel_needs_the_change_permission(agent):
    viewer = staff("viewer", "policies.view_policyversion")
    running = PolicyVersion.objects.create(agent=agent, number=1, status="running")
    assert login(viewer).post(reverse("admin:policies_policyversion_cancel", args=[running.pk])).status_code == 403
    running.refresh_from_db()
    assert not running.cancel_requested


@pytest.mark.slow


def test_compare_generates_greedy_samples_in_the_worker_while_the_page_polls(trained, engineer, settings, tmp_path):
    """POST queues one job per version (never twice while pending); the page says "generating" and its status
    JSON is pending; the worker's job (run here, its real child process) writes the samples the page then shows."""
    from django_q.models import OrmQ

    from n3_server.rlhf.base_models import resolve_base_model
    from tests.sites import tmp_models_dir
    from training import tasks

    settings.MODELS_DIR = tmp_models_dir(tmp_path)
    policy = resolve_base_model(TINY, models_dir=settings.MODELS_DIR)  # a plain HF model directory
    trained.model_path = policy
    trained.save()
    other = PolicyVersion.objects.create(agent=trained.agent, number=2, status="trained", model_path=policy)
    for prompt in ("What is 2+2?", "Name a colour.", "What is 2+2?", "Say hello."):
        Feedback.objects.create(agent=trained.agent, prompt=prompt, response="...", score=0.5)
    client = login(engineer)
    url = reverse("admin:policies_policyversion_compare", args=[trained.pk])

    assert client.post(f"{url}?other={other.pk}", {"generate": "1"}).status_code == 302
    client.post(f"{url}?other={other.pk}", {"generate": "1"})  # a second click: nothing more queued
    jobs = [task for task in OrmQ.objects.all() if task.func() == "training.tasks.generate_version_samples"]
    assert sorted(task.args()[0] for task in jobs) == sorted([trained.pk, other.pk])
    page = client.get(url, {"other": other.pk})
    assert 'data-pending="1"' in page.content.decode() and "generating…" in page.content.decode()
    assert client.get(url, {"other": other.pk, "samples": "status"}).json() == {"pending": True}

    for task in jobs:
        tasks.generate_version_samples(task.args()[0])

    assert client.get(url, {"other": other.pk, "samples": "status"}).json() == {"pending": False}
    rows = client.get(url, {"other": other.pk}).context["samples"]["rows"]
    assert [row["prompt"] for row in rows] == ["Say hello.", "What is 2+2?", "Name a colour."]  # latest, distinct
    for row in rows:
        first, second = row["outputs"]
        assert first and first == second  # same weights, greedy decoding: the same text


def test_feedback_added_and_edited_by_hand(agent):
    boss = User.objects.create_superuser("boss", password="pw")
    client = login(boss)
    response = client.post(reverse("admin:feedback_feedback_add"), {
        "agent": agent.pk, "prompt": "Typed in", "response": "By hand", "score": "0.9", "notes": "", "run_id": "",
    })
    assert response.status_code == 302
    item = Feedback.objects.get()
    assert (item.source, item.score, item.reviewer) == ("admin", 0.9, boss)
    page = client.get(reverse("admin:feedback_feedback_change", args=[item.pk])).content.decode()
    assert 'name="prompt"' not in page and "Typed in" in page  # what was sent stays as sent
    client.post(reverse("admin:feedback_feedback_change", args=[item.pk]), {"score": "", "notes": "unsure"})
    item.refresh_from_db()
    assert (item.score, item.reviewer, item.notes) == (None, None, "unsure")
