"""The training library (n3_server/rlhf/): config, data, reward model, PPO and the other algorithms, evaluation."""
