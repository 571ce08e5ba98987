"""The REST API as the spec documents it: feedback in, training requests, versions out, errors as {"detail"}.

Training requests run the real dry run (from a cached calibration, or the default while the worker would measure
it: tests/training/test_dry_run.py) and the real queueing (a django-q2 task row on the ORM broker; no worker runs in
these tests: the jobs tests train for real).
"""
import json
import math

import pytest
from django.conf import settings
from django.test import override_settings
from django_q.models import OrmQ

from feedback import services as feedback_services
from feedback.models import Feedback
from n3_server.rlhf.progress import Progress
from n3_server.rlhf.results import TrainingResult
from policies.models import Agent, PolicyVersion
from tests.errors import assert_error
from tests.sites import add_steps
from training import services as policy_services
from training.jobs.progress import JobProgress, result_metrics

pytestmark = pytest.mark.django_db

MODEL = "n3-tiny-random"
# The spec's "Dry Run" body keys, and the ones we add: "warnings" (a list), "estimateSource" ("measured" or "rough")
# and "preferenceData" (KTO/DPO's counts, else null).
DRY_RUN_KEYS = {
    "status", "feedbackCount", "estimatedSteps", "estimatedTimeMinutes", "scoreMean", "scoreStd", "modelConfig"
}
ADDED_DRY_RUN_KEYS = {"warnings", "estimateSource", "preferenceData"}
# The spec's "Training Success" body keys.
SUCCESS_KEYS = {
    "status", "policyId", "version", "modelPath", "rewardModelPath", "feedbackCount", "trainingSteps", "rewardMean",
    "rewardStd",
}


def feedback_url(agent: str) -> str:
    return f"/api/policies/feedback/{agent}"


def train_url(agent: str) -> str:
    return f"/api/policies/train_policy/{agent}"


def seed_feedback(agent: str, scored: int, unscored: int = 0) -> None:
    records = [
        {"prompt": f"Question {i}?", "response": f"Answer {i}.", "score": round((i % 10) / 10 + 0.05, 2),
         "run_id": f"seed-{i}"}
        for i in range(scored)
    ] + [{"prompt": f"Pending {i}?", "response": "Not reviewed yet."} for i in range(unscored)]
    feedback_services.record_feedback_batch(agent_name=agent, records=records)


def make_version(agent: str, number: int, status: str, **fields) -> PolicyVersion:
    agent_obj, _ = Agent.objects.get_or_create(name=agent)
    return PolicyVersion.objects.create(agent=agent_obj, number=number, status=status, **fields)



# --- feedback --------------------------------------------------------------------------------------------------


def test_feedback_is_stored_and_returned_with_201(api):
    sent = {
        "prompt": "What is the capital of France?", "response": "Paris is the capital of France.",
        "score": 0.9, "runId": "run_123", "notes": "Accurate answer",
    }
    response = api.post(feedback_url("my_agent"), sent)

    assert response.status_code == 201
    body = response.json()
    assert {key: body[key] for key in sent} == sent
    assert body["agent"] == "my_agent" and body["source"] == "api"
    assert set(body) == {"id", "agent", "prompt", "response", "score", "runId", "notes", "policyVersion", "source",
                         "reviewedAt", "createdAt", "updatedAt"}
    stored = Feedback.objects.get(pk=body["id"])
    assert (stored.agent.name, stored.score, stored.run_id, stored.notes) == (
        "my_agent", 0.9, "run_123", "Accurate answer")


def test_feedback_needs_only_prompt_and_response_and_keeps_text_exactly(api):
    response = api.post(feedback_url("bot"), {"prompt": "  Indented question", "response": "\n  code block\n"})

    assert response.status_code == 201
    body = response.json()
    assert (body["score"], body["runId"], body["notes"]) == (None, "", "")  # null score: awaiting review
    assert Feedback.objects.get().response == "\n  code block\n"


@pytest.mark.parametrize("body, field", [
    ({"response": "r", "score": 0.5}, "prompt"),
    ({"prompt": "p", "score": 0.5}, "response"),
    ({"prompt": "   ", "response": "r"}, "prompt"),
    ({"prompt": "p", "response": ""}, "response"),
    ({"prompt": 42, "response": "r"}, "prompt"),
    ({"prompt": "p", "response": "r", "score": 1.5}, "score"),
    ({"prompt": "p", "response": "r", "score": -0.1}, "score"),
    ({"prompt": "p", "response": "r", "score": "0.5"}, "score"),
    ({"prompt": "p", "response": "r", "score": True}, "score"),
    ({"prompt": "p", "response": "r", "score": "NaN"}, "score"),
    ({"prompt": "p", "response": "r", "score": [0.5]}, "score"),
    ({"prompt": "p", "response": "r", "runId": 7}, "runId"),
    ({"prompt": "p", "response": "r", "runId": "x" * 201}, "runId"),
    ({"prompt": "p", "response": "r", "scroe": 0.5}, "scroe"),
])
def test_invalid_feedback_is_refused_with_400_naming_the_field(api, body, field):
    response = api.post(feedback_url("bot"), body)

    result = assert_error(response, 400, field)
    assert field in result["errors"]
    assert Feedback.objects.count() == 0


def test_snake_case_run_id_is_refused_with_a_hint_instead_of_silently_ignored(api):
    response = api.post(feedback_url("bot"), {"prompt": "p", "response": "r", "run_id": "r1"})

    body = assert_error(response, 400, "run_id")
    assert body["errors"] == {"run_id": ["Unknown field; did you mean 'runId'?"]}


@pytest.mark.parametrize("raw", ['{"prompt": "p", "response": "r", "score": NaN}',
                                 '{"prompt": "p", "response": "r", "score": Infinity}'])
def test_non_finite_json_numbers_are_refused(api, raw):
    response = api.generic("POST", feedback_url("bot"), raw, content_type="application/json")

    assert_error(response, 400, "JSON parse error")
    assert Feedback.objects.count() == 0


@pytest.mark.parametrize("name", [
    "x%27%3B%20DROP%20TABLE%20feedback_feedback%3B--",  # x'; DROP TABLE feedback_feedback;--
    "-starts-with-a-dash",
    "has.dot",
    "a" * 101,
])
def test_bad_agent_names_are_refused_with_400_and_create_nothing(api, name):
    response = api.post(feedback_url(name), {"prompt": "p", "response": "r", "score": 0.5})

    assert_error(response, 400, "Agent names")
    assert not Agent.objects.exists() and not Feedback.objects.exists()


def test_a_name_with_a_slash_is_a_record_url_that_takes_no_post(api):
    response = api.post(feedback_url("..%2F..%2Fetc"), {"prompt": "p", "response": "r", "score": 0.5})

    assert_error(response, 405)  # feedback/<agent>/<runId>: PATCH only
    assert not Agent.objects.exists() and not Feedback.objects.exists()


def test_a_list_body_stores_every_record_in_order(api):
    records = [{"prompt": f"q{i}", "response": f"a{i}", "score": i / 4, "runId": f"r{i}"} for i in range(5)]
    records[2].pop("score")

    response = api.post(feedback_url("bulk"), records)

    assert response.status_code == 201
    body = response.json()
    assert [item["runId"] for item in body] == ["r0", "r1", "r2", "r3", "r4"]
    assert [item["score"] for item in body] == [0.0, 0.25, None, 0.75, 1.0]
    assert sorted(Feedback.objects.values_list("id", flat=True)) == sorted(item["id"] for item in body)


def test_one_bad_record_in_a_list_stores_nothing_and_names_its_index_and_field(api):
    records = [{"prompt": f"q{i}", "response": "a", "score": 0.5} for i in range(4)]
    records[2]["score"] = 7

    response = api.post(feedback_url("bulk"), records)

    body = assert_error(response, 400, "[2].score")
    assert list(body["errors"]) == ["[2].score"]
    assert not Feedback.objects.exists() and not Agent.objects.exists()


def test_an_empty_list_is_refused(api):
    assert_error(api.post(feedback_url("bulk"), []), 400)


def test_a_retry_with_the_same_run_id_returns_the_stored_record_with_200(api):
    sent = {"prompt": "p", "response": "r", "score": 0.4, "runId": "run-1"}
    first = api.post(feedback_url("bot"), sent)
    again = api.post(feedback_url("bot"), sent)

    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json() == first.json()
    assert Feedback.objects.count() == 1
    # The same runId under another agent is another record.
    assert api.post(feedback_url("other_bot"), sent).status_code == 201


def test_the_same_run_id_with_different_content_is_a_409(api):
    api.post(feedback_url("bot"), {"prompt": "p", "response": "r", "score": 0.4, "runId": "run-1"})

    response = api.post(feedback_url("bot"), {"prompt": "p", "response": "r", "score": 0.9, "runId": "run-1"})

    assert_error(response, 409, "runId 'run-1'", "different content")
    assert Feedback.objects.get().score == 0.4


def test_retrying_a_list_stores_nothing_twice_and_conflicts_name_the_record(api):
    records = [{"prompt": f"q{i}", "response": "a", "score": 0.5, "runId": f"r{i}"} for i in range(3)]
    assert api.post(feedback_url("bulk"), records).status_code == 201

    again = api.post(feedback_url("bulk"), records)
    assert again.status_code == 200  # nothing new
    assert Feedback.objects.count() == 3

    changed = records + [{"prompt": "new", "response": "a", "runId": "r9"}]
    changed[1] = {**records[1], "response": "edited"}
    conflict = api.post(feedback_url("bulk"), changed)
    body = assert_error(conflict, 409, "record 1", "runId 'r1'")
    assert list(body["errors"]) == ["[1]"]
    assert Feedback.objects.count() == 3  # the new record r9 was not stored either


def test_a_run_id_repeated_within_one_list_is_stored_once():
    results = feedback_services.record_feedback_batch(
        agent_name="bot", records=[{"prompt": "p", "response": "r", "run_id": "x"}] * 2
    )
    assert [created for _, created in results] == [True, False]
    assert results[0][0].pk == results[1][0].pk and Feedback.objects.count() == 1


def test_a_run_id_repeated_with_other_content_within_one_list_is_400_naming_both_records(api):
    records = [{"prompt": f"q{i}", "response": "a", "score": 0.5, "runId": f"r{i}"} for i in range(3)]
    records.append({**records[1], "response": "edited"})

    response = api.post(feedback_url("bulk"), records)

    body = assert_error(response, 400, "runId 'r1'", "repeated", "records 1 and 3")
    assert list(body["errors"]) == ["[3]"] and "None" not in body["detail"]
    assert not Feedback.objects.exists()


def test_the_dry_run_body_rounds_the_scores_for_display():
    """Equal scores average to 0.7000000000000001 with a spread of 1e-16 in floating point: shown as 0.7 and 0."""
    from api.serializers import DryRunSerializer
    from n3_server.rlhf.data import prepare_feedback
    from n3_server.rlhf.results import TrainingEstimate

    data = prepare_feedback([{"prompt": f"q{i}", "response": "a", "score": 0.7} for i in range(10)])
    assert (data.score_mean, data.score_std) != (0.7, 0.0)  # what training uses stays exact
    estimate = TrainingEstimate(feedback_count=10, estimated_steps=5, estimated_time_minutes=1.0,
                                score_mean=data.score_mean, score_std=data.score_std, model_config={})
    body = DryRunSerializer(estimate).data
    assert (body["scoreMean"], body["scoreStd"]) == (0.7, 0.0)
    estimate.score_mean, estimate.score_std = 0.43333333333333335, 0.2962731472438521
    assert (DryRunSerializer(estimate).data["scoreMean"], DryRunSerializer(estimate).data["scoreStd"]) == (
        0.433333, 0.296273)


def test_trailing_slash_works_without_a_redirect(api):
    response = api.post(feedback_url("bot") + "/", {"prompt": "p", "response": "r"})
    assert response.status_code == 201
    assert api.get("/api/policies/bot/").status_code == 200


def test_form_encoded_body_is_415(api):
    response = api.post(feedback_url("bot"), "prompt=p&response=r", content_type="application/x-www-form-urlencoded")
    assert_error(response, 415, "Unsupported media type")


@pytest.mark.parametrize("raw", ['{"prompt": "p", ', "", "\xff\xfe"])
def test_malformed_json_is_400(api, raw):
    response = api.generic("POST", feedback_url("bot"), raw.encode("latin-1"), content_type="application/json")
    assert response.status_code == 400
    assert response.json()["detail"]


def test_deeply_nested_json_is_400_not_500(api):
    depth = 100_000
    response = api.generic("POST", feedback_url("bot"), "[" * depth + "]" * depth, content_type="application/json")
    assert_error(response, 400, "nested too deeply")


def test_oversized_body_is_413(api):
    with override_settings(DATA_UPLOAD_MAX_MEMORY_SIZE=1000):
        response = api.post(feedback_url("bot"), {"prompt": "p" * 2000, "response": "r"})
    assert_error(response, 413, "too large")


def test_an_error_quoting_a_lone_surrogate_still_renders(api):
    """JSON may carry "\\ud800", UTF-8 cannot: the message quoting it is escaped, not a 500."""
    response = api.generic("POST", train_url("bot"), '{"preset": "\\ud800"}', content_type="application/json")
    assert_error(response, 400, "Unknown preset")
    body = '{"prompt": "\\ud800", "response": "r"}'
    response = api.generic("POST", feedback_url("bot"), body, content_type="application/json")
    assert_error(response, 400, "prompt")


def test_unknown_api_urls_and_methods_answer_json(api):
    assert_error(api.get("/api/policies/a/v1/cancel/extra"), 404, "No API endpoint")
    assert_error(api.put(feedback_url("bot"), {}), 405, "PUT")


# --- training requests -----------------------------------------------------------------------------------------


def test_dry_run_answers_exactly_the_spec_keys_plus_warnings(api):
    seed_feedback("my_agent", scored=12, unscored=2)

    response = api.post(train_url("my_agent"), {
        "dryRun": True, "baseModel": MODEL, "maxSteps": 40, "learningRate": 1e-5, "batchSize": 4, "miniBatchSize": 2,
    })

    assert response.status_code == 200, response.content
    body = response.json()
    assert set(body) == DRY_RUN_KEYS | ADDED_DRY_RUN_KEYS
    assert body["status"] == "dry_run"
    assert body["feedbackCount"] == 12  # scored feedback only
    assert body["estimatedSteps"] == 40
    assert body["estimatedTimeMinutes"] > 0
    scores = list(Feedback.objects.filter(score__isnull=False).values_list("score", flat=True))
    assert body["scoreMean"] == pytest.approx(sum(scores) / len(scores))
    assert body["scoreStd"] == pytest.approx(math.sqrt(sum((s - body["scoreMean"]) ** 2 for s in scores) / len(scores)))
    assert body["modelConfig"] == {"base_model": MODEL, "use_lora": True, "learning_rate": 1e-5}
    assert any("may overfit" in warning for warning in body["warnings"])  # 12 < the recommended 50
    assert body["preferenceData"] is None  # PPO
    assert not PolicyVersion.objects.exists()


def test_the_dry_run_warns_about_feedback_awaiting_review(api):
    """The estimate trains on scored feedback only; the agent's unscored feedback is counted and named."""
    seed_feedback("my_agent", scored=12, unscored=3)

    response = api.post(train_url("my_agent"), {"dryRun": True, "baseModel": MODEL, "maxSteps": 40, "batchSize": 4,
                                                 "miniBatchSize": 2})

    assert response.status_code == 200, response.content
    assert "3 feedback records awaiting review (no score) skipped." in response.json()["warnings"]


def test_the_dry_run_shows_the_automatic_rate_and_warns_once_about_a_rate_that_barely_moves_the_adapter(api):
    seed_feedback("my_agent", scored=12)
    body = {"dryRun": True, "baseModel": MODEL, "maxSteps": 40, "batchSize": 4, "miniBatchSize": 2}

    automatic = api.post(train_url("my_agent"), body).json()
    slow = api.post(train_url("my_agent"), {**body, "learningRate": 1e-5}).json()

    assert automatic["modelConfig"]["learning_rate"] == 2e-3  # n3-tiny-random's width 64, capped
    assert not any("barely move" in w for w in automatic["warnings"])
    assert [w for w in slow["warnings"] if "barely move" in w] == [
        "learning_rate 1e-05 is a tenth or less of the rate n3 would choose for this model's LoRA adapter (0.002): "
        "expect the policy to barely move from its start (KL near 0, a version no better than its start). Leave "
        "learning_rate out for the automatic rate."
    ]


@pytest.mark.parametrize("dry_run", [True, False])
def test_insufficient_feedback_is_400_with_the_spec_text(api, dry_run):
    seed_feedback("my_agent", scored=5, unscored=3)

    response = api.post(train_url("my_agent"), {"dryRun": dry_run, "baseModel": MODEL})

    assert response.status_code == 400
    assert response.json() == {"detail": "Insufficient feedback: 5 samples (minimum 10 required)"}
    assert not PolicyVersion.objects.exists()


def test_training_an_unknown_agent_is_404(api):
    response = api.post(train_url("ghost"), {"dryRun": True})
    assert response.status_code == 404
    assert response.json() == {"detail": "Agent 'ghost' not found"}


@pytest.mark.parametrize("body, path, message", [
    ({"maxStep": 10}, "maxStep", "Unknown field."),
    ({"max_steps": 10}, "max_steps", "Unknown field; did you mean 'maxSteps'?"),
    ({"rewardModelConfig": {"numEpoch": 2}}, "rewardModelConfig.numEpoch", "Unknown field."),
    ({"maxSteps": "100"}, "maxSteps", "A valid integer is required."),
    ({"maxSteps": 2.5}, "maxSteps", "A valid integer is required."),
    ({"maxSteps": 2**40}, "maxSteps", "Ensure this value is less than or equal to 2147483647."),
    ({"learningRate": True}, "learningRate", "A valid number is required."),
    ({"useLora": "yes"}, "useLora", "Must be a valid boolean."),
    ({"dryRun": "false"}, "dryRun", "Must be a valid boolean."),
    ({"rewardModelConfig": 3}, "rewardModelConfig", "Invalid data. Expected a dictionary, but got int."),
    ({"preset": "turbo"}, "preset",
     'Unknown preset "turbo"; choose one of quick_test, production, low_memory, high_performance.'),
])
def test_bad_training_fields_are_400_named_as_sent(api, body, path, message):
    seed_feedback("my_agent", scored=10)

    response = api.post(train_url("my_agent"), body)

    result = assert_error(response, 400, path)
    assert result["errors"] == {path: [message]}


@pytest.mark.parametrize("body, fragment", [
    ({"batchSize": 0}, "batchSize: must be a positive number"),
    ({"miniBatchSize": 16, "batchSize": 8}, "miniBatchSize: cannot exceed batchSize (8)"),
    ({"algorithm": "a2c"}, "algorithm: must be one of"),
    ({"rewardModelConfig": {"loraDropout": 1.5}}, "rewardModelConfig.loraDropout: must be in"),
    # A dry run calibrates with the request's batch: a million rollouts would exhaust the web process's memory.
    ({"batchSize": 1_000_000, "miniBatchSize": 1}, "batchSize: must be at most 4096"),
])
def test_config_values_the_trainer_refuses_are_400_named_as_sent(api, body, fragment):
    seed_feedback("my_agent", scored=10)
    body = assert_error(api.post(train_url("my_agent"), {"dryRun": True, "baseModel": MODEL, **body}), 400, fragment)
    assert fragment.split(":")[0] in body["errors"]


# A dry run whose configuration cannot train (its measurement in the worker failed) is a 400 saying why:
# tests/training/test_dry_run.py, with the default answer before the measurement and the measured one after it.


@pytest.mark.parametrize(
    "base_model", ["../../etc", "/etc", "~/.ssh", "~nosuchuser/x", "models/../../etc", "a/b/c", "x" * 5000]
)
def test_base_models_outside_the_allowed_directories_are_refused(api, base_model):
    seed_feedback("my_agent", scored=10)

    response = api.post(train_url("my_agent"), {"dryRun": False, "baseModel": base_model})

    assert_error(response, 400, "not allowed")
    assert not PolicyVersion.objects.exists()


def test_base_model_rules(tmp_path):
    for allowed in ("n3-tiny", "n3-tiny-random", "gpt2", "openai-community/gpt2-medium",
                    str(settings.MODELS_DIR / "my_agent" / "v1" / "policy")):
        policy_services.check_base_model(allowed)
    with pytest.raises(policy_services.ServiceError):
        policy_services.check_base_model(str(tmp_path))
    with override_settings(N3_ALLOWED_MODEL_DIRS=[tmp_path]):
        policy_services.check_base_model(str(tmp_path / "my-model"))


def test_queueing_creates_the_next_version_and_a_task(api):
    seed_feedback("my_agent", scored=11, unscored=1)

    response = api.post(train_url("my_agent"), {"dryRun": False, "baseModel": MODEL, "maxSteps": 20})

    assert response.status_code == 202, response.content
    body = response.json()
    version = PolicyVersion.objects.get()
    assert body["status"] == "queued" and version.status == "queued"
    assert (body["version"], body["policyId"], body["agent"]) == ("v1", version.policy_id, "my_agent")
    assert (body["feedbackCount"], body["maxSteps"]) == (11, 20)
    assert body["url"] == "http://testserver/api/policies/my_agent/v1" == response["Location"]
    assert [task.task_id() for task in OrmQ.objects.all()] == [version.task_id]  # the job waits for a worker

    again = api.post(train_url("my_agent"), {"baseModel": MODEL})  # dryRun defaults to false
    assert again.status_code == 202 and again.json()["version"] == "v2"


def test_config_fields_round_trip_in_camel_case(api):
    seed_feedback("my_agent", scored=10)
    sent = {
        "baseModel": MODEL, "maxSteps": 12, "learningRate": 3e-5, "batchSize": 4, "miniBatchSize": 2,
        "gradientAccumulationSteps": 2, "useLora": True, "loraR": 4, "loraAlpha": 8, "initKlCoef": 0.5,
        "targetKl": 3.0, "ppoEpochs": 2, "maxNewTokens": 16, "seed": 7, "device": "cpu", "algorithm": "ppo",
        "rewardModelConfig": {"numEpochs": 2, "loraDropout": 0.2},
    }
    assert api.post(train_url("my_agent"), sent).status_code == 202

    config = api.get("/api/policies/my_agent/v1").json()["config"]

    assert {key: config[key] for key in sent if key != "rewardModelConfig"} == {
        k: v for k, v in sent.items() if k != "rewardModelConfig"
    }
    assert config["rewardModelConfig"]["numEpochs"] == 2 and config["rewardModelConfig"]["loraDropout"] == 0.2
    assert PolicyVersion.objects.get().config["reward_model_config"]["num_epochs"] == 2


def test_every_training_config_field_is_accepted_in_camel_case():
    """New TrainingConfig fields need no API change: the request serializer is derived from the dataclass."""
    from api.serializers import TrainPolicyRequestSerializer, to_camel
    from n3_server.rlhf import RewardModelConfig, TrainingConfig

    fields = TrainPolicyRequestSerializer().fields
    assert {to_camel(name) for name in TrainingConfig.field_names()} <= set(fields)
    nested = fields["rewardModelConfig"].fields
    assert {to_camel(f) for f in RewardModelConfig.__dataclass_fields__} == set(nested)


# --- versions ------------------------------------------------------------------------------------------------


# A version's metrics and steps as n3 stores them (the training core's names), and the history the API shows.
TRAINED_METRICS = {"objective/scores": 0.82, "objective/scores_std": 0.15, "objective/kl": 2.5, "loss/total": 0.31}
TRAINED_STEPS = [
    {"step": 1, "objective/scores": 0.5, "objective/kl": 0.0, "loss/total": 0.9},
    {"step": 2, "objective/scores": 0.82, "objective/kl": 2.5, "loss/total": 0.31},
]
TRAINED_HISTORY = [
    {"step": 1, "rewardMean": 0.5, "rewardStd": None, "kl": 0.0, "loss": 0.9,
     "objective/scores": 0.5, "objective/kl": 0.0, "loss/total": 0.9},
    {"step": 2, "rewardMean": 0.82, "rewardStd": None, "kl": 2.5, "loss": 0.31,
     "objective/scores": 0.82, "objective/kl": 2.5, "loss/total": 0.31},
]


def trained_version(agent: str, number: int, metrics: dict = TRAINED_METRICS, **fields) -> PolicyVersion:
    version = make_version(agent, number, "trained", metrics=metrics, **fields)
    add_steps(version, TRAINED_STEPS)
    return version


def test_versions_are_listed_newest_first_with_summary_metrics(api):
    trained_version("my_agent", 1, step=2, max_steps=2, feedback_count=15,
                    model_path="models/my_agent/v1/policy", reward_model_path="models/my_agent/v1/reward_model")
    make_version("my_agent", 2, "failed", error="CUDA out of memory")
    make_version("my_agent", 3, "running", metrics={"objective/scores": 0.6}, step=1, max_steps=10)
    make_version("other_agent", 1, "queued")

    response = api.get("/api/policies/my_agent")

    assert response.status_code == 200
    body = response.json()
    assert [v["version"] for v in body] == ["v3", "v2", "v1"]
    assert [v["status"] for v in body] == ["running", "failed", "trained"]
    trained = body[2]
    assert trained["metrics"] == {"rewardMean": 0.82, "rewardStd": 0.15, "kl": 2.5, "loss": 0.31}  # no history
    assert (trained["trainingSteps"], trained["feedbackCount"]) == (2, 15)
    assert (trained["modelPath"], trained["rewardModelPath"]) == (
        "models/my_agent/v1/policy", "models/my_agent/v1/reward_model"
    )
    assert body[1]["modelPath"] is None and body[1]["metrics"]["rewardMean"] is None
    # The spec's `jq '.[] | {version, reward: .metrics.rewardMean}'` prints numbers for trained versions.
    assert [
        {"version": v["version"], "reward": v["metrics"]["rewardMean"]} for v in body if v["status"] == "trained"
    ] == [
        {"version": "v1", "reward": 0.82}
    ]


def test_an_agent_without_versions_lists_an_empty_array_and_an_unknown_agent_is_404(api):
    Agent.objects.create(name="fresh")
    assert api.get("/api/policies/fresh").json() == []
    assert api.get("/api/policies/ghost").json() == {"detail": "Agent 'ghost' not found"}


def test_a_trained_version_answers_the_spec_training_success_body(api):
    version = trained_version("my_agent", 15, step=1000, max_steps=1000, feedback_count=15,
                              model_path="models/my_agent/v15/policy",
                              reward_model_path="models/my_agent/v15/reward_model")

    body = api.get("/api/policies/my_agent/v15").json()

    assert {key: body[key] for key in SUCCESS_KEYS} == {
        "status": "trained", "policyId": version.policy_id, "version": "v15",
        "modelPath": "models/my_agent/v15/policy", "rewardModelPath": "models/my_agent/v15/reward_model",
        "feedbackCount": 15, "trainingSteps": 1000, "rewardMean": 0.82, "rewardStd": 0.15,
    }
    assert body["agent"] == "my_agent" and body["error"] is None
    assert body["metrics"]["kl"] == 2.5 and body["metrics"]["history"] == TRAINED_HISTORY


def test_a_running_version_shows_progress_and_a_failed_one_its_error(api):
    from django.utils import timezone

    now = timezone.now()
    version = make_version("my_agent", 1, "running", step=3, max_steps=10, started_at=now, heartbeat_at=now,
                           metrics={"objective/scores": 0.4, "objective/kl": 0.1})
    add_steps(version, [{"step": 3}])
    make_version("my_agent", 2, "failed", error="Training diverged: loss is NaN at step 4")

    running = api.get("/api/policies/my_agent/v1").json()
    assert (running["status"], running["step"], running["maxSteps"]) == ("running", 3, 10)
    assert running["metrics"]["rewardMean"] == 0.4 and running["startedAt"] and running["heartbeatAt"]
    assert running["metrics"]["history"] == [
        {"step": 3, "rewardMean": None, "rewardStd": None, "kl": None, "loss": None}
    ]
    assert running["modelPath"] is None

    failed = api.get("/api/policies/my_agent/v2").json()
    assert (failed["status"], failed["error"]) == ("failed", "Training diverged: loss is NaN at step 4")


# The training core's TrainingResult.evaluation (snake_case), what training.jobs.progress stores of it in metrics, and
# what the API shows (camelCase).
CORE_EVALUATION = {
    "baseline": "base model n3-tiny", "n": 64, "heldout_prompts": [f"Held-out {i}?" for i in range(12)],
    "split_seed": 42, "win_rate": 0.66, "win_rate_ci": [0.55, 0.76], "reward_mean": 0.71, "baseline_reward_mean": 0.52,
    "reward_diff": 0.19, "reward_diff_ci": [0.10, float("nan")], "kl": 3.1, "response_length": 9.2,
    "baseline_response_length": 11.0, "better": True, "scored_by": "this version's reward model",
    "samples": [
        {"prompt": f"Held-out {i}?", "response": f"Answer {i}.", "baseline_response": "Hmm.", "score": 0.8,
         "baseline_score": float("inf") if i == 1 else 0.4}
        for i in range(10)
    ],
}
STORED_EVALUATION = {
    "baseline": "base model n3-tiny", "n": 64, "split_seed": 42, "win_rate": 0.66, "win_rate_ci": [0.55, 0.76],
    "reward_mean": 0.71, "baseline_reward_mean": 0.52, "reward_diff": 0.19, "reward_diff_ci": [0.10, None], "kl": 3.1,
    "response_length": 9.2, "baseline_response_length": 11.0, "better": True,
    "scored_by": "this version's reward model", "heldout_prompts": 12,
    "samples": [
        {"prompt": f"Held-out {i}?", "response": f"Answer {i}.", "baseline_response": "Hmm.", "score": 0.8,
         "baseline_score": None if i == 1 else 0.4}
        for i in range(8)
    ],
}
API_EVALUATION = {
    "better": True, "baseline": "base model n3-tiny", "scoredBy": "this version's reward model", "n": 64,
    "heldoutPrompts": 12, "splitSeed": 42, "winRate": 0.66, "winRateCi": [0.55, 0.76], "rewardMean": 0.71,
    "baselineRewardMean": 0.52, "rewardDiff": 0.19, "rewardDiffCi": [0.10, None], "kl": 3.1, "responseLength": 9.2,
    "baselineResponseLength": 11.0, "verdict": None, "keptStart": None, "rewardModelOk": None,
    "judgeWinRates": None, "judgeAgreement": None, "policyRewardModel": None, "advice": None,
    "samples": [
        {"prompt": f"Held-out {i}?", "response": f"Answer {i}.", "baselineResponse": "Hmm.", "score": 0.8,
         "baselineScore": None if i == 1 else 0.4}
        for i in range(8)
    ],
}
POOR_FIT = ("Reward model is no better than predicting the mean score (cross-validated MSE 0.16 vs 0.15): "
            "its scores carry little of the reviewers' judgement.")
EVALUATED_METRICS = {**TRAINED_METRICS, "warnings": [POOR_FIT], "evaluation": STORED_EVALUATION}


def training_result(**fields) -> TrainingResult:
    return TrainingResult(model_path="models/a/v1/policy", reward_model_path="models/a/v1/reward_model",
                          final_reward_mean=0.82, final_reward_std=0.15, training_steps=2, **fields)


def test_result_metrics_store_the_evaluation_under_the_core_names_json_safe_and_the_api_camel_cases_it():
    from api.serializers import api_metrics

    metrics = result_metrics(training_result(evaluation=CORE_EVALUATION, warnings=[POOR_FIT]))
    assert metrics["evaluation"] == STORED_EVALUATION  # heldout prompts as their count, at most 8 samples
    assert metrics["warnings"] == [POOR_FIT]
    json.dumps(metrics, allow_nan=False)  # strict JSON, as the column stores it
    assert api_metrics(metrics, samples=True)["evaluation"] == API_EVALUATION

    skipped = result_metrics(training_result(evaluation={"skipped": "fewer than 2 distinct prompts to hold out"}))
    assert skipped["evaluation"] == {"skipped": "fewer than 2 distinct prompts to hold out"}
    assert api_metrics(skipped, samples=True)["evaluation"] == {"skipped": "fewer than 2 distinct prompts to hold out"}
    assert "evaluation" not in result_metrics(training_result(evaluation=None))  # runs from before evaluations
    partial = api_metrics(result_metrics(training_result(evaluation={"win_rate": 0.5})), samples=True)["evaluation"]
    assert set(partial) == set(API_EVALUATION) and partial["better"] is None and partial["samples"] == []


# What the API answered for one run before its metrics moved to the core's names and its steps to rows (generated by
# that code): the bodies must stay byte for byte the same.
NAN = float("nan")
RUN_HISTORY = [
    {"step": 1, "objective/scores": 0.5, "objective/scores_std": 0.2, "objective/kl": 0.0, "objective/kl_coef": 0.2,
     "loss/total": 0.9, "policy/entropy": 2.5, "tokens_per_s": 310.0},
    {"step": 2, "objective/scores": 0.82, "objective/scores_std": 0.15, "objective/kl": 2.5, "objective/kl_coef": 0.2,
     "loss/total": 0.31, "policy/entropy": NAN, "tokens_per_s": 320.5},
]
RUN_REWARD_MODEL = {
    "validation": "5-fold cross-validation", "val_mse": 0.031, "val_mse_baseline": 0.065, "val_pearson": 0.82,
    "val_spearman": NAN, "best_epoch": 2, "train_loss": 0.02, "train_size": 12, "val_size": 3, "epochs": 3, "steps": 9,
    "fit_seconds": 1.25, "eval_seconds": 0.5, "history": [{"epoch": 1, "val_mse": 0.04}],
}
RUN_EVALUATION = {
    "baseline": "base model n3-tiny", "scored_by": "this version's reward model", "n": 4,
    "heldout_prompts": ["q1", "q2"], "split_seed": 42, "win_rate": 0.75, "win_rate_ci": [0.5, NAN], "reward_mean": 0.6,
    "baseline_reward_mean": 0.4, "reward_diff": 0.2, "reward_diff_ci": [0.0, 0.4], "kl": 1.5, "response_length": 5.0,
    "baseline_response_length": 6.0, "better": False,
    "samples": [{"prompt": "q1", "response": "a", "baseline_response": "b", "score": 0.7, "baseline_score": NAN}],
}
_REWARD_MODEL_BODY = (
    '"rewardModel": {"valMse": 0.031, "valMseBaseline": 0.065, "pearson": 0.82, "spearman": null, "trainLoss": 0.02, '
    '"trainSize": 12, "valSize": 3, "epochs": 3, "fitSeconds": 1.25, "validation": "5-fold cross-validation", '
    '"bestEpoch": 2}'
)
VERDICT_KEYS = ("verdict", "keptStart", "rewardModelOk", "judgeWinRates", "judgeAgreement", "policyRewardModel",
                "advice")
_EVALUATION_BODY = (
    '"evaluation": {"better": false, "baseline": "base model n3-tiny", "scoredBy": "this version\'s reward model", '
    '"n": 4, "winRate": 0.75, "winRateCi": [0.5, null], "rewardMean": 0.6, "baselineRewardMean": 0.4, '
    '"rewardDiff": 0.2, "rewardDiffCi": [0.0, 0.4], "kl": 1.5, "responseLength": 5.0, "baselineResponseLength": 6.0, '
    '"splitSeed": 42, "heldoutPrompts": 2, "verdict": null, "keptStart": null, "rewardModelOk": null, '
    '"judgeWinRates": null, "judgeAgreement": null, "policyRewardModel": null, "advice": null'
)
_HISTORY_BODY = (
    '"history": [{"step": 1, "rewardMean": 0.5, "rewardStd": 0.2, "kl": 0.0, "loss": 0.9, "objective/scores": 0.5, '
    '"objective/scores_std": 0.2, "objective/kl": 0.0, "objective/kl_coef": 0.2, "loss/total": 0.9, '
    '"policy/entropy": 2.5, "tokens_per_s": 310.0}, {"step": 2, "rewardMean": 0.82, "rewardStd": 0.15, "kl": 2.5, '
    '"loss": 0.31, "objective/scores": 0.82, "objective/scores_std": 0.15, "objective/kl": 2.5, '
    '"objective/kl_coef": 0.2, "loss/total": 0.31, "policy/entropy": null, "tokens_per_s": 320.5}]'
)
_FINAL = '"rewardMean": 0.82, "rewardStd": 0.15, "kl": 2.5, "loss": 0.31'
TRAINED_LIST_BODY = (
    f'{{{_FINAL}, {_REWARD_MODEL_BODY}, "durationSeconds": 12.3, "warnings": ["w1"], {_EVALUATION_BODY}}}}}'
)
TRAINED_DETAIL_BODY = (
    f'{{{_FINAL}, {_REWARD_MODEL_BODY}, "durationSeconds": 12.3, "warnings": ["w1"], {_EVALUATION_BODY}, '
    '"samples": [{"prompt": "q1", "response": "a", "baselineResponse": "b", "score": 0.7, "baselineScore": null}]}, '
    f'{_HISTORY_BODY}}}'
)
RUNNING_LIST_BODY = f'{{{_FINAL}, "phase": "policy", "rewardModelLoss": 0.4}}'
RUNNING_DETAIL_BODY = f'{{{_FINAL}, "phase": "policy", "rewardModelLoss": 0.4, {_HISTORY_BODY}}}'


def test_metrics_bodies_are_unchanged_by_the_core_names_and_the_step_rows(api):
    """A run recorded the way training.jobs.run records it (JobProgress while it trains, result_metrics and its steps
    when it ends) answers the same list and detail bodies, key order included, as before."""
    running = make_version("my_agent", 1, "running", max_steps=5)
    job = JobProgress(running.pk, interval=0)
    with job:
        job(Progress(phase="reward_model", step=1, total=2, metrics={"loss": 0.4}))
        for stats in RUN_HISTORY:
            job(Progress(phase="policy", step=stats["step"], total=5, metrics=stats))
    trained = make_version("my_agent", 2, "trained", metrics=result_metrics(training_result(
        final_kl=2.5, final_loss=0.31, duration_seconds=12.345, history=RUN_HISTORY,
        reward_model_metrics=RUN_REWARD_MODEL, warnings=["w1"], evaluation=RUN_EVALUATION,
    )))
    JobProgress(trained.pk, interval=0).store_steps(RUN_HISTORY)

    listed = {v["version"]: v["metrics"] for v in api.get("/api/policies/my_agent").json()}
    assert json.dumps(listed["v1"]) == RUNNING_LIST_BODY
    assert json.dumps(listed["v2"]) == TRAINED_LIST_BODY
    assert json.dumps(api.get("/api/policies/my_agent/v1").json()["metrics"]) == RUNNING_DETAIL_BODY
    assert json.dumps(api.get("/api/policies/my_agent/v2").json()["metrics"]) == TRAINED_DETAIL_BODY


def test_migration_0003_renames_stored_metrics_to_the_core_names_and_back():
    """A version stored before (the API's names in metrics) answers the same body after the data migration."""
    import importlib

    from api.serializers import api_metrics

    convert = importlib.import_module("policies.migrations.0003_metrics_core_names").convert
    shown = {k: v for k, v in json.loads(TRAINED_DETAIL_BODY).items() if k != "history"}
    # stored as shown then, before the verdict's keys existed (the API shows them as null for such a version)
    before = {**shown, "evaluation": {k: v for k, v in shown["evaluation"].items() if k not in VERDICT_KEYS}}
    after = convert(before, forwards=True)

    now = result_metrics(training_result(final_kl=2.5, final_loss=0.31, reward_model_metrics=RUN_REWARD_MODEL,
                                         evaluation=RUN_EVALUATION))
    assert list(after) == list(now) and set(after["evaluation"]) == set(now["evaluation"])
    assert set(after["reward_model"]) <= set(now["reward_model"])
    assert json.dumps(api_metrics(after, samples=True)) == json.dumps(shown)
    assert json.dumps(convert(after, forwards=False)) == json.dumps(before)
    running = {"rewardMean": 0.5, "rewardStd": None, "kl": 0.1, "loss": 0.2, "phase": "policy", "rewardModelLoss": 0.4}
    assert convert(running, forwards=True) == {**JobProgress(0, interval=0).metrics(), "objective/scores": 0.5,
                                               "objective/kl": 0.1, "loss/total": 0.2, "phase": "policy",
                                               "reward_model_loss": 0.4}


def test_list_and_detail_show_the_evaluation_and_the_warnings(api):
    trained_version("my_agent", 1, step=2, max_steps=2)
    trained_version("my_agent", 2, metrics=EVALUATED_METRICS, step=2, max_steps=2)
    trained_version("my_agent", 3, metrics={**TRAINED_METRICS, "evaluation": {"skipped": "eval_fraction 0"}})

    listed = {v["version"]: v for v in api.get("/api/policies/my_agent").json()}
    evaluated = listed["v2"]
    summary = {key: value for key, value in API_EVALUATION.items() if key != "samples"}
    assert evaluated["metrics"]["evaluation"] == summary  # the list stays light: no samples, no prompts
    assert evaluated["warnings"] == [POOR_FIT] and evaluated["metrics"]["warnings"] == [POOR_FIT]
    assert evaluated["metrics"]["rewardMean"] == 0.82  # the spec's jq line still reads it
    assert listed["v3"]["metrics"]["evaluation"] == {"skipped": "eval_fraction 0"}
    assert "evaluation" not in listed["v1"]["metrics"] and listed["v1"]["warnings"] == []
    # The README's `jq '.[] | {version, better: .metrics.evaluation.better, winRate: .metrics.evaluation.winRate}'`
    evaluations = {name: v["metrics"].get("evaluation") or {} for name, v in listed.items()}
    assert {name: (e.get("better"), e.get("winRate")) for name, e in evaluations.items()} == {
        "v3": (None, None), "v2": (True, 0.66), "v1": (None, None),
    }

    detail = api.get("/api/policies/my_agent/v2").json()
    assert detail["metrics"]["evaluation"] == API_EVALUATION  # with its samples
    assert detail["warnings"] == [POOR_FIT] and detail["rewardMean"] == 0.82
    plain = api.get("/api/policies/my_agent/v1").json()
    assert "evaluation" not in plain["metrics"] and plain["warnings"] == []


def test_the_list_reads_no_steps_and_the_detail_reads_them_in_one_query(api):
    """Versions with thousands of steps each: the list's queries stay few and never touch the step rows; a version's
    own body reads its steps with one query."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    steps = [{"step": s, "objective/scores": 0.5, "objective/kl": 0.01 * s, "loss/total": 0.3} for s in range(1, 3001)]
    for number in (1, 2, 3):
        add_steps(make_version("my_agent", number, "trained", metrics=TRAINED_METRICS, step=3000), steps)

    with CaptureQueriesContext(connection) as listing:
        body = api.get("/api/policies/my_agent").json()
    assert [v["metrics"]["rewardMean"] for v in body] == [0.82] * 3
    assert not [q["sql"] for q in listing.captured_queries if "policies_trainingstep" in q["sql"]]
    # token + user, agent, versions, the human scores' one grouped query (training.deployment), ...
    assert len(listing.captured_queries) <= 6, [q["sql"] for q in listing.captured_queries]

    with CaptureQueriesContext(connection) as detail:
        body = api.get("/api/policies/my_agent/v2").json()
    assert len(body["metrics"]["history"]) == 3000 and body["metrics"]["history"][-1]["kl"] == 30.0
    assert len([q for q in detail.captured_queries if "policies_trainingstep" in q["sql"]]) == 1
    assert len(detail.captured_queries) <= 5, [q["sql"] for q in detail.captured_queries]


@pytest.mark.parametrize("path, detail", [
    ("/api/policies/my_agent/v9", "Version 'v9' of agent 'my_agent' not found"),
    ("/api/policies/my_agent/1", "Version '1' of agent 'my_agent' not found"),
    ("/api/policies/ghost/v1", "Agent 'ghost' not found"),
])
def test_unknown_versions_are_404(api, path, detail):
    make_version("my_agent", 1, "trained")
    assert_error(api.get(path), 404, detail)


def test_cancelling_a_queued_version(api):
    make_version("my_agent", 1, "queued")

    response = api.post("/api/policies/my_agent/v1/cancel")

    assert response.status_code == 200, response.content
    assert response.json()["status"] == "cancelled"
    assert PolicyVersion.objects.get().status == "cancelled"


def test_cancelling_a_running_version_requests_it(api):
    make_version("my_agent", 1, "running")

    body = api.post("/api/policies/my_agent/v1/cancel").json()

    # requested, not done: the training process sees the request at its next step and records the cancellation
    assert body["cancelRequested"] is True and body["status"] == "running"
    assert PolicyVersion.objects.get().cancel_requested


@pytest.mark.parametrize("status", ["trained", "failed", "cancelled"])
def test_cancelling_a_finished_version_is_409(api, status):
    make_version("my_agent", 1, status)
    assert_error(api.post("/api/policies/my_agent/v1/cancel"), 409)
    assert PolicyVersion.objects.get().status == status


# --- the spec's Quick Start, as written, plus auth -------------------------------------------------------------


def test_quick_start(api):
    # 1. Collect feedback (minimum 10 samples): the spec's body, then nine more.
    quick_start = {
        "prompt": "What is the capital of France?", "response": "Paris is the capital of France.",
        "score": 0.9, "runId": "run_123", "notes": "Accurate answer",
    }
    assert api.post("/api/policies/feedback/my_agent", quick_start).status_code == 201
    for i in range(9):
        answer = {"prompt": f"What is {i} + {i}?", "response": f"{2 * i}", "score": 0.1 * i, "runId": f"run_{i}"}
        assert api.post("/api/policies/feedback/my_agent", answer).status_code == 201
    # The operator points this agent at the tiny offline model (the spec's bodies name none).
    Agent.objects.filter(name="my_agent").update(
        default_training_config={"base_model": MODEL, "batch_size": 4, "mini_batch_size": 2}
    )

    # 2. Estimate training (dry run).
    dry = api.post("/api/policies/train_policy/my_agent", {"dryRun": True, "maxSteps": 1000, "learningRate": 1e-5})
    assert dry.status_code == 200, dry.content
    assert set(dry.json()) - ADDED_DRY_RUN_KEYS == DRY_RUN_KEYS
    assert dry.json()["feedbackCount"] == 10 and dry.json()["estimatedSteps"] == 1000

    # 3. Train policy.
    queued = api.post("/api/policies/train_policy/my_agent", {"dryRun": False, "maxSteps": 1000, "learningRate": 1e-5})
    assert queued.status_code == 202
    assert {"status": "queued", "version": "v1", "agent": "my_agent", "maxSteps": 1000}.items() <= queued.json().items()

    # 4. List policies.
    listed = api.get("/api/policies/my_agent")
    assert listed.status_code == 200
    assert [(v["version"], v["status"], v["policyId"]) for v in listed.json()] == [
        ("v1", "queued", queued.json()["policyId"])
    ]


# --- OpenAPI ---------------------------------------------------------------------------------------------------


def test_the_openapi_schema_is_valid_and_lists_the_spec_endpoints(anonymous):
    from drf_spectacular.validation import validate_schema

    response = anonymous.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")

    assert response.status_code == 200
    schema = json.loads(response.content)
    validate_schema(schema)
    assert {
        "/api/policies/": {"get"},
        "/api/policies/feedback/{agent}": {"post", "get"},
        "/api/policies/feedback/{agent}/{run_id}": {"patch", "get"},
        "/api/policies/train_policy/{agent}": {"post"},
        "/api/policies/{agent}": {"get"},
        "/api/policies/{agent}/{version}": {"get"},
        "/api/policies/{agent}/{version}/events": {"get"},
        "/api/policies/{agent}/{version}/cancel": {"post"},
        "/api/policies/{agent}/{version}/promote": {"post"},
        "/api/policies/{agent}/traffic": {"get", "put"},
        "/api/policies/{agent}/compare": {"get"},  # issue 21: comparisons in the API
        "/api/policies/{agent}/comparisons": {"get", "post"},
        "/api/policies/{agent}/comparisons/{comparison}": {"get"},
    } == {path: set(ops) - {"parameters"} for path, ops in schema["paths"].items()}
    feedback_body = schema["components"]["schemas"]["FeedbackRequestBodyRequest"]
    assert len(feedback_body["oneOf"]) == 2  # one record, or a list of them
    for name, samples in (("PolicyVersionSummary", False), ("PolicyVersion", True)):
        version = schema["components"]["schemas"][name]["properties"]
        assert version["warnings"]["items"] == {"type": "string"}
        evaluated, skipped = version["metrics"]["properties"]["evaluation"]["oneOf"]
        assert {"better", "winRate", "winRateCi", "kl", "heldoutPrompts", "scoredBy"} <= set(evaluated["required"])
        assert ("samples" in evaluated["properties"]) is samples and skipped["required"] == ["skipped"]
        assert {"elapsedSeconds", "estimatedFinish", "progress"} <= set(version)  # issue 21: the job's timing
    docs = anonymous.get("/api/docs/")
    assert docs.status_code == 200
    assert b"/static/drf_spectacular_sidecar/swagger-ui-dist/" in docs.content  # served locally: works offline
