"""The admin's Train form (issue 21, item 5): algorithm, start (init_from) and promotion chosen on the form, the JSON
box in either spelling, the service's refusals beside the field they name, and a preview that says what KTO/DPO
train on. Real database, real dry runs and real queueing (a django-q2 task row; no worker runs here) on the built-in
tiny model."""
import json

import pytest
from django.urls import reverse

from feedback.models import Feedback
from policies.models import Agent, PolicyVersion
from tests.users import login, staff

pytestmark = pytest.mark.django_db

TINY = "n3-tiny-random"


@pytest.fixture
def engineer():
    return staff("eng", "policies.view_agent", "policies.view_policyversion", "policies.change_policyversion",
                 "policies.add_policyversion", "feedback.view_feedback")


@pytest.fixture
def agent(settings):
    settings.N3_DEFAULT_BASE_MODEL = TINY
    agent = Agent.objects.create(name="support")
    # 10 prompts x 3 responses scored 0.9 / 0.5 / 0.1: 3 DPO pairs a prompt; 2 prompts are held out for the evaluation.
    for p in range(10):
        for r, score in enumerate((0.9, 0.5, 0.1)):
            Feedback.objects.create(agent=agent, prompt=f"Question {p}?", response=f"Answer {p}.{r}", score=score)
    return agent


@pytest.fixture
def trained(agent):
    """v1, trained from the tiny model and active."""
    v1 = PolicyVersion.objects.create(agent=agent, number=1, status="trained", config={"base_model": TINY})
    agent.active_version = v1
    agent.save()
    return v1


def train_url(agent: Agent) -> str:
    return reverse("admin:policies_agent_train", args=[agent.pk])


def post(client, agent, action="preview", **fields):
    form = {"preset": "", "base_model": "", "use_lora": "unknown", "max_steps": "5", "extra": "", **fields}
    return client.post(train_url(agent), {**form, action: "1"})


def test_the_form_offers_every_algorithm_the_trained_versions_and_the_promote_choices(agent, trained, engineer):
    PolicyVersion.objects.create(agent=agent, number=2, status="failed")
    form = login(engineer).get(train_url(agent)).context["form"]
    choices = {name: [value for value, _ in form.fields[name].widget.choices] for name in
               ("algorithm", "init_from", "promote")}
    assert choices == {
        "algorithm": ["", "ppo", "rloo", "grpo", "kto", "dpo", "best_of_n"],
        "init_from": ["", "base", "active", "v1"],  # v2 failed: not a start
        "promote": ["", "never", "if_better", "always"],
    }
    assert "camelCase" in form.fields["extra"].help_text and "snake_case" in form.fields["extra"].help_text


def test_submitting_algorithm_init_from_and_promote_creates_a_version_with_those_settings(agent, trained, engineer):
    response = post(login(engineer), agent, "confirm", algorithm="rloo", init_from="v1", promote="if_better")
    version = PolicyVersion.objects.get(number=2)
    assert response.status_code == 302
    assert response["Location"] == reverse("admin:policies_policyversion_change", args=[version.pk])
    config = version.config
    assert (version.status, config["algorithm"], config["init_from"], config["promote"]) == (
        "queued", "rloo", "v1", "if_better")
    assert config["base_model"] == TINY  # v1's family


def test_active_as_the_start_is_stored_as_the_active_versions_name(agent, trained, engineer):
    post(login(engineer), agent, "confirm", init_from="active")
    assert PolicyVersion.objects.get(number=2).config["init_from"] == "v1"


def test_the_fields_win_over_the_json_box(agent, engineer):
    post(login(engineer), agent, "confirm", algorithm="grpo", extra='{"algorithm": "rloo", "promote": "always"}')
    config = PolicyVersion.objects.get().config
    assert (config["algorithm"], config["promote"]) == ("grpo", "always")


@pytest.mark.parametrize("extra", [
    '{"max_steps": 7, "init_kl_coef": 0.5, "reward_model_config": {"num_epochs": 2}}',
    '{"maxSteps": 7, "initKlCoef": 0.5, "rewardModelConfig": {"numEpochs": 2}}',
    '{"maxSteps": 7, "init_kl_coef": 0.5, "rewardModelConfig": {"num_epochs": 2}}',
])
def test_camel_case_and_snake_case_overrides_both_reach_the_run(agent, engineer, extra):
    response = post(login(engineer), agent, "confirm", max_steps="", extra=extra)
    assert response.status_code == 302
    config = PolicyVersion.objects.get().config
    assert (config["max_steps"], config["init_kl_coef"], config["reward_model_config"]["num_epochs"]) == (7, 0.5, 2)


@pytest.mark.parametrize("extra, named", [
    ('{"max_steps": 5, "maxSteps": 6}', "max_steps and maxSteps"),
    ('{"rewardModelConfig": {"numEpochs": 2, "num_epochs": 3}}', "rewardModelConfig.numEpochs and "
                                                                 "rewardModelConfig.num_epochs"),
])
def test_two_spellings_of_one_field_with_different_values_are_a_form_error_naming_both(agent, engineer, extra, named):
    response = post(login(engineer), agent, "confirm", extra=extra)
    assert response.status_code == 200
    [error] = response.context["form"].errors["extra"]
    assert named in error and "same field with different values" in error
    assert not PolicyVersion.objects.exists()


def test_two_spellings_with_one_value_are_one_field(agent, engineer):
    post(login(engineer), agent, "confirm", max_steps="", extra='{"max_steps": 6, "maxSteps": 6}')
    assert PolicyVersion.objects.get().config["max_steps"] == 6


@pytest.mark.parametrize("fields, field, words", [
    ({"algorithm": "sft"}, "algorithm", "algorithm: must be one of ppo, rloo, grpo, kto, dpo, best_of_n, got 'sft'"),
    ({"init_from": "v9"}, "init_from", "init_from: names v9, which agent support does not have"),
    ({"init_from": "active"}, "init_from", "init_from: is 'active', but agent support has no active version"),
    ({"promote": "sometimes"}, "promote", "promote: must be one of never, if_better, always, got 'sometimes'"),
    ({"extra": '{"learningRate": -1}'}, "extra", "learningRate: must be a positive number, got -1"),
    ({"extra": '{"rewardModelConfig": {"cvFolds": 1}}'}, "extra", "rewardModelConfig.cvFolds: must be at least 2"),
    ({"algorithm": "rloo", "extra": '{"vfCoef": 0.2}'}, "extra", "vfCoef: not used by algorithm 'rloo' (PPO only)"),
])
@pytest.mark.parametrize("action", ["preview", "confirm"])
def test_a_bad_value_is_a_form_error_beside_the_field_it_names(agent, engineer, fields, field, words, action):
    response = post(login(engineer), agent, action, **fields)
    assert response.status_code == 200
    errors = response.context["form"].errors
    assert list(errors) == [field] and words in errors[field][0]
    assert words in response.content.decode().replace("&#x27;", "'")
    assert not PolicyVersion.objects.exists()


def test_the_preview_shows_the_algorithm_and_the_pairs_dpo_trains_on(agent, engineer):
    response = post(login(engineer), agent, algorithm="dpo")
    html = response.content.decode()
    assert response.status_code == 200 and 'id="n3-preview"' in html
    assert '<strong id="n3-preview-algorithm">dpo</strong><span>algorithm</span>' in html
    assert '<strong id="n3-preview-preference">24</strong><span>preference pairs</span>' in html
    assert ("DPO: 24 preference pairs (responses to the same prompt whose scores differ by at least 0.2); the feedback "
            "of 2 held-out prompts is set aside for the evaluation.") in html
    assert json.loads(response.context["preview"]["config_json"])["algorithm"] == "dpo"
    assert not PolicyVersion.objects.exists()


def test_the_preview_counts_ktos_examples_by_class(agent, engineer):
    html = post(login(engineer), agent, extra='{"algorithm": "kto"}').content.decode()
    assert '<strong id="n3-preview-preference">16</strong><span>KTO examples</span>' in html
    assert "8 desirable (score &gt;= 0.6), 8 undesirable (&lt;= 0.4), 8 in between left out" in html


def test_a_preview_of_ppo_shows_no_pair_count(agent, trained, engineer):
    html = post(login(engineer), agent, init_from="active", promote="always").content.decode()
    assert '<strong id="n3-preview-algorithm">ppo</strong>' in html and "n3-preview-preference" not in html
    assert '<strong id="n3-preview-init-from">v1</strong>' in html
    assert '<strong id="n3-preview-promote">always</strong>' in html


def test_dpo_on_feedback_without_pairs_is_refused_with_the_count(agent, engineer):
    Feedback.objects.filter(score__lt=0.9).delete()
    for i in range(10):
        Feedback.objects.create(agent=agent, prompt=f"Other {i}?", response="Sure.", score=0.9)
    response = post(login(engineer), agent, algorithm="dpo")
    assert "DPO needs at least 4 preference pairs" in response.content.decode()
    assert 'id="n3-preview"' not in response.content.decode()


def test_retrain_puts_the_algorithm_start_and_promotion_in_their_selects(agent, trained, engineer):
    old = PolicyVersion.objects.create(
        agent=agent, number=2, status="trained",
        config={"base_model": TINY, "algorithm": "dpo", "init_from": "v1", "promote": "if_better", "max_steps": 9},
    )
    form = login(engineer).get(train_url(agent), {"from_version": old.pk}).context["form"]
    assert {k: form.initial[k] for k in ("algorithm", "init_from", "promote")} == {
        "algorithm": "dpo", "init_from": "v1", "promote": "if_better"}
    assert json.loads(form.initial["extra"]) == {"base_model": TINY, "max_steps": 9}
