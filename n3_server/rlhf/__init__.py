"""n3's training core: reward model + PPO (or TRL's RLOO/GRPO, or KTO/DPO on the scores) on feedback records.

Django-free on purpose: use it from a notebook exactly as the service does.

    from n3_server.rlhf import RLHFTrainer, TrainingConfig
    result = RLHFTrainer(TrainingConfig(base_model="n3-tiny", max_steps=50)).train(
        feedbacks=[{"prompt": ..., "response": ..., "score": 0.9}, ...], output_dir="models/my_agent/v1")
"""
from .config import PRESETS, RewardModelConfig, TrainingConfig
from .errors import (
    MIN_FEEDBACK,
    BaseModelUnavailable,
    ConfigError,
    FeedbackFormatError,
    InsufficientFeedbackError,
    NonFiniteError,
    RLHFError,
    TrainingCancelled,
)
from .progress import Progress, ProgressCallback
from .results import TrainingEstimate, TrainingResult

# The package itself is torch-free: config, context, errors, timing, layout, metrics, records, data,
# preference_data, stats, progress and results import neither torch nor transformers, so the web process can use them
# (tests/library/test_architecture.py checks). The trainer (torch, transformers, peft, trl) is imported on first use.
_TRAINER_NAMES = ("RLHFTrainer",)


def __getattr__(name: str):
    if name in _TRAINER_NAMES:
        from . import trainer  # noqa: PLC0415  (loads torch: only when the trainer is asked for)

        return getattr(trainer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "PRESETS", "MIN_FEEDBACK", "RLHFTrainer", "TrainingConfig", "RewardModelConfig", "TrainingEstimate",
    "TrainingResult", "Progress", "ProgressCallback", "RLHFError", "ConfigError", "InsufficientFeedbackError",
    "FeedbackFormatError", "BaseModelUnavailable", "TrainingCancelled", "NonFiniteError",
]
