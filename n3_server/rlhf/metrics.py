"""The names of a training step's figures: TRL's where TRL has one. Torch-free.

Inside n3 every step's figures use these names (the trainer's history, the database's step rows, training.log); only
the API renames them, to the spec's camelCase (``SPEC_NAMES``), at its edge.
"""
STEP_METRICS = (
    "step",
    "objective/scores",  # mean reward_fn score of the step's responses (before any missing-EOS penalty)
    "objective/scores_std",
    "objective/kl",  # KL(policy || reference), summed over a response's tokens, mean over the batch
    "objective/kl_coef",  # the KL coefficient used this step
    "objective/rlhf_reward",  # what PPO maximises: score (with penalty) - kl_coef * KL
    "policy/entropy",
    "policy/clipfrac",
    "policy/approxkl",
    "loss/policy",
    "loss/value",
    "loss/total",
    "val/clipfrac",
    "timing/generate_s",  # generate()
    "timing/score_s",  # reward_fn + logprob/value forward passes
    "timing/update_s",  # the PPO epochs
    "tokens_per_s",  # response tokens generated / seconds of the whole step
    "response_length",  # mean response tokens, EOS included
)

# The spec's four figures (its "Training Metrics" and API bodies) and the step metric each one is.
SPEC_NAMES = {
    "objective/scores": "rewardMean",
    "objective/scores_std": "rewardStd",
    "objective/kl": "kl",
    "loss/total": "loss",
}
