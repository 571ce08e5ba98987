"""KTO and DPO: the preference data built from scored feedback, real (tiny) trainings through RLHFTrainer, and the
API refusing feedback that cannot train them.

The data construction is pure Python (preference_data.py, which the web process calls at request time); the
trainings run TRL's KTOTrainer / DPOTrainer on the built-in "n3-tiny-random" model for a few steps.
"""
from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from feedback import services as feedback_services
from n3_server.rlhf import ConfigError, Progress, RewardModelConfig, RLHFTrainer, TrainingCancelled, TrainingConfig
from n3_server.rlhf.base_models import load_causal_lm, load_tokenizer
from n3_server.rlhf.data import FeedbackRecord
from n3_server.rlhf.modeling import lora_config_for
from n3_server.rlhf.preference_data import (
    MAX_PAIRS_PER_PROMPT,
    MIN_PREFERENCE_PAIRS,
    check_preference_data,
    dpo_pairs,
    kto_data,
)
from n3_server.rlhf.results import TrainingResult
from n3_server.rlhf.timing import calibration_records
from n3_server.rlhf.trl_algorithms import micro_batch_size
from n3_server.rlhf.trl_preference import train_dpo, train_kto
from policies.models import PolicyVersion

MODEL = "n3-tiny-random"
TOPICS = ["the weather", "python", "paris", "cats", "music", "the sea", "trains", "coffee"]


def record(prompt: str, response: str, score: float) -> FeedbackRecord:
    return FeedbackRecord(prompt=prompt, response=response, score=score)


def feedback() -> list[dict]:
    """Three scored answers per prompt: good (0.9), lukewarm (0.5), bad (0.1)."""
    rows = []
    for topic in TOPICS:
        prompt = f"Tell me about {topic}."
        rows += [
            {"prompt": prompt, "response": f"Sure! Here is a clear answer about {topic}.", "score": 0.9},
            {"prompt": prompt, "response": f"Something about {topic}, maybe.", "score": 0.5},
            {"prompt": prompt, "response": "I don't know, sorry.", "score": 0.1},
        ]
    return rows


def records() -> list[FeedbackRecord]:
    return [FeedbackRecord(**row) for row in feedback()]


def tiny_config(**overrides) -> TrainingConfig:
    """A run of a few seconds: 3 steps of 4 examples, short samples, a one-epoch reward model."""
    values = dict(
        base_model=MODEL, max_steps=3, batch_size=4, mini_batch_size=2, max_new_tokens=8, learning_rate=1e-3,
        reward_model_config=RewardModelConfig(num_epochs=1, batch_size=4, learning_rate=1e-3),
    )
    return TrainingConfig(**{**values, **overrides})


# ---------------------------------------------------------------------------------------------------------------
# KTO's examples
# ---------------------------------------------------------------------------------------------------------------
def test_kto_labels_by_the_thresholds_and_leaves_out_the_middle():
    data = kto_data(records(), desirable_threshold=0.6, undesirable_threshold=0.4, seed=0)

    assert (data.n_desirable, data.n_undesirable, data.n_dropped) == (8, 8, 8)
    good = {f"Sure! Here is a clear answer about {t}." for t in TOPICS}
    assert {e.completion for e in data.examples if e.label} == good
    assert {e.completion for e in data.examples if not e.label} == {"I don't know, sorry."}
    assert not any("maybe" in e.completion for e in data.examples)  # the 0.5s are too lukewarm for either side


def test_kto_thresholds_are_inclusive():
    rows = [record("p", "good", 0.6), record("p", "bad", 0.4), record("p", "meh", 0.5)]
    data = kto_data(rows, desirable_threshold=0.6, undesirable_threshold=0.4, seed=0)
    assert sorted((e.completion, e.label) for e in data.examples) == [("bad", False), ("good", True)]


@pytest.mark.parametrize("n_good, n_bad, weights", [(2, 6, (3.0, 1.0)), (6, 2, (1.0, 3.0)), (4, 4, (1.0, 1.0))])
def test_kto_weights_make_both_classes_count_the_same(n_good, n_bad, weights):
    rows = [record(f"p{i}", "good", 0.9) for i in range(n_good)] + [record(f"q{i}", "bad", 0.1) for i in range(n_bad)]
    data = kto_data(rows, desirable_threshold=0.6, undesirable_threshold=0.4, seed=0)

    assert (data.desirable_weight, data.undesirable_weight) == weights
    assert data.desirable_weight * n_good == data.undesirable_weight * n_bad  # TRL's recommended range, lower end


def test_kto_examples_are_shuffled_deterministically_by_the_seed():
    rows = [record(f"p{i}", f"r{i}", 0.9 if i % 2 else 0.1) for i in range(40)]

    def order(seed):
        data = kto_data(rows, desirable_threshold=0.6, undesirable_threshold=0.4, seed=seed)
        return [e.prompt for e in data.examples]

    assert order(1) == order(1)
    assert order(1) != order(2)
    assert order(1) != [r.prompt for r in rows] and sorted(order(1)) == sorted(r.prompt for r in rows)


def test_kto_needs_both_classes():
    rows = [record(f"p{i}", "good", 0.9) for i in range(12)] + [record("p", "meh", 0.5)]
    with pytest.raises(ConfigError) as excinfo:
        kto_data(rows, desirable_threshold=0.6, undesirable_threshold=0.4, seed=0)
    assert str(excinfo.value).startswith(
        "KTO needs both desirable (score >= 0.6) and undesirable (score <= 0.4) examples; "
        "found 12 desirable and 0 undesirable."
    )


# ---------------------------------------------------------------------------------------------------------------
# DPO's pairs
# ---------------------------------------------------------------------------------------------------------------
def test_dpo_pairs_are_within_one_prompt_chosen_higher_and_respect_the_margin():
    pairs = dpo_pairs(records(), margin=0.2, seed=0)

    assert len(pairs) == 3 * len(TOPICS)  # 0.9 > 0.5, 0.9 > 0.1, 0.5 > 0.1 for every prompt
    scores = {(r.prompt, r.response): r.score for r in records()}
    for pair in pairs:
        chosen, rejected = scores[pair.prompt, pair.chosen], scores[pair.prompt, pair.rejected]  # same prompt
        assert chosen - rejected == pytest.approx(pair.score_gap) and pair.score_gap >= 0.2 - 1e-9

    wide = dpo_pairs(records(), margin=0.5, seed=0)
    assert {(p.chosen.startswith("Sure"), p.rejected) for p in wide} == {(True, "I don't know, sorry.")}
    assert len(wide) == len(TOPICS)  # only 0.9 vs 0.1 differs by 0.5 or more


def test_dpo_pairs_never_cross_prompts_and_skip_identical_responses():
    rows = [record(f"p{i}", f"r{i}", 0.9 if i % 2 else 0.1) for i in range(20)]  # every prompt answered once
    rows += [record("q", "same", 0.9), record("q", "same", 0.1)]  # two reviews of one response: no preference
    rows += [record("s", "a", 0.8), record("s", "b", 0.2), record("s", "a", 0.8)]  # a duplicate record: one pair
    with pytest.raises(ConfigError, match="this feedback yields 1\\."):
        dpo_pairs(rows, margin=0.2, seed=0)


def test_dpo_caps_the_pairs_per_prompt_deterministically():
    rows = [record("busy", f"good {i}", 0.9) for i in range(10)] + [record("busy", f"bad {i}", 0.1) for i in range(10)]
    rows += [record("quiet", "yes", 0.8), record("quiet", "no", 0.2)]

    pairs = dpo_pairs(rows, margin=0.2, seed=3)

    assert sum(p.prompt == "busy" for p in pairs) == MAX_PAIRS_PER_PROMPT  # of 100 qualifying pairs
    assert sum(p.prompt == "quiet" for p in pairs) == 1
    assert pairs == dpo_pairs(list(reversed(rows)), margin=0.2, seed=3)  # the seed decides, not the records' order
    assert pairs != dpo_pairs(rows, margin=0.2, seed=4)


def test_dpo_needs_enough_pairs():
    rows = [record("p", "good", 0.9), record("p", "bad", 0.1)] + [record(f"q{i}", "r", 0.5) for i in range(10)]
    with pytest.raises(ConfigError) as excinfo:
        dpo_pairs(rows, margin=0.2, seed=0)
    assert str(excinfo.value).startswith(
        f"DPO needs at least {MIN_PREFERENCE_PAIRS} preference pairs (responses to the same prompt whose scores "
        "differ by at least 0.2); this feedback yields 1."
    )


# ---------------------------------------------------------------------------------------------------------------
# The request-time check, the config fields, the dry run's sample
# ---------------------------------------------------------------------------------------------------------------
def test_check_follows_the_algorithm_and_its_fields():
    one_class = [record(f"p{i}", "good", 0.9) for i in range(10)]
    check_preference_data(one_class, tiny_config(algorithm="ppo"))  # not KTO/DPO: nothing to check
    with pytest.raises(ConfigError, match="found 10 desirable and 0 undesirable"):
        check_preference_data(one_class, tiny_config(algorithm="kto"))
    check_preference_data(records(), tiny_config(algorithm="dpo"))
    with pytest.raises(ConfigError, match="at least 0.9\\); this feedback yields 0"):
        check_preference_data(records(), tiny_config(algorithm="dpo", dpo_pair_margin=0.9))


@pytest.mark.parametrize("fields, message", [
    ({"kto_desirable_threshold": 0.4, "kto_undesirable_threshold": 0.4}, "must be below kto_desirable_threshold"),
    ({"kto_desirable_threshold": 1.5}, "kto_desirable_threshold must be in [0.0, 1.0]"),
    ({"dpo_pair_margin": 0.0}, "dpo_pair_margin must be a positive number"),
    ({"algorithm": "kto", "batch_size": 1, "mini_batch_size": 1}, "KTO estimates its KL term"),
])
def test_bad_preference_fields_are_config_errors(fields, message):
    with pytest.raises(ConfigError, match=message.replace("[", "\\[").replace("]", "\\]")):
        tiny_config(**fields)


def test_kto_micro_batches_hold_at_least_two_examples():
    assert micro_batch_size(tiny_config(batch_size=8, mini_batch_size=1)) == 1
    assert micro_batch_size(tiny_config(batch_size=8, mini_batch_size=1), minimum=2) == 2
    assert micro_batch_size(tiny_config(batch_size=3, mini_batch_size=2), minimum=2) == 3
    assert micro_batch_size(tiny_config(batch_size=8, mini_batch_size=4), minimum=2) == 4


@pytest.mark.parametrize("algorithm", ["kto", "dpo"])
def test_the_dry_runs_sample_still_trains_the_algorithm(algorithm):
    """A plain random sample of 22 of these 200 records would hold one class or no pair most of the time."""
    rows = [record(f"p{i}", "answer", 0.5) for i in range(180)]
    rows += [record(f"q{i}", "good", 0.9) for i in range(10)] + [record(f"q{i}", "bad", 0.1) for i in range(10)]
    config = TrainingConfig(base_model=MODEL, algorithm=algorithm)  # reward-model batches of 8: 22 records

    sample = calibration_records(rows, config)

    assert len(sample) == 22 and len(set(sample)) == 22
    check_preference_data(sample, config)


def test_preference_data_is_torch_free():
    """The web process imports it at request time: preference_data, what it imports and the package's __init__
    (which loads the trainer only when RLHFTrainer is asked for) must not load torch."""
    code = (
        "import sys\n"
        "import n3_server.rlhf.preference_data\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    root = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-c", code], cwd=root, check=True, timeout=60)


# ---------------------------------------------------------------------------------------------------------------
# Real training, through RLHFTrainer and directly
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module", params=["kto", "dpo"])
def trained(request, tmp_path_factory):
    algorithm = request.param
    output_dir = tmp_path_factory.mktemp(algorithm) / "my_agent" / "v1"
    events: list[Progress] = []
    result = RLHFTrainer(tiny_config(algorithm=algorithm)).train(
        feedbacks=feedback(), output_dir=output_dir, callback=events.append,
    )
    return algorithm, result, output_dir, events


@pytest.mark.slow
def test_training_writes_the_spec_layout_and_a_usable_policy(trained):
    algorithm, result, output_dir, events = trained

    assert sorted(p.name for p in output_dir.iterdir()) == [
        "policy", "reward_model", "training.log", "training_results.json",
    ]
    assert (output_dir / "reward_model" / "reward_head.pt").is_file()  # still fitted: it scores the final sample
    assert (result.algorithm, result.training_steps, len(result.history)) == (algorithm, 3, 3)
    assert [e.step for e in events if e.phase == "policy"] == [1, 2, 3]
    assert all(math.isfinite(h["loss/total"]) and h["objective/scores"] is None for h in result.history[:-1])
    last = result.history[-1]
    assert 0 <= result.final_reward_mean == last["objective/scores"] <= 1 and math.isfinite(result.final_reward_std)
    assert math.isfinite(result.final_kl) and last["response_length"] > 0  # measured on the final sample
    assert TrainingResult.load(output_dir).history == result.history
    log = (output_dir / "training.log").read_text()
    assert f"with {algorithm.upper()}" in log and f"{algorithm} step 3/3" in log and "final sample" in log

    model = AutoModelForCausalLM.from_pretrained(str(result.model_path))
    tokenizer = AutoTokenizer.from_pretrained(str(result.model_path))
    inputs = tokenizer("Tell me about tea.\n", return_tensors="pt")
    assert model.generate(**inputs, max_new_tokens=4).shape[1] > inputs["input_ids"].shape[1]
    assert not any("lora" in name for name, _ in model.named_parameters())


@pytest.mark.slow
def test_cancel_leaves_no_version_behind(tmp_path):
    output_dir = tmp_path / "v1"
    with pytest.raises(TrainingCancelled, match="policy phase \\(step 1 of 3\\)"):
        RLHFTrainer(tiny_config(algorithm="dpo")).train(
            feedbacks=feedback(), output_dir=output_dir, callback=lambda p: p.phase == "policy",
        )
    assert sorted(p.name for p in output_dir.iterdir()) == ["training.log"]


def tiny_policy(use_lora: bool = True):
    model = load_causal_lm(MODEL)
    return get_peft_model(model, lora_config_for(model, r=8, alpha=16, dropout=0.0)) if use_lora else model


def constant_reward(prompts, responses):
    return torch.full((len(responses),), 0.5)


@pytest.mark.slow
def test_callback_returning_true_stops_after_that_step():
    """Called directly (not through RLHFTrainer, whose callback raises): True stops TRL cleanly, then raises."""
    policy = tiny_policy()
    with pytest.raises(TrainingCancelled, match="after KTO step 1 of 3") as excinfo:
        train_kto(policy=policy, tokenizer=load_tokenizer(MODEL), prompts=TOPICS, reward_fn=constant_reward,
                  config=tiny_config(algorithm="kto"), device=torch.device("cpu"), records=records(),
                  callback=lambda p: True)
    assert [h["step"] for h in excinfo.value.history] == [1]
    assert list(policy.peft_config) == ["default"]  # TRL's "ref" adapter copy was dropped


@pytest.mark.slow
def test_full_fine_tuning_trains_in_place_and_measures_kl_against_the_start():
    policy = tiny_policy(use_lora=False)
    before = [p.detach().clone() for p in policy.parameters()]
    history = train_dpo(policy=policy, tokenizer=load_tokenizer(MODEL), prompts=TOPICS, reward_fn=constant_reward,
                        config=tiny_config(algorithm="dpo", use_lora=False, max_steps=2), device=torch.device("cpu"),
                        records=records())
    assert [h["step"] for h in history] == [1, 2]
    assert history[-1]["objective/scores"] == 0.5 and math.isfinite(history[-1]["objective/kl"])
    assert any(not torch.equal(a, b) for a, b in zip(before, policy.parameters()))


@pytest.mark.slow
def test_dry_run_estimates_a_preference_run(tmp_path):
    estimate = RLHFTrainer(tiny_config(algorithm="dpo")).estimate(feedback(), recalibrate=True)
    assert estimate.estimated_steps == 3 and estimate.estimated_time_minutes > 0


# ---------------------------------------------------------------------------------------------------------------
# The API refuses feedback that cannot train KTO / DPO
# ---------------------------------------------------------------------------------------------------------------
def seed_feedback(agent: str, rows: list[dict]) -> None:
    feedback_services.record_feedback_batch(agent_name=agent, records=rows)


ONE_PAIR = [{"prompt": "Same question?", "response": "Good.", "score": 0.9},
            {"prompt": "Same question?", "response": "Bad.", "score": 0.1}]
UNIQUE_PROMPTS = [{"prompt": f"Question {i}?", "response": f"Answer {i}.", "score": 0.8} for i in range(10)]


@pytest.mark.django_db
@pytest.mark.parametrize("dry_run", [True, False])
def test_dpo_with_too_few_pairs_is_a_400_naming_the_count(api, dry_run):
    seed_feedback("my_agent", ONE_PAIR + UNIQUE_PROMPTS)

    response = api.post("/api/policies/train_policy/my_agent",
                        {"dryRun": dry_run, "baseModel": MODEL, "algorithm": "dpo"}, format="json")

    assert response.status_code == 400, response.content
    detail = response.json()["detail"]
    assert detail.startswith("DPO needs at least 4 preference pairs") and "this feedback yields 1." in detail
    assert not PolicyVersion.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize("dry_run", [True, False])
def test_kto_with_one_class_is_a_400_naming_the_counts(api, dry_run):
    seed_feedback("my_agent", UNIQUE_PROMPTS)

    response = api.post("/api/policies/train_policy/my_agent",
                        {"dryRun": dry_run, "baseModel": MODEL, "algorithm": "kto", "ktoDesirableThreshold": 0.7},
                        format="json")

    assert response.status_code == 400, response.content
    assert "found 10 desirable and 0 undesirable" in response.json()["detail"]
    assert not PolicyVersion.objects.exists()


@pytest.mark.django_db
def test_dpo_with_enough_pairs_is_queued(api):
    seed_feedback("my_agent", feedback())

    response = api.post("/api/policies/train_policy/my_agent",
                        {"dryRun": False, "baseModel": MODEL, "algorithm": "dpo", "dpoPairMargin": 0.3}, format="json")

    assert response.status_code == 202, response.content
    assert PolicyVersion.objects.get().config["dpo_pair_margin"] == 0.3


@pytest.mark.django_db
@pytest.mark.parametrize("algorithm, expected", [
    ("dpo", {"algorithm": "dpo", "pairs": 18, "desirable": None, "undesirable": None, "leftOut": None}),
    ("kto", {"algorithm": "kto", "pairs": None, "desirable": 6, "undesirable": 6, "leftOut": 6}),
])
def test_the_dry_run_says_what_the_feedback_yields_the_algorithm(api, algorithm, expected):
    """The counts the admin's Train preview shows: 8 prompts of 3 answers (0.9, 0.5, 0.1), 2 held out for the
    evaluation; DPO pairs each two of a prompt's answers (3 a prompt), KTO leaves the 0.5s out."""
    seed_feedback("my_agent", feedback())

    response = api.post("/api/policies/train_policy/my_agent",
                        {"dryRun": True, "baseModel": MODEL, "algorithm": algorithm}, format="json")

    assert response.status_code == 200, response.content
    assert response.json()["preferenceData"] == {**expected, "heldoutPrompts": 2}


@pytest.mark.django_db
def test_the_dry_run_counts_no_pairs_on_a_sample(api, settings):
    """Above N3_ESTIMATE_SAMPLE records the dry run reads a sample, whose pairs would not be the run's: null."""
    settings.N3_ESTIMATE_SAMPLE = 12
    seed_feedback("my_agent", feedback())

    response = api.post("/api/policies/train_policy/my_agent",
                        {"dryRun": True, "baseModel": MODEL, "algorithm": "dpo"}, format="json")

    assert response.status_code == 200, response.content
    assert response.json()["preferenceData"] is None and response.json()["feedbackCount"] == 24
