"""Training helps where the feedback allows and does no harm where it does not, judged by something other than the
model the policy was trained against.

The gold-reward set-up (tests/reviewers.py; bench/effect_bench.py runs the whole matrix): a simulated reviewer
scores n3-tiny's own sampled answers with noise, the product's whole chain trains on those scores with the default
configuration (no overrides), and the trained policy is judged by the reviewer's own gold score on 64 questions that
were in no feedback. A brevity preference is learnable from 180 scores: the version must say it is better, and gold
must agree. Scores that are pure noise teach nothing: the version must say it is not better, keep the model it
started from, and `if_better` must not promote it. About 5 minutes on 2 cores.
"""
import random

import pytest
import torch

from n3_server.rlhf import RLHFTrainer, TrainingConfig
from n3_server.rlhf.base_models import load_causal_lm
from tests.reviewers import feedback_for, gold_evaluation, prompt_sets
from training.jobs.run import promotion

pytestmark = pytest.mark.slow


def test_the_default_configuration_learns_a_learnable_preference_and_says_so(tmp_path):
    config = TrainingConfig(base_model="n3-tiny", device="cpu", seed=0)  # the defaults, on the built-in model
    feedback_prompts, heldout = prompt_sets(60, 64)
    records = feedback_for("concise", prompts=feedback_prompts, samples=3, config=config, seed=0)

    result = RLHFTrainer(config).train(records, tmp_path / "v1")

    verdict = result.evaluation
    assert verdict["better"] and not verdict.get("kept_start"), verdict["verdict"]
    assert verdict["scored_by"].startswith("5 cross-validation fold reward models")
    assert promotion(config.replace(promote="if_better"), verdict)[0]
    gold = gold_evaluation("concise", result.model_path, heldout, config)
    assert gold["win_rate_ci"][0] > 0.5, gold  # the reviewer's own judgement agrees, on prompts in no feedback
    assert gold["reward_mean"] > gold["baseline_reward_mean"], gold


def test_scores_that_are_noise_leave_the_starting_model_in_place_and_are_not_promoted(tmp_path):
    config = TrainingConfig(base_model="n3-tiny", device="cpu", seed=0, max_steps=30)
    feedback_prompts, _ = prompt_sets(60, 0)
    rng = random.Random(0)
    records = [{**r, "score": round(rng.random(), 3)}
               for r in feedback_for("concise", prompts=feedback_prompts, samples=3, config=config, seed=0)]

    result = RLHFTrainer(config).train(records, tmp_path / "v1")

    verdict = result.evaluation
    assert not verdict["better"] and verdict["kept_start"] and not verdict["reward_model_ok"]
    assert verdict["verdict"].startswith("kept the starting model (base model n3-tiny)"), verdict["verdict"]
    promoted, note = promotion(config.replace(promote="if_better"), verdict)
    assert not promoted and note.startswith("not promoted: kept the starting model")
    kept = load_causal_lm(str(result.model_path)).state_dict()
    base = load_causal_lm("n3-tiny").state_dict()
    assert all(torch.equal(kept[name], base[name]) for name in base)  # policy/ is the starting model, unchanged
