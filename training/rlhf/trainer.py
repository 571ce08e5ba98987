"""RLHFTrainer: feedback -> reward model -> PPO -> versioned policy directory. (Interface stub, being built.)"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Union

from .config import TrainingConfig
from .progress import ProgressCallback
from .results import TrainingResult


@dataclass
class TrainingEstimate:
    feedback_count: int
    estimated_steps: int
    estimated_time_minutes: float
    score_mean: float
    score_std: float
    model_config: dict[str, Any]  # {"base_model", "use_lora", "learning_rate"} as in the spec's dry run
    warnings: list[str] = field(default_factory=list)
    seconds_per_step: float = 0.0


class RLHFTrainer:
    def __init__(self, config: Optional[TrainingConfig] = None, *, models_dir: Union[str, Path, None] = None):
        self.config = config or TrainingConfig()
        self.models_dir = Path(models_dir) if models_dir else None

    def estimate(self, feedbacks: Iterable[dict]) -> TrainingEstimate:
        raise NotImplementedError

    def train(
        self, feedbacks: Iterable[dict], output_dir: Union[str, Path], callback: Optional[ProgressCallback] = None
    ) -> TrainingResult:
        raise NotImplementedError
