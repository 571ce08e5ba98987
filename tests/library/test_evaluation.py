"""The pieces that say whether a version is better: paired statistics, the held-out split, the reward model's
quality check. Fast: no policy training (the trainer's own evaluation is tested in test_rlhf_training.py, the effect
itself in test_effect.py)."""
import random

import pytest
import torch

from n3_server.rlhf import RewardModelConfig, TrainingConfig
from n3_server.rlhf.data import FeedbackRecord, heldout_split, prepare_feedback
from n3_server.rlhf.errors import RewardModelQualityError
from n3_server.rlhf.reward_model import cv_folds, fit_reward_model, quality_warnings
from n3_server.rlhf.stats import mean_difference, mean_interval, win_rate

MODEL = "n3-tiny-random"


class TestStats:
    def test_win_rate_counts_ties_half(self):
        assert win_rate([1, 1, 1], [0, 0, 0]) == (1.0, 1.0, 1.0)
        assert win_rate([0.5] * 4, [0.5] * 4) == (0.5, 0.5, 0.5)
        assert win_rate([1, 0], [0, 1])[0] == 0.5

    def test_interval_covers_the_estimate_and_narrows_with_more_pairs(self):
        rng = random.Random(0)
        few = [rng.random() for _ in range(10)], [rng.random() for _ in range(10)]
        many = [rng.random() for _ in range(400)], [rng.random() for _ in range(400)]
        for a, b in (few, many):
            rate, low, high = win_rate(a, b)
            assert low <= rate <= high
        assert (win_rate(*many)[2] - win_rate(*many)[1]) < (win_rate(*few)[2] - win_rate(*few)[1])
        assert win_rate(*many) == win_rate(*many)  # seeded: the same scores always give the same interval

    def test_a_clear_difference_has_an_interval_above_chance(self):
        rng = random.Random(1)
        better = [rng.gauss(0.7, 0.2) for _ in range(100)]
        worse = [rng.gauss(0.5, 0.2) for _ in range(100)]
        assert win_rate(better, worse)[1] > 0.5
        diff, low, high = mean_difference(better, worse)
        assert 0 < low < diff < high

    def test_lengths_must_match_and_values_exist(self):
        with pytest.raises(ValueError):
            win_rate([1, 2], [1])
        with pytest.raises(ValueError):
            mean_interval([])


def prompts(n, per_prompt=2):
    return [f"Question {i}?" for i in range(n) for _ in range(per_prompt)]


class TestHeldoutSplit:
    def test_a_seeded_share_of_distinct_prompts(self):
        config = TrainingConfig(base_model=MODEL)
        heldout, skipped = heldout_split(prompts(50), config)
        assert skipped is None and len(heldout) == 10  # eval_fraction 0.2 of 50 distinct prompts
        assert heldout == heldout_split(list(reversed(prompts(50))), config)[0]  # order does not matter
        assert heldout != heldout_split(prompts(50), TrainingConfig(base_model=MODEL, seed=7))[0]

    def test_capped_by_eval_max_prompts(self):
        heldout, _ = heldout_split(prompts(1000, 1), TrainingConfig(base_model=MODEL))
        assert len(heldout) == 32

    @pytest.mark.parametrize("records, fraction, reason", [
        (prompts(4, 5), 0.2, "only 4 distinct prompts"),
        (prompts(6, 2), 0.2, "would leave 8 records to train on (minimum 10)"),
        (prompts(50), 0.0, "evaluation is off"),
    ])
    def test_skipped_with_a_reason(self, records, fraction, reason):
        heldout, skipped = heldout_split(records, TrainingConfig(base_model=MODEL, eval_fraction=fraction))
        assert heldout == set() and reason in skipped


def feedback(scores):
    return [FeedbackRecord(prompt=f"Tell me about topic {i % 10}.", response=r, score=s)
            for i, (r, s) in enumerate(scores)]


class TestRewardModelQuality:
    def test_folds_are_stratified_and_cover_every_record_once(self):
        records = feedback([(f"answer {i}", i / 39) for i in range(40)])
        folds = cv_folds(records, 5, seed=0)
        assert sorted(i for fold in folds for i in fold) == list(range(40))
        assert all(len(fold) == 8 for fold in folds)
        for fold in folds:  # each fold spans the score range
            scores = sorted(records[i].score for i in fold)
            assert scores[0] < 0.2 and scores[-1] > 0.8

    def test_quality_warnings_in_words(self):
        config = RewardModelConfig()
        good = {"validation": "5-fold cross-validation", "val_mse": 0.02, "val_mse_baseline": 0.1, "val_pearson": 0.8}
        assert quality_warnings(good, config) == []
        no_better = {**good, "val_mse": 0.12}
        assert "no better than predicting the mean score (5-fold cross-validation MSE 0.1200 vs 0.1000)" in \
            quality_warnings(no_better, config)[0]
        weak = {**good, "val_pearson": 0.1}
        [warning] = quality_warnings(weak, config)
        assert "correlate weakly" in warning and "0.10, below 0.3" in warning
        assert "undefined" in quality_warnings({**good, "val_pearson": None}, config)[0]

    @pytest.mark.slow

    def test_scores_that_are_noise_warn_or_fail_the_fit(self):
        rng = random.Random(0)
        records = prepare_feedback([
            {"prompt": f"Question {i}?", "response": f"Answer {i}.", "score": round(rng.random(), 2)} for i in range(30)
        ]).records
        config = RewardModelConfig(num_epochs=2, batch_size=8)
        model = fit_reward_model(records, base_model=MODEL, config=config, device=torch.device("cpu"), seed=0)
        assert model.warnings and model.metrics["validation"] == "5-fold cross-validation"
        with pytest.raises(RewardModelQualityError, match="on_poor_fit is 'fail'"):
            fit_reward_model(records, base_model=MODEL, config=RewardModelConfig(num_epochs=2, batch_size=8,
                             on_poor_fit="fail"), device=torch.device("cpu"), seed=0)

    @pytest.mark.slow

    def test_large_feedback_uses_one_split_and_keeps_the_best_epoch(self):
        records = prepare_feedback([
            {"prompt": f"Tell me about topic {i}.", "score": 0.9 if i % 2 else 0.1,
             "response": "Sure! Here is a clear answer." if i % 2 else "No idea."} for i in range(40)
        ]).records
        config = RewardModelConfig(num_epochs=4, batch_size=8, cross_validation_below=0, validation_split=0.25)
        model = fit_reward_model(records, base_model=MODEL, config=config, device=torch.device("cpu"), seed=0)
        metrics = model.metrics
        assert metrics["validation"] == "holdout" and (metrics["train_size"], metrics["val_size"]) == (30, 10)
        best = min(metrics["history"], key=lambda h: h["val_mse"])
        assert metrics["best_epoch"] == best["epoch"] and metrics["val_mse"] == best["val_mse"]
        assert model.score_stats is not None and model.score_stats[1] > 0
