"""The verdict on a trained version: better only when the reward model is sound, a judge other than the model the
policy trained against scored it, and that judge's interval, resampling prompts, lies above 0.5; otherwise the
version keeps its starting model and `if_better` does not promote it. Fast: no policy training (the effect of the
whole chain is tested in test_effect.py)."""
import random

import pytest
import torch

from n3_server.rlhf import TrainingConfig
from n3_server.rlhf.data import prepare_feedback
from n3_server.rlhf.reward_model import fit_reward_model, trainable_state
from n3_server.rlhf.stats import win_rate
from n3_server.rlhf.trainer import _verdict
from training.jobs.run import promotion

MODEL = "n3-tiny-random"


def test_the_interval_resamples_prompts_so_samples_of_one_prompt_are_not_counted_as_independent():
    rng = random.Random(0)
    scores, groups = [], []
    for prompt in range(16):  # the version is better on some prompts and worse on others; 4 samples of each
        effect = rng.gauss(0.0, 0.3)
        for _ in range(4):
            scores.append(effect + rng.gauss(0.0, 0.05))
            groups.append(f"prompt {prompt}")
    base = [0.0] * len(scores)
    _, pair_low, pair_high = win_rate(scores, base)
    rate, low, high = win_rate(scores, base, groups=groups)
    assert low <= rate <= high
    assert high - low > 1.3 * (pair_high - pair_low)  # the pairs' interval is too narrow for 16 prompts
    # one sample per prompt: resampling prompts is resampling pairs
    assert win_rate(scores, base, groups=list(range(len(scores)))) == win_rate(scores, base)



def block(**changes):
    evaluation = {
        "baseline": "base model n3-tiny", "scored_by": "5 cross-validation fold reward models", "n": 64,
        "heldout_prompts": [f"q{i}" for i in range(16)], "win_rate": 0.66, "win_rate_ci": [0.58, 0.74],
        "kl": 1.2, "better": True, "judge_win_rates": [0.7, 0.6, 0.66, 0.7, 0.45], "judge_agreement": 0.8,
    }
    return {**evaluation, **changes}


def test_a_sound_reward_model_and_an_independent_judge_above_half_say_better():
    verdict = _verdict(block(), judged=True, reward_model_warnings=[], fall_back=True, max_kl=10)
    assert verdict["better"] and verdict["reward_model_ok"] and "kept_start" not in verdict
    assert verdict["verdict"] == (
        "better than base model n3-tiny: win rate 0.66 [0.58, 0.74] on 16 held-out prompts (4 of 5 judges see a win),"
        " judged by 5 cross-validation fold reward models"
    )


def test_a_reward_model_that_fails_its_quality_check_vouches_for_nothing_and_the_start_is_kept():
    verdict = _verdict(block(), judged=True, reward_model_warnings=["Reward model is no better ..."], fall_back=True,
                       max_kl=10)
    assert not verdict["better"] and not verdict["reward_model_ok"] and verdict["kept_start"]
    assert verdict["verdict"].startswith("kept the starting model (base model n3-tiny): the trained policy is not "
                                         "credibly better, the reward model failed its quality check")
    # asked to keep the trained weights anyway, it still says it is not better
    kept = _verdict(block(), judged=True, reward_model_warnings=["poor"], fall_back=False, max_kl=10)
    assert not kept["better"] and "kept_start" not in kept and kept["verdict"].startswith("not better than")


def test_an_interval_reaching_half_or_no_independent_judge_is_not_better():
    low = _verdict(block(win_rate=0.55, win_rate_ci=[0.47, 0.63], better=False), judged=True,
                   reward_model_warnings=[], fall_back=True, max_kl=10)
    assert not low["better"] and low["kept_start"] and low["verdict"].endswith("the interval is not above 0.5")
    alone = _verdict(block(), judged=False, reward_model_warnings=[], fall_back=True, max_kl=10)
    assert not alone["better"] and "no judge other than the reward model it trained against" in alone["verdict"]


def test_a_version_far_from_its_start_is_not_better_whatever_the_judges_say():
    """Best-of-n at KL 159 answered "dog dog dog ..." to everything: every fold model scored it 1.0, gold 0.0."""
    far = _verdict(block(win_rate=1.0, win_rate_ci=[1.0, 1.0], kl=158.8), judged=True, reward_model_warnings=[],
                   fall_back=True, max_kl=10)
    assert not far["better"] and far["kept_start"]
    assert "it moved KL 158.8 nats from its start, beyond promote_max_kl (10)" in far["verdict"]



def test_a_version_that_is_not_better_says_in_one_line_what_to_change_for_the_next_one():
    def advice(warnings=(), judged=True, **changes):
        return _verdict(block(**changes), judged=judged, reward_model_warnings=list(warnings), fall_back=True,
                        max_kl=10)["advice"]

    assert "the reward model could not predict the scores" in advice(["r 0.16"])
    assert "validationSplit above 0" in advice(judged=False)
    assert "fewer steps (maxSteps), a lower learningRate" in advice(kl=158.8)
    assert advice(kl=0.004, win_rate=0.51, win_rate_ci=[0.48, 0.53], better=False).startswith(
        "it barely moved (KL 0.004): more steps (maxSteps) or a higher learningRate")
    spans = advice(win_rate=0.55, win_rate_ci=[0.47, 0.63], better=False)  # at KL 1.2: more feedback, not steps
    assert spans.startswith("the interval spans 0.5 on 16 held-out prompts: more feedback on more distinct prompts")
    assert "maxSteps" not in spans
    assert advice(win_rate=0.55, win_rate_ci=[0.47, 0.63], better=False, kl=0.4).endswith("or more steps (maxSteps)")
    assert "the judges prefer its start" in advice(win_rate=0.2, win_rate_ci=[0.12, 0.3], better=False)
    # a better version needs none
    assert "advice" not in _verdict(block(), judged=True, reward_model_warnings=[], fall_back=True, max_kl=10)

def test_if_better_promotes_on_the_verdict_and_says_why_not_in_its_words():
    config = TrainingConfig(base_model=MODEL, promote="if_better")
    assert promotion(config, _verdict(block(), judged=True, reward_model_warnings=[], fall_back=True, max_kl=10))[0]
    # a high win rate by the reward model the policy trained against, with a failed quality check: not promoted
    promoted, note = promotion(config, _verdict(block(win_rate_ci=[0.53, 0.78]), judged=True,
                                                reward_model_warnings=["r 0.16"], fall_back=True, max_kl=10))
    assert not promoted and note.startswith("not promoted: kept the starting model")


def test_the_judge_is_the_fold_models_and_scoring_with_it_leaves_the_reward_model_as_it_was():
    rng = random.Random(0)
    records = prepare_feedback([
        {"prompt": f"Question {i}?", "response": "yes" if i % 2 else "no, not at all", "score": 0.9 if i % 2 else 0.1}
        for i in range(12) for _ in range(2)
    ]).records
    rng.shuffle(records)
    config = TrainingConfig(base_model=MODEL, reward_model_config={"num_epochs": 2, "cv_folds": 3}).reward_model_config
    model = fit_reward_model(records, base_model=MODEL, config=config, device=torch.device("cpu"), seed=0)
    assert len(model.judge) == 3 and "3 cross-validation fold reward models" in model.judge.description
    before = trainable_state(model)
    prompts, responses = ["Question 1?", "Question 2?"], ["yes", "no, not at all"]
    own = model.score(prompts, responses)
    scores = model.judge.scores(model, prompts, responses)
    assert scores.shape == (3, 2) and not torch.equal(scores[0], own)  # each judge is a model of its own
    assert all(torch.equal(before[name], value) for name, value in trainable_state(model).items())
    assert torch.equal(model.score(prompts, responses), own)


@pytest.mark.parametrize("algorithm", ["best_of_n"])
def test_best_of_n_needs_lora_and_two_samples(algorithm):
    from n3_server.rlhf.errors import ConfigError

    with pytest.raises(ConfigError, match="best_of_n"):
        TrainingConfig(base_model=MODEL, algorithm=algorithm, use_lora=False)
    with pytest.raises(ConfigError, match="best_of_n"):
        TrainingConfig(base_model=MODEL, algorithm=algorithm, best_of_n=1)


@pytest.mark.slow
def test_best_of_n_trains_a_version_that_imitates_its_best_samples(tmp_path):
    from n3_server.rlhf import RLHFTrainer

    feedback = [{"prompt": f"Question {i}?", "response": "yes" if i % 2 else "no, not at all",
                 "score": 0.9 if i % 2 else 0.1} for i in range(12) for _ in range(2)]
    config = TrainingConfig(base_model=MODEL, algorithm="best_of_n", max_steps=3, batch_size=2, mini_batch_size=2,
                            max_new_tokens=8, reward_model_config={"num_epochs": 1, "cv_folds": 2})
    result = RLHFTrainer(config).train(feedback, tmp_path / "v1")
    assert [h["step"] for h in result.history] == [1, 2, 3]
    last = result.history[-1]
    assert last["objective/kl"] >= 0 and last["loss/total"] > 0 and last["objective/kl_coef"] == 0.0
    # what it imitates is the best of each prompt's samples: at least the average of them
    assert all(h["objective/rlhf_reward"] >= h["objective/scores"] - 1e-6 for h in result.history)
    assert (tmp_path / "v1" / "policy" / "model.safetensors").is_file() and result.evaluation is not None
