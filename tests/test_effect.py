"""Training makes the policy better, measured by something other than the model it was trained against.

The gold-reward set-up (tests/reviewers.py; bench/effect_bench.py runs every reviewer and algorithm): a simulated
reviewer who likes short answers scores n3-tiny's own sampled answers to 120 questions, with noise; the product's
whole chain trains on those 240 scores (reward model, then PPO, the default algorithm); on 64 other questions, in no
feedback, the trained policy's answers beat the base model's by the reviewer's own gold score: the win rate's 95 %
interval lies above 0.5. About 2 minutes on 2 cores. Seeds 0 and 1 both pass (win rate 0.59 [0.54, 0.63] and
0.63 [0.59, 0.67] when this was written); at the spec's quick_test size nothing moves (see bench/effect_bench.py).
"""
import pytest

from tests.reviewers import feedback_for, gold_evaluation, prompt_sets
from training.rlhf import RLHFTrainer, TrainingConfig

pytestmark = pytest.mark.slow


def test_ppo_policy_beats_its_base_on_heldout_prompts_by_the_reviewers_gold_score(tmp_path):
    config = TrainingConfig(
        base_model="n3-tiny", device="cpu", seed=0, batch_size=8, max_steps=300, learning_rate=1e-3,
        eval_samples_per_prompt=4,
    )
    feedback_prompts, heldout = prompt_sets(120, 64)
    records = feedback_for("concise", prompts=feedback_prompts, samples=2, config=config, seed=0)

    result = RLHFTrainer(config).train(records, tmp_path / "v1")

    gold = gold_evaluation("concise", result.model_path, heldout, config)
    assert gold["n"] == 256
    assert gold["win_rate_ci"][0] > 0.5, gold
    assert gold["reward_mean"] > gold["baseline_reward_mean"] + 0.03, gold
    assert result.reward_model_metrics["val_pearson"] > 0.5 and not result.warnings, result.reward_model_metrics
    assert result.evaluation["n"] == 4 * len(result.evaluation["heldout_prompts"])  # it judged itself too
