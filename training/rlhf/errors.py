"""Errors of the training core. Each message is written for the person who sees it."""

MIN_FEEDBACK = 10


class RLHFError(Exception):
    """Base class: anything the training core raises on purpose."""


class ConfigError(RLHFError, ValueError):
    """A TrainingConfig field has a value that cannot work."""


class InsufficientFeedbackError(RLHFError, ValueError):
    def __init__(self, count: int, minimum: int = MIN_FEEDBACK):
        self.count, self.minimum = count, minimum
        super().__init__(f"Insufficient feedback: {count} samples (minimum {minimum} required)")


class FeedbackFormatError(RLHFError, ValueError):
    """A feedback record is missing a field or has a value of the wrong kind."""


class BaseModelUnavailable(RLHFError):
    """The base model's weights or tokenizer cannot be loaded (offline, wrong path, ...)."""


class TrainingCancelled(RLHFError):
    """Training stopped because the progress callback asked it to."""


class NonFiniteError(RLHFError):
    """A loss, reward or KL became NaN or infinite: training stops instead of saving garbage."""


class RewardModelQualityError(RLHFError):
    """The reward model fitted poorly and reward_model_config.on_poor_fit is "fail"."""
