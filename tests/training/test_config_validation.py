"""The training configuration is validated when it is requested: per algorithm, against the base model's positions
and against the operator's training time limit, each refusal naming the field as the client wrote it.

Issue 10: fields the chosen algorithm does not read were silently ignored. Issue 11 item 8: configs the API
accepted (202) and the run then failed on (IndexError past the model's positions, torch's seed range, an overflow
blamed on the learning rate, a 4.7-million-minute run behind a 6 h timeout). Issue 13 item 1: a preset replaced
the operator's base model with the hub's gpt2, so every preset failed on a machine without it.
"""
import json
import re
from pathlib import Path

import huggingface_hub
import pytest
from django.test import override_settings
from django_q.models import OrmQ

from feedback import services as feedback_services
from n3_server.rlhf import ConfigError, RLHFTrainer, TrainingConfig, TrainingEstimate
from n3_server.rlhf.config import ALGORITHMS, FIELD_ALGORITHMS, PRESETS, algorithms_reading, check_fields_used
from n3_server.rlhf.context import check_fits_context, model_positions
from n3_server.rlhf.layout import BUILTIN_CONTEXT
from policies.models import Agent, PolicyVersion
from training import services

MODEL = "n3-tiny-random"
CORE = Path(__file__).resolve().parents[2] / "n3_server" / "rlhf"


def config(**fields) -> TrainingConfig:
    return TrainingConfig(base_model=MODEL, **fields)


def seed_feedback(agent: str = "my_agent", n: int = 12) -> None:
    feedback_services.record_feedback_batch(agent_name=agent, records=[
        {"prompt": f"Question {i}?", "response": f"Answer {i}.", "score": round((i % 10) / 10 + 0.05, 2)}
        for i in range(n)
    ])


def train(api, body: dict, agent: str = "my_agent"):
    return api.post(f"/api/policies/train_policy/{agent}", {"baseModel": MODEL, **body}, format="json")


# --- bounds in TrainingConfig.validate (issue 11 item 8) ----------------------------------------------------------


@pytest.mark.parametrize("field, value, message", [
    ("seed", -1, "seed must be at least 0, got -1"),  # was: ValueError from torch when the run started
    ("seed", 2**32, "seed must be at most 4294967295"),
    ("temperature", 1e-300, "temperature must be at least 0.01"),
    ("init_kl_coef", 1e308, "init_kl_coef must be at most 100"),
    ("vf_coef", 1e308, "vf_coef must be at most 100"),
    ("missing_eos_penalty", 1e308, "missing_eos_penalty must be at most 100"),
    ("learning_rate", float("nan"), "learning_rate must be a finite number"),
    ("init_kl_coef", float("inf"), "init_kl_coef must be a finite number"),
])
def test_values_no_run_can_use_are_refused_naming_the_field(field, value, message):
    with pytest.raises(ConfigError, match=re.escape(message)) as raised:
        config(**{field: value})
    assert list(raised.value.errors) == [field]


def test_a_nested_fields_error_names_its_path():
    with pytest.raises(ConfigError, match="reward_model_config.num_epochs must be a positive number") as raised:
        config(reward_model_config={"num_epochs": 0})
    assert list(raised.value.errors) == ["reward_model_config.num_epochs"]


def test_the_bounds_leave_real_values_alone():
    low = config(seed=0, temperature=0.7, init_kl_coef=0.05, vf_coef=0.5, missing_eos_penalty=1.0)
    high = config(seed=2**32 - 1, temperature=1.3, init_kl_coef=20, learning_rate=5e-4)
    # accepted as given: nothing clamped or rounded on the way in
    assert (low.seed, low.temperature, low.init_kl_coef, low.vf_coef, low.missing_eos_penalty) == (
        0, 0.7, 0.05, 0.5, 1.0)
    assert (high.seed, high.temperature, high.init_kl_coef, high.learning_rate) == (2**32 - 1, 1.3, 20, 5e-4)
    for name in PRESETS:
        preset = TrainingConfig.from_preset(name)
        preset.validate()
        assert {k: getattr(preset, k) for k in PRESETS[name] if k != "reward_model_config"} == {
            k: v for k, v in PRESETS[name].items() if k != "reward_model_config"}


# --- which algorithm reads which field (issue 10) -----------------------------------------------------------------


def test_a_field_the_algorithm_does_not_read_is_refused_with_the_algorithms_that_do():
    with pytest.raises(ConfigError) as raised:
        check_fields_used("rloo", {"vf_coef": "", "kto_desirable_threshold": "", "init_kl_coef": "", "cliprange": ""})
    assert raised.value.errors == {
        "vf_coef": ["not used by algorithm 'rloo' (PPO only)"],
        "kto_desirable_threshold": ["not used by algorithm 'rloo' (KTO only)"],
    }  # init_kl_coef is RLOO's beta and cliprange its epsilon: both read
    with pytest.raises(ConfigError, match=r"cliprange: not used by algorithm 'dpo' \(PPO, RLOO and GRPO only\)"):
        check_fields_used("dpo", {"cliprange": ""})


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_shared_fields_are_accepted_for_every_algorithm(algorithm):
    shared = [name for name in TrainingConfig.field_names() if name not in FIELD_ALGORITHMS]
    assert {"learning_rate", "max_steps", "init_kl_coef", "temperature", "reward_model_config"} <= set(shared)
    check_fields_used(algorithm, dict.fromkeys(shared, ""))


def _reads(module: str, field: str) -> bool:
    return re.search(rf"config\.{field}\b", (CORE / module).read_text()) is not None


def test_the_table_says_what_the_code_reads():
    """A field listed for some algorithms only is read by their modules and by no module every run goes through."""
    modules = {"ppo": "ppo.py", "rloo": "trl_algorithms.py", "grpo": "trl_algorithms.py", "kto": "trl_preference.py",
               "dpo": "trl_preference.py", "best_of_n": "best_of_n.py"}
    every_run = ("trainer.py", "evaluation.py", "data.py", "reward_model.py")
    for field, readers in FIELD_ALGORITHMS.items():
        for module in every_run:
            assert not _reads(module, field), (field, module)
        for algorithm in ALGORITHMS:
            if algorithm not in readers and modules[algorithm] not in {modules[r] for r in readers}:
                assert not _reads(modules[algorithm], field), (field, algorithm)
        readers_code = "".join((CORE / m).read_text() for m in {modules[r] for r in readers} | {"preference_data.py"})
        assert re.search(rf"\b{field}\b", readers_code), field
    assert algorithms_reading("learning_rate") == ALGORITHMS


# --- against the model ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fields, named", [
    ({"max_prompt_length": 32768}, ["max_prompt_length", "max_new_tokens"]),  # was: IndexError in the run
    ({"max_new_tokens": 8192}, ["max_prompt_length", "max_new_tokens"]),
    ({"max_prompt_length": 500, "max_new_tokens": 13}, ["max_prompt_length", "max_new_tokens"]),
    ({"reward_model_config": {"max_length": 4096}}, ["reward_model_config.max_length"]),
])
def test_sequences_longer_than_the_models_positions_are_refused(fields, named):
    with pytest.raises(ConfigError, match="positions of base model 'n3-tiny-random'") as raised:
        check_fits_context(config(**fields))
    assert sorted(raised.value.errors) == sorted(named)
    check_fits_context(config(max_prompt_length=500, max_new_tokens=12))  # 512 exactly fits


def test_positions_are_read_from_config_json_without_loading_a_model(tmp_path, monkeypatch):
    local = tmp_path / "llama-like"
    local.mkdir()
    (local / "config.json").write_text(json.dumps({"model_type": "llama", "max_position_embeddings": 64}))
    assert model_positions(str(local)) == 64
    with pytest.raises(ConfigError, match="more than the 64 positions of base model 'llama-like'") as raised:
        check_fits_context(TrainingConfig(base_model=str(local)))
    assert str(tmp_path) not in str(raised.value)  # a server path is not shown

    # A hub id: the local Hugging Face cache's config.json, else unknown here (checked when the job loads it).
    snapshot = tmp_path / "hub" / "models--org--small" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps({"n_positions": 128}))
    (tmp_path / "hub" / "models--org--small" / "refs").mkdir()
    (tmp_path / "hub" / "models--org--small" / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert model_positions("org/small") == 128
    assert model_positions("org/not-cached") is None
    check_fits_context(TrainingConfig(base_model="org/not-cached", max_prompt_length=30000))


def test_the_built_in_models_positions_are_their_recipes():
    from n3_server.rlhf import base_models  # noqa: PLC0415  (torch: only to compare the figure)

    assert base_models.CONTEXT == BUILTIN_CONTEXT


def test_the_trainer_refuses_before_any_model_work(tmp_path):
    """The Python API checks the same before building or loading a model: the models dir stays empty."""
    records = [{"prompt": f"Q{i}?", "response": f"A{i}.", "score": i / 12} for i in range(12)]
    trainer = RLHFTrainer(TrainingConfig(base_model="n3-tiny", max_prompt_length=600), models_dir=tmp_path / "models")

    with pytest.raises(ConfigError, match="max_prompt_length \\+ max_new_tokens"):
        trainer.train(records, tmp_path / "out")
    assert not (tmp_path / "models").exists() and not (tmp_path / "out").exists()


# --- the likely cause of a NaN ----------------------------------------------------------------------------------


@pytest.mark.parametrize("fields, hint", [
    ({}, "Try a lower learning_rate (now the automatic one)."),
    ({"learning_rate": 1e-5}, "Try a lower learning_rate (now 1e-05)."),
    ({"learning_rate": 1e30}, "Try a lower learning_rate (now 1e+30)."),
    ({"init_kl_coef": 90.0}, "Likely cause: init_kl_coef is far above its usual range (at most 10). "
                             "Try a lower init_kl_coef (now 90)."),
    ({"missing_eos_penalty": 60.0, "vf_coef": 20.0}, "Try a lower missing_eos_penalty (now 60)."),
    ({"temperature": 0.02}, "Try a higher temperature (now 0.02)."),
    ({"algorithm": "rloo", "vf_coef": 90.0}, "Try a lower learning_rate"),  # RLOO has no value head: not vf_coef
])
def test_a_nonfinite_error_names_the_likely_cause(fields, hint):
    assert hint in config(**fields).nonfinite_hint()


# --- the service's layers -------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_only_fields_set_on_purpose_are_checked_against_the_algorithm(settings):
    settings.N3_DEFAULT_BASE_MODEL = MODEL
    agent = Agent.objects.create(name="bot")

    with pytest.raises(ConfigError, match=r"^vf_coef: not used by algorithm 'rloo' \(PPO only\)$"):
        services.resolve_training_config(agent=agent, overrides={"algorithm": "rloo", "vf_coef": 0.5})
    # Defaults and presets are never refused for it: low_memory sets gradient_accumulation_steps (PPO only).
    assert services.resolve_training_config(agent=agent, preset="low_memory", overrides={"algorithm": "rloo"})
    assert services.resolve_training_config(agent=agent, overrides={"algorithm": "kto"}).ppo_epochs == 4

    agent.default_training_config = {"ppo_epochs": 1}
    with pytest.raises(ConfigError, match="ppo_epochs: .*PPO only\\); set in agent bot's default training config"):
        services.resolve_training_config(agent=agent, overrides={"algorithm": "dpo"})
    agent.default_training_config = {"algorithm": "dpo", "dpo_pair_margin": 0.3}
    assert services.resolve_training_config(agent=agent).dpo_pair_margin == 0.3


@pytest.mark.django_db
def test_a_preset_keeps_the_operators_base_model(settings):
    """Issue 13 item 1: the spec's presets name hub models; the service uses the request's, the agent's or the
    operator's base model instead."""
    settings.N3_DEFAULT_BASE_MODEL = "n3-tiny"
    agent = Agent.objects.create(name="bot")

    for preset in PRESETS:
        resolved = services.resolve_training_config(agent=agent, preset=preset)
        assert resolved.base_model == "n3-tiny"
        assert resolved.batch_size == PRESETS[preset].get("batch_size", 8)  # the rest of the preset applies
    agent.default_training_config = {"base_model": MODEL}
    assert services.resolve_training_config(agent=agent, preset="production").base_model == MODEL
    resolved = services.resolve_training_config(agent=agent, preset="production", overrides={"base_model": "gpt2"})
    assert resolved.base_model == "gpt2"


# --- the API --------------------------------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("dry_run", [True, False])
def test_a_field_the_algorithm_ignores_is_a_400_named_as_sent(api, dry_run):
    seed_feedback()

    response = train(api, {"dryRun": dry_run, "algorithm": "rloo", "vfCoef": 0.5, "ppoEpochs": 2})

    assert response.status_code == 400, response.content
    assert response.json() == {
        "detail": "Invalid input: ppoEpochs: not used by algorithm 'rloo' (PPO only); "
                  "vfCoef: not used by algorithm 'rloo' (PPO only)",
        "errors": {"ppoEpochs": ["not used by algorithm 'rloo' (PPO only)"],
                   "vfCoef": ["not used by algorithm 'rloo' (PPO only)"]},
    }
    assert not PolicyVersion.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize("body, field", [
    ({"maxPromptLength": 32768}, "maxPromptLength"),
    ({"maxNewTokens": 8192}, "maxNewTokens"),
    ({"seed": -1}, "seed"),
    ({"temperature": 1e-300}, "temperature"),
    ({"initKlCoef": 1e308}, "initKlCoef"),
    ({"vfCoef": 1e308}, "vfCoef"),
    ({"missingEosPenalty": 1e308}, "missingEosPenalty"),
    ({"rewardModelConfig": {"maxLength": 4096}}, "rewardModelConfig.maxLength"),
    ({"algorithm": "kto", "ktoUndesirableThreshold": 0.7}, "ktoUndesirableThreshold"),
])
def test_configs_that_used_to_fail_the_run_are_400_at_request_time(api, body, field):
    seed_feedback()

    response = train(api, {"dryRun": False, **body})

    assert response.status_code == 400, response.content
    result = response.json()
    assert field in result["errors"] and f"{field}: " in result["detail"], result
    assert not re.search(r"\b[a-z]+_[a-z_]+\b", json.dumps(result["errors"])), result  # camelCase, as sent
    assert not PolicyVersion.objects.exists() and not OrmQ.objects.exists()


@pytest.mark.django_db
def test_a_run_longer_than_the_training_timeout_is_refused_and_the_dry_run_warns(api):
    """maxSteps 1e9 used to be queued with an estimate of millions of minutes behind a 6 h timeout."""
    seed_feedback()

    with override_settings(N3_TRAINING_TIMEOUT=6 * 3600):
        estimate = train(api, {"dryRun": True, "maxSteps": 10**9})
        queued = train(api, {"dryRun": False, "maxSteps": 10**9})

    assert estimate.status_code == 200, estimate.content
    assert any("N3_TRAINING_TIMEOUT" in w and "6.0 h" in w for w in estimate.json()["warnings"]), estimate.json()
    assert queued.status_code == 400, queued.content
    assert list(queued.json()["errors"]) == ["maxSteps"]
    assert "training time limit of 6.0 h (N3_TRAINING_TIMEOUT" in queued.json()["detail"]
    assert "lower maxSteps" in queued.json()["detail"]  # the field as sent, in the reason too
    assert not PolicyVersion.objects.exists()
    assert train(api, {"dryRun": False, "maxSteps": 2}).status_code == 202


@override_settings(N3_TRAINING_TIMEOUT=3600)
def test_a_measured_estimate_is_held_to_the_limit_and_a_rough_one_to_a_wide_margin():
    """A rough default estimate is a CPU figure that the workers' GPUs may beat many times over: it only warns,
    unless it is ROUGH_ESTIMATE_MARGIN times over the limit."""
    def estimate(minutes: float, source: str) -> TrainingEstimate:
        return TrainingEstimate(10, 1000, minutes, 0.5, 0.1, {}, estimate_source=source)

    services.check_time_limit(estimate(60, "measured"))
    with pytest.raises(ConfigError, match=r"^max_steps: the estimate is 61 min for 1000 steps, over") as raised:
        services.check_time_limit(estimate(61, "measured"))
    assert list(raised.value.errors) == ["max_steps"]
    services.check_time_limit(estimate(61, "default"))
    assert "rough" in services.time_limit_problem(estimate(61, "default"))  # what the dry run warns
    with pytest.raises(ConfigError, match="rough"):
        services.check_time_limit(estimate(60 * services.ROUGH_ESTIMATE_MARGIN + 1, "default"))


# --- version names, public reads -----------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("spelling", ["v01", "v0001", "v00"])
def test_a_version_has_one_spelling(api, spelling):
    PolicyVersion.objects.create(agent=Agent.objects.create(name="bot"), number=1, status="queued")
    assert api.get("/api/policies/bot/v1").status_code == 200

    response = api.get(f"/api/policies/bot/{spelling}")

    assert response.status_code == 404
    hint = "write it 'v1'" if spelling != "v00" else "versions are named v1, v2, ..."
    assert response.json() == {"detail": f"Version '{spelling}' of agent 'bot' not found ({hint})"}


@pytest.mark.django_db
def test_anonymous_public_reads_show_no_server_paths(api, anonymous, settings):
    settings.N3_PUBLIC_READ = True
    models = Path(settings.MODELS_DIR)
    error = (f"Base model '{models}/bot/v1/policy' is unavailable: there is no directory {models}/bot/v1/policy; "
             "see /etc/n3/other/place too")
    PolicyVersion.objects.create(
        agent=Agent.objects.create(name="bot"), number=1, status="failed", error=error,
        model_path=str(models / "bot" / "v1" / "policy"),
    )

    public = anonymous.get("/api/policies/bot/v1").json()
    listed = anonymous.get("/api/policies/bot").json()[0]

    assert str(models) not in json.dumps([public, listed]) and "/etc/n3" not in public["error"]
    assert public["error"] == ("Base model 'MODELS_DIR/bot/v1/policy' is unavailable: there is no directory "
                               "MODELS_DIR/bot/v1/policy; see <path> too")
    assert public["url"] == "http://testserver/api/policies/bot/v1"  # links are kept
    assert api.get("/api/policies/bot/v1").json()["error"] == error  # an authenticated reader sees it all


@pytest.mark.django_db
def test_the_admin_train_form_shows_the_base_model_that_will_be_used(admin_client, settings):
    settings.N3_DEFAULT_BASE_MODEL = "n3-tiny"
    agent = Agent.objects.create(name="bot")
    page = admin_client.get(f"/admin/policies/agent/{agent.pk}/train/").content.decode()
    assert '<code id="n3-base-model">n3-tiny</code>' in page and 'placeholder="n3-tiny"' in page
    presets = page.split("<h2>Presets</h2>")[1]
    assert "base_model" not in presets and "gpt2" not in presets  # the presets' hub models are not shown as applied

    agent.default_training_config = {"base_model": MODEL}
    agent.save()
    page = admin_client.get(f"/admin/policies/agent/{agent.pk}/train/").content.decode()
    assert f'<code id="n3-base-model">{MODEL}</code>' in page
