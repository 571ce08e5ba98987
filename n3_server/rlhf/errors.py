"""Errors of the training core. Each message is written for the person who sees it."""
from typing import Optional

MIN_FEEDBACK = 10


class RLHFError(Exception):
    """Base class: anything the training core raises on purpose."""


class ConfigError(RLHFError, ValueError):
    """A TrainingConfig field has a value that cannot work.

    ``errors`` maps each field it is about (snake_case path, "reward_model_config.max_length") to its reasons
    (sentences without the field's name), so that a caller can name the field as its user wrote it (the API in
    camelCase). Empty for an error about the config as a whole.
    """

    def __init__(self, message: str, *, errors: Optional[dict[str, list[str]]] = None):
        super().__init__(message)
        self.errors = dict(errors or {})

    @classmethod
    def field(cls, name: str, reason: str, *, sep: str = " ") -> "ConfigError":
        """The error of one field: "<name><sep><reason>", e.g. "seed must be at most 4294967295, got -1"."""
        return cls(f"{name}{sep}{reason}", errors={name: [reason]})

    def prefixed(self, prefix: str) -> "ConfigError":
        """The same error for a nested config: fields (and the message) under "<prefix>."."""
        errors = {f"{prefix}.{name}": reasons for name, reasons in self.errors.items()}
        return ConfigError(f"{prefix}.{self}" if self.errors else str(self), errors=errors)


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
