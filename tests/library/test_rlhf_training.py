"""The training core as the spec's Python API uses it: config and presets, feedback checks, the reward model,
the dry-run estimate and a real (tiny) training run with the spec's file layout.

Real training throughout, on the built-in offline models ("n3-tiny-random": a micro GPT-2, seconds per run).
MODELS_DIR comes from tests/settings.py, so base models and timing calibrations are built once per machine.
"""
from __future__ import annotations

import json
import math

import pytest
import torch
from peft import get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from n3_server.rlhf import (
    MIN_FEEDBACK,
    BaseModelUnavailable,
    ConfigError,
    FeedbackFormatError,
    InsufficientFeedbackError,
    Progress,
    RewardModelConfig,
    RLHFTrainer,
    TrainingCancelled,
    TrainingConfig,
    TrainingResult,
)
from n3_server.rlhf.base_models import load_causal_lm, load_tokenizer
from n3_server.rlhf.context import auto_learning_rate, slow_rate_warning, with_learning_rate
from n3_server.rlhf.data import prepare_feedback, train_val_split
from n3_server.rlhf.errors import NonFiniteError
from n3_server.rlhf.modeling import lora_config_for
from n3_server.rlhf.reward_model import fit_reward_model, load_reward_model, pearson, spearman
from n3_server.rlhf.trl_algorithms import train_grpo, train_rloo, trl_args

MODEL = "n3-tiny-random"
TOPICS = [
    "the weather", "python", "paris", "cats", "music", "the sea", "trains", "coffee", "maths", "history",
    "rain", "books", "bread", "rivers", "chess", "gardens", "the moon", "bicycles", "tea", "painting",
]
EQUAL_SCORES_WARNING = (
    "All feedback scores are equal (0.5): the reward model cannot learn a preference. Ensure scores vary."
)


def toy_feedback(topics=TOPICS) -> list[dict]:
    """A learnable preference: for every prompt a helpful answer scored high and a shrug scored low (each prompt
    appears with both, so only the response can explain the score)."""
    records = []
    for i, topic in enumerate(topics):
        prompt = f"Tell me about {topic}."
        records.append({"prompt": prompt, "response": f"Sure! Here is a clear answer about {topic}.", "score": 0.9,
                        "run_id": f"run_{i}_a"})
        records.append({"prompt": prompt, "response": "I don't know, sorry.", "score": 0.1, "run_id": f"run_{i}_b"})
    return records


def tiny_config(**overrides) -> TrainingConfig:
    """A run of a few seconds: few short rollouts, one PPO epoch, a quick reward model."""
    values = dict(
        base_model=MODEL, max_steps=4, batch_size=4, mini_batch_size=2, ppo_epochs=1, max_new_tokens=12,
        learning_rate=1e-4, reward_model_config=RewardModelConfig(num_epochs=3, batch_size=4, learning_rate=1e-3),
    )
    return TrainingConfig(**{**values, **overrides})


# ---------------------------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------------------------
class TestTrainingConfig:
    def test_spec_python_api_example(self):
        config = TrainingConfig(base_model="gpt2", use_lora=True, learning_rate=1e-5, max_steps=1000, batch_size=8)
        config.validate()
        # the spec's explicit rate is the rate used (not replaced by the automatic one), and the dry run says what it
        # will do: a tenth or less of gpt2's automatic LoRA rate barely moves the adapter
        assert with_learning_rate(config).learning_rate == 1e-5 and auto_learning_rate(config) == 2e-4
        assert "1e-05 is a tenth or less of the rate n3 would choose" in slow_rate_warning(config)
        left_out = TrainingConfig(base_model="gpt2", use_lora=True, max_steps=1000, batch_size=8)
        assert with_learning_rate(left_out).learning_rate == 2e-4 and slow_rate_warning(left_out) is None
        assert TrainingConfig.from_dict(config.to_dict()) == config

    @pytest.mark.parametrize("name, expected", [
        ("quick_test", {"base_model": "gpt2", "max_steps": 50, "batch_size": 4, "learning_rate": 1e-4}),
        ("production", {"base_model": "gpt2-medium", "max_steps": 5000, "batch_size": 16, "learning_rate": 1e-5,
                        "use_lora": True, "lora_r": 16}),
        ("low_memory", {"base_model": "gpt2", "use_lora": True, "lora_r": 4, "batch_size": 4, "mini_batch_size": 2,
                        "gradient_accumulation_steps": 4}),
        ("high_performance", {"base_model": "gpt2-large", "use_lora": False, "batch_size": 32,
                              "learning_rate": 1e-5, "device": "cuda"}),
    ])
    def test_presets_have_the_spec_values(self, name, expected):
        config = TrainingConfig.from_preset(name)
        assert {key: getattr(config, key) for key in expected} == expected

    def test_preset_overrides_and_unknown_preset(self):
        assert TrainingConfig.from_preset("quick_test", base_model=MODEL).base_model == MODEL
        with pytest.raises(ConfigError, match="Unknown preset 'fast'"):
            TrainingConfig.from_preset("fast")

    def test_unknown_fields_are_rejected_by_name(self):
        with pytest.raises(ConfigError, match="learning_rat"):
            TrainingConfig.from_dict({"learning_rat": 1e-5})
        with pytest.raises(ConfigError, match="reward_model_config.epochs"):
            TrainingConfig.from_dict({"reward_model_config": {"epochs": 2}})

    @pytest.mark.parametrize("field, value, message", [
        ("learning_rate", 0, "learning_rate must be a positive number"),
        ("batch_size", -4, "batch_size must be a positive number"),
        ("max_steps", 2.5, "max_steps must be of type int"),
        ("use_lora", "yes", "use_lora must be of type bool"),
        ("mini_batch_size", 64, r"mini_batch_size \(64\) cannot exceed batch_size"),
        ("device", "tpu", "device must be one of"),
        ("algorithm", "a2c", "algorithm must be one of"),
        ("lora_dropout", 1.0, "lora_dropout must be in"),
        ("reward_model_config", {"num_epochs": 0}, "num_epochs must be a positive number"),
        ("batch_size", 1_000_000, "batch_size must be at most 4096"),
        ("max_new_tokens", 100_000, "max_new_tokens must be at most 8192"),
        ("reward_model_config", {"batch_size": 10**6}, "batch_size must be at most 4096"),
    ])
    def test_bad_values_are_rejected(self, field, value, message):
        with pytest.raises(ConfigError, match=message):
            TrainingConfig.from_dict({field: value})

    def test_spec_troubleshooting_assignments_and_round_trip(self):
        config = TrainingConfig()
        config.reward_model_config.num_epochs = 2
        config.reward_model_config.lora_dropout = 0.2
        assert TrainingConfig.from_dict(config.to_dict()) == config


# ---------------------------------------------------------------------------------------------------------------
# Feedback
# ---------------------------------------------------------------------------------------------------------------
class TestFeedback:
    def test_insufficient_feedback_has_the_spec_message(self, tmp_path):
        trainer = RLHFTrainer(tiny_config())
        with pytest.raises(InsufficientFeedbackError) as excinfo:
            trainer.train(feedbacks=toy_feedback()[:5], output_dir=tmp_path / "v1")
        assert str(excinfo.value) == "Insufficient feedback: 5 samples (minimum 10 required)"
        assert not (tmp_path / "v1").exists()  # rejected before touching the disk
        with pytest.raises(InsufficientFeedbackError, match="5 samples"):
            trainer.estimate(toy_feedback()[:5])

    def test_records_awaiting_review_are_skipped_not_counted(self):
        records = toy_feedback()[:MIN_FEEDBACK - 1] + [{"prompt": "p", "response": "r", "score": None}] * 3
        with pytest.raises(InsufficientFeedbackError, match=f"{MIN_FEEDBACK - 1} samples"):
            prepare_feedback(records)
        data = prepare_feedback(toy_feedback() + [{"prompt": "p", "response": "r", "score": None}])
        assert (len(data.records), data.skipped_unscored) == (2 * len(TOPICS), 1)

    @pytest.mark.parametrize("bad, message", [
        ({"response": "r", "score": 0.5}, "Feedback record 3: field 'prompt' is required"),
        ({"prompt": "p", "response": "r", "score": 1.5},
         "Feedback record 3: field 'score' must be a number between 0 and 1"),
        ({"prompt": "p", "response": "r", "score": "0.9"}, "Feedback record 3: field 'score' must be a number"),
        ({"prompt": "p", "response": None, "score": 0.5}, "Feedback record 3: field 'response' is required"),
        ({"prompt": "p", "response": "r"}, "Feedback record 3: missing field 'score'"),
        ("just text", "Feedback record 3 must be an object"),
    ])
    def test_malformed_record_is_named_by_index_and_field(self, bad, message):
        records = toy_feedback()
        records.insert(3, bad)
        with pytest.raises(FeedbackFormatError) as excinfo:
            prepare_feedback(records)
        assert str(excinfo.value).startswith(message)

    def test_run_id_in_either_spelling(self):
        records = toy_feedback()
        records[0] = {"prompt": "p", "response": "r", "score": 0.5, "runId": "abc"}
        assert prepare_feedback(records).records[0].run_id == "abc"

    def test_split_is_deterministic_and_disjoint(self):
        records = prepare_feedback(toy_feedback()).records
        train, val = train_val_split(records, 0.2, seed=7)
        assert (len(train), len(val)) == (32, 8)
        assert sorted(r.score for r in val) == [0.1] * 4 + [0.9] * 4  # stratified by score
        assert set(train).isdisjoint(val) and set(train) | set(val) == set(records)
        assert train_val_split(records, 0.2, seed=7) == (train, val)

    def test_score_statistics_and_small_dataset_warning(self):
        data = prepare_feedback(toy_feedback())
        assert data.score_mean == pytest.approx(0.5) and data.score_std == pytest.approx(0.4)
        assert any("Only 40 scored feedback samples" in w for w in data.warnings)
        assert EQUAL_SCORES_WARNING not in data.warnings


# ---------------------------------------------------------------------------------------------------------------
# Reward model
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def reward_model():
    records = prepare_feedback(toy_feedback()).records
    config = RewardModelConfig(num_epochs=8, batch_size=4, learning_rate=1e-3, validation_split=0.25)
    return fit_reward_model(records, base_model=MODEL, config=config, device=torch.device("cpu"), seed=0)


@pytest.mark.slow


class TestRewardModel:
    def test_fit_beats_the_predict_the_mean_baseline(self, reward_model):
        metrics = reward_model.metrics
        # 40 records (< cross_validation_below): every record predicted once by a fold model that never saw it
        assert metrics["validation"] == "5-fold cross-validation"
        assert (metrics["train_size"], metrics["val_size"]) == (40, 40)
        assert 1 <= metrics["best_epoch"] <= 8 and len(metrics["history"]) == 8
        assert reward_model.warnings == []
        assert metrics["val_mse"] < 0.5 * metrics["val_mse_baseline"], metrics
        assert metrics["val_pearson"] > 0.5, metrics
        # a topic it never saw: it learned the preference, not the prompts
        scores = reward_model.score(
            ["Tell me about owls."] * 2, ["Sure! Here is a clear answer about owls.", "I don't know, sorry."]
        )
        assert scores.shape == (2,) and scores[0] > scores[1] + 0.2
        assert ((scores >= 0) & (scores <= 1)).all()

    def test_save_and_load_scores_identically(self, reward_model, tmp_path):
        path = reward_model.save(tmp_path / "reward_model")
        for name in ("base_model/adapter_config.json", "base_model/adapter_model.safetensors", "reward_head.pt",
                     "config.json"):
            assert (path / name).is_file(), name
        saved = json.loads((path / "config.json").read_text())
        assert saved["base_model"] == MODEL and saved["max_length"] == 512
        assert saved["metrics"]["val_mse"] == pytest.approx(reward_model.metrics["val_mse"])

        loaded = load_reward_model(path)
        prompts = [r["prompt"] for r in toy_feedback()]
        responses = [r["response"] for r in toy_feedback()]
        torch.testing.assert_close(
            loaded.score(prompts, responses), reward_model.score(prompts, responses), rtol=0, atol=1e-6
        )

    def test_correlations(self):
        x, y = torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([2.0, 4.0, 5.0, 4.5])
        assert pearson(x, 2 * x + 1) == pytest.approx(1.0)
        assert pearson(x, -x) == pytest.approx(-1.0)
        assert pearson(x, torch.ones(4)) is None  # a constant prediction has no correlation
        assert pearson(x, y) == pytest.approx(4.25 / math.sqrt(5 * 5.1875))
        # ranks of y: 1, 2, 4, 3 -> rho = 1 - 6 * 2 / (4 * 15)
        assert spearman(x, y) == pytest.approx(0.8)
        # ties share their mean rank: ranks 1.5, 1.5, 3, 4
        assert spearman(torch.tensor([1.0, 1.0, 2.0, 3.0]), x) == pytest.approx(0.9487, abs=1e-4)


# ---------------------------------------------------------------------------------------------------------------
# Trainer
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One real training run shared by the tests that inspect its output; records progress and the live log."""
    output_dir = tmp_path_factory.mktemp("models") / "my_agent" / "v1"
    events: list[Progress] = []
    live_log: list[str] = []

    def callback(progress: Progress):
        events.append(progress)
        if progress.phase == "policy" and progress.step == 2:
            live_log.append((output_dir / "training.log").read_text())

    result = RLHFTrainer(tiny_config()).train(feedbacks=toy_feedback(), output_dir=output_dir, callback=callback)
    return result, output_dir, events, live_log[0]


@pytest.mark.slow


class TestRLHFTrainer:
    def test_estimate_training(self):
        trainer = RLHFTrainer(tiny_config(max_steps=10))
        estimate = trainer.estimate(toy_feedback())
        assert estimate.feedback_count == 2 * len(TOPICS)
        assert estimate.estimated_steps == 10
        assert (estimate.score_mean, estimate.score_std) == (pytest.approx(0.5), pytest.approx(0.4))
        assert estimate.model_config == {"base_model": MODEL, "use_lora": True, "learning_rate": 1e-4}
        assert estimate.seconds_per_step > 0 and estimate.estimated_time_minutes > 0

        # The measurement is cached: a longer run reuses it and costs exactly the extra steps.
        longer = RLHFTrainer(tiny_config(max_steps=110)).estimate(toy_feedback())
        assert longer.seconds_per_step == estimate.seconds_per_step
        extra_minutes = 100 * estimate.seconds_per_step / 60
        assert longer.estimated_time_minutes == pytest.approx(estimate.estimated_time_minutes + extra_minutes, abs=0.02)

    def test_estimate_warns_when_all_scores_are_equal(self):
        feedback = [{**record, "score": 0.5} for record in toy_feedback()]
        estimate = RLHFTrainer(tiny_config(max_steps=10)).estimate(feedback)
        assert EQUAL_SCORES_WARNING in estimate.warnings
        assert estimate.score_std == 0

    def test_train_writes_the_spec_layout(self, trained):
        result, output_dir, _, _ = trained
        assert result.model_path == output_dir / "policy"
        assert result.reward_model_path == output_dir / "reward_model"
        for name in (
            "policy/config.json", "policy/model.safetensors", "policy/tokenizer_config.json",
            "policy/generation_config.json", "reward_model/base_model/adapter_config.json",
            "reward_model/base_model/adapter_model.safetensors", "reward_model/reward_head.pt",
            "reward_model/config.json", "training_results.json", "training.log",
        ):
            assert (output_dir / name).is_file(), name
        assert not list(output_dir.glob(".*.tmp"))

    def test_result_metrics(self, trained):
        result, _, _, _ = trained
        assert result.training_steps == 4 and len(result.history) == 4
        last = result.history[-1]
        assert result.final_reward_mean == last["objective/scores"]
        assert result.final_reward_std == last["objective/scores_std"]
        assert (result.final_kl, result.final_loss) == (last["objective/kl"], last["loss/total"])
        assert 0 <= result.final_reward_mean <= 1 and math.isfinite(result.final_kl)
        assert result.feedback_count == 2 * len(TOPICS) and result.config["max_steps"] == 4
        assert result.reward_model_metrics["val_mse"] is not None
        assert result.duration_seconds > 0 and result.timings["total_s"] == result.duration_seconds

    def test_progress_phases_in_order(self, trained):
        _, _, events, _ = trained
        phases = [e.phase for e in events]
        assert phases.index("reward_model") < phases.index("policy") < phases.index("saving")
        policy_steps = [e.step for e in events if e.phase == "policy"]
        assert policy_steps == [1, 2, 3, 4]

    def test_training_log_is_written_live(self, trained):
        _, output_dir, _, live_log = trained
        assert "ppo step 1/4" in live_log  # already on disk while step 2 was reported
        log = (output_dir / "training.log").read_text()
        assert [f"ppo step {i}/4" in log for i in range(1, 5)] == [True] * 4
        assert "reward model epoch 3/3" in log and "Training complete" in log

    def test_version_evaluates_itself_against_its_base_on_heldout_prompts(self, trained):
        result, output_dir, events, _ = trained
        evaluation = result.evaluation
        # 20 distinct prompts, eval_fraction 0.2: 4 held out of every step of training, 4 samples each
        assert len(evaluation["heldout_prompts"]) == 4 and evaluation["n"] == 16
        assert result.reward_model_metrics["train_size"] == 2 * (len(TOPICS) - 4)  # their records never trained
        assert evaluation["baseline"] == f"base model {MODEL}"
        low, high = evaluation["win_rate_ci"]
        assert 0 <= low <= evaluation["win_rate"] <= high <= 1
        # better: a sound reward model and the judges' interval above 0.5; the verdict says which, in words
        assert evaluation["better"] == (low > 0.5 and evaluation["reward_model_ok"])
        assert evaluation["scored_by"].startswith("5 cross-validation fold reward models")
        assert len(evaluation["judge_win_rates"]) == 5 and evaluation["verdict"]
        assert set(evaluation["policy_reward_model"]) == {"win_rate", "win_rate_ci", "reward_diff"}
        assert evaluation["reward_diff"] == pytest.approx(
            evaluation["reward_mean"] - evaluation["baseline_reward_mean"]
        )
        assert evaluation["kl"] >= 0 and evaluation["response_length"] > 0
        assert {s["prompt"] for s in evaluation["samples"]} <= set(evaluation["heldout_prompts"])
        assert json.loads((output_dir / "training_results.json").read_text())["evaluation"] == evaluation
        phases = [e.phase for e in events]
        assert phases.index("policy") < phases.index("evaluation") < phases.index("saving")
        assert "evaluation against base model" in (output_dir / "training.log").read_text()

    def test_results_written_before_evaluations_existed_still_load(self, trained, tmp_path):
        _, output_dir, _, _ = trained
        data = json.loads((output_dir / "training_results.json").read_text())
        del data["evaluation"]
        (tmp_path / "training_results.json").write_text(json.dumps(data))
        assert TrainingResult.load(tmp_path).evaluation is None

    def test_training_results_load_from_file_or_directory(self, trained):
        result, output_dir, _, _ = trained
        from_file = TrainingResult.load(output_dir / "training_results.json")
        assert from_file == TrainingResult.load(output_dir)
        assert from_file.final_reward_mean == result.final_reward_mean
        assert from_file.training_steps == result.training_steps
        assert from_file.model_path == result.model_path and from_file.history == result.history

    def test_use_trained_policy_as_the_spec_shows(self, trained):
        result, _, _, _ = trained
        model = AutoModelForCausalLM.from_pretrained(str(result.model_path))
        tokenizer = AutoTokenizer.from_pretrained(str(result.model_path))

        prompt = "What is quantum computing?"
        inputs = tokenizer(prompt, return_tensors="pt")
        outputs = model.generate(**inputs, max_new_tokens=8)
        response = tokenizer.decode(outputs[0], skip_special_tokens=True)
        assert response.startswith(prompt) and outputs.shape[1] > inputs["input_ids"].shape[1]

        # a plain model (LoRA merged) and a tokenizer that batches prompts correctly for generate()
        assert not any("lora" in name for name, _ in model.named_parameters())
        assert tokenizer.padding_side == "left" and tokenizer.pad_token is not None
        batch = tokenizer(["Hi", prompt], return_tensors="pt", padding=True)
        assert model.generate(**batch, max_new_tokens=2).shape[0] == 2

    def test_refuses_a_finished_version_directory(self, trained):
        _, output_dir, _, _ = trained
        before = (output_dir / "training_results.json").read_text()
        with pytest.raises(FileExistsError, match="already holds a finished training run"):
            RLHFTrainer(tiny_config()).train(feedbacks=toy_feedback(), output_dir=output_dir)
        assert (output_dir / "training_results.json").read_text() == before

    @pytest.mark.parametrize("phase", ["reward_model", "policy"])
    def test_cancel_leaves_no_version_behind(self, tmp_path, phase):
        output_dir = tmp_path / "v2"
        with pytest.raises(TrainingCancelled):
            RLHFTrainer(tiny_config()).train(
                feedbacks=toy_feedback(), output_dir=output_dir, callback=lambda p: p.phase == phase and p.step == 2,
            )
        assert sorted(p.name for p in output_dir.iterdir()) == ["training.log"]
        assert "Training cancelled" in (output_dir / "training.log").read_text()

    def test_a_directory_left_by_a_crashed_run_is_trained_into_cleanly(self, tmp_path):
        output_dir = tmp_path / "v3"
        (output_dir / "policy").mkdir(parents=True)
        (output_dir / "policy" / "stale.bin").write_text("from a run that died before finishing")
        (output_dir / ".reward_model.tmp").mkdir()
        result = RLHFTrainer(tiny_config(max_steps=2)).train(feedbacks=toy_feedback(), output_dir=output_dir)
        assert not (output_dir / "policy" / "stale.bin").exists()
        assert sorted(p.name for p in output_dir.iterdir()) == [
            "policy", "reward_model", "training.log", "training_results.json",
        ]
        assert result.training_steps == 2

    def test_unavailable_base_model_fails_cleanly(self, tmp_path):
        output_dir = tmp_path / "v4"
        with pytest.raises(BaseModelUnavailable, match="no-such-model"):
            RLHFTrainer(tiny_config(base_model=str(tmp_path / "no-such-model"))).train(
                feedbacks=toy_feedback(), output_dir=output_dir,
            )
        assert sorted(p.name for p in output_dir.iterdir()) == ["training.log"]
        assert "Training failed: BaseModelUnavailable" in (output_dir / "training.log").read_text()

    def test_invalid_algorithm_is_a_config_error(self, tmp_path):
        with pytest.raises(ConfigError, match="algorithm must be one of ppo, rloo, grpo, kto, dpo"):
            RLHFTrainer(tiny_config(algorithm="a2c")).train(feedbacks=toy_feedback(), output_dir=tmp_path / "v1")
        with pytest.raises(ConfigError, match="RLOO compares completions of the same prompt: batch_size must be even"):
            tiny_config(algorithm="rloo", batch_size=3, mini_batch_size=1)  # refused with the request, before training
        assert not (tmp_path / "v1").exists()

    @pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on machines without CUDA")
    def test_cuda_requested_without_cuda(self, tmp_path):
        with pytest.raises(ConfigError, match="CUDA is not available"):
            RLHFTrainer(tiny_config(device="cuda")).train(feedbacks=toy_feedback(), output_dir=tmp_path / "v1")
        assert not (tmp_path / "v1").exists()


# ---------------------------------------------------------------------------------------------------------------
# TRL's RLOO and GRPO behind the same trainer
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def rloo_trained(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("models") / "my_agent" / "v1"
    events: list[Progress] = []
    quick_reward_model = RewardModelConfig(num_epochs=1, batch_size=4, learning_rate=1e-3)  # its fit is tested above
    config = tiny_config(algorithm="rloo", max_steps=3, reward_model_config=quick_reward_model)
    result = RLHFTrainer(config).train(feedbacks=toy_feedback(), output_dir=output_dir, callback=events.append)
    return result, output_dir, events


def tiny_policy(use_lora: bool = True):
    """n3-tiny-random as the trainer hands it to an algorithm: float32, LoRA-wrapped when use_lora."""
    model = load_causal_lm(MODEL)
    return get_peft_model(model, lora_config_for(model, r=8, alpha=16, dropout=0.0)) if use_lora else model


def short_answers(prompts, responses):
    """A cheap deterministic reward: 1 for an empty answer, falling with its length."""
    return torch.tensor([1.0 / (1 + len(r)) for r in responses])


@pytest.mark.slow


class TestTRLAlgorithms:
    def test_rloo_writes_the_spec_layout_and_a_usable_policy(self, rloo_trained):
        result, output_dir, events = rloo_trained
        assert sorted(p.name for p in output_dir.iterdir()) == [
            "policy", "reward_model", "training.log", "training_results.json",
        ]
        assert (output_dir / "policy" / "model.safetensors").is_file()
        assert (result.algorithm, result.training_steps, len(result.history)) == ("rloo", 3, 3)
        assert all(math.isfinite(h["objective/scores"]) and 0 <= h["objective/scores"] <= 1 for h in result.history)
        assert result.history[0]["objective/kl"] == pytest.approx(0.0, abs=1e-6)  # reference = the adapter disabled
        assert set(result.history[0]) >= {"objective/kl_coef", "loss/total", "timing/generate_s", "tokens_per_s"}
        assert TrainingResult.load(output_dir).history == result.history
        assert [e.step for e in events if e.phase == "policy"] == [1, 2, 3]
        log = (output_dir / "training.log").read_text()
        assert "with RLOO" in log and all(f"rloo step {i}/3" in log for i in (1, 2, 3))

        model = AutoModelForCausalLM.from_pretrained(str(result.model_path))
        tokenizer = AutoTokenizer.from_pretrained(str(result.model_path))
        inputs = tokenizer("What is quantum computing?", return_tensors="pt")
        assert model.generate(**inputs, max_new_tokens=4).shape[1] > inputs["input_ids"].shape[1]
        assert not any("lora" in name for name, _ in model.named_parameters())

    def test_rloo_cancel_leaves_no_version_behind(self, tmp_path):
        output_dir = tmp_path / "v2"
        with pytest.raises(TrainingCancelled, match="policy phase \\(step 1 of 3\\)"):
            RLHFTrainer(tiny_config(algorithm="rloo", max_steps=3, reward_model_config={"num_epochs": 1})).train(
                feedbacks=toy_feedback(), output_dir=output_dir, callback=lambda p: p.phase == "policy",
            )
        assert sorted(p.name for p in output_dir.iterdir()) == ["training.log"]

    def test_callback_returning_true_stops_after_that_step(self):
        """Called directly (not through RLHFTrainer, whose callback raises): True stops TRL cleanly, then raises."""
        policy = tiny_policy()
        with pytest.raises(TrainingCancelled, match="after RLOO step 1 of 3") as excinfo:
            train_rloo(policy=policy, tokenizer=load_tokenizer(MODEL), prompts=TOPICS, reward_fn=short_answers,
                       config=tiny_config(algorithm="rloo", max_steps=3), device=torch.device("cpu"),
                       callback=lambda p: True)
        assert [h["step"] for h in excinfo.value.history] == [1]
        assert list(policy.peft_config) == ["default"]  # TRL's "ref" adapter copy was dropped

    def test_non_finite_reward_stops_training(self):
        with pytest.raises(NonFiniteError, match="non-finite scores"):
            train_rloo(policy=tiny_policy(), tokenizer=load_tokenizer(MODEL), prompts=TOPICS,
                       reward_fn=lambda p, r: torch.full((len(r),), float("nan")),
                       config=tiny_config(algorithm="rloo", max_steps=2), device=torch.device("cpu"))

    def test_grpo_smoke_full_fine_tuning(self):
        policy = tiny_policy(use_lora=False)
        before = [p.detach().clone() for p in policy.parameters()]
        history = train_grpo(policy=policy, tokenizer=load_tokenizer(MODEL), prompts=TOPICS, reward_fn=short_answers,
                             config=tiny_config(algorithm="grpo", use_lora=False, max_steps=2),
                             device=torch.device("cpu"))
        assert [h["step"] for h in history] == [1, 2] and all(math.isfinite(h["objective/scores"]) for h in history)
        assert any(not torch.equal(a, b) for a, b in zip(before, policy.parameters()))  # trained in place

    def test_config_fields_map_onto_trl(self):
        config = tiny_config(algorithm="rloo", batch_size=8, mini_batch_size=3, max_new_tokens=20, init_kl_coef=0.1)
        args = trl_args(config, torch.device("cpu"), "/unused", num_generations=4)
        # one step per batch
        assert (args["per_device_train_batch_size"], args["gradient_accumulation_steps"]) == (2, 4)
        assert (args["max_completion_length"], args["beta"], args["max_steps"]) == (20, 0.1, config.max_steps)
        assert (args["use_cpu"], args["bf16"], args["report_to"], args["save_strategy"]) == (True, False, "none", "no")


@pytest.mark.slow
def test_spec_python_api_on_the_pretrained_tiny_model(tmp_path):
    """The spec's "Python API" and "Use Trained Policy" snippets on n3-tiny (pretrained on the built-in corpus;
    built once per MODELS_DIR, about two minutes): the merged policy still writes an answer."""
    config = TrainingConfig(
        base_model="n3-tiny", use_lora=True, learning_rate=1e-5, max_steps=3, batch_size=4, mini_batch_size=2,
        ppo_epochs=1, max_new_tokens=24,
    )
    trainer = RLHFTrainer(config)
    result = trainer.train(feedbacks=toy_feedback(), output_dir=tmp_path / "my_agent" / "v1")
    assert 0 <= result.final_reward_mean <= 1 and result.training_steps == 3

    model = AutoModelForCausalLM.from_pretrained(str(result.model_path))
    tokenizer = AutoTokenizer.from_pretrained(str(result.model_path))
    prompt = "What is quantum computing?"
    inputs = tokenizer(prompt, return_tensors="pt")
    outputs = model.generate(**inputs, max_new_tokens=128)
    response = tokenizer.decode(outputs[0], skip_special_tokens=True)
    assert response.startswith(prompt) and response[len(prompt):].strip()
    assert TrainingResult.load(tmp_path / "my_agent" / "v1" / "training_results.json").training_steps == 3
