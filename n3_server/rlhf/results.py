"""TrainingResult: what a finished run produced, saved as training_results.json."""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

from .layout import RESULTS_FILE

if TYPE_CHECKING:
    from .preference_data import PreferenceCounts


@dataclass
class TrainingResult:
    model_path: Path  # <version>/policy: a plain Hugging Face model directory
    reward_model_path: Path  # <version>/reward_model
    final_reward_mean: float  # mean reward-model score of the last step's responses
    final_reward_std: float
    training_steps: int
    final_kl: float = 0.0
    final_loss: float = 0.0
    algorithm: str = "ppo"
    feedback_count: int = 0
    duration_seconds: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)  # one dict of metrics per step
    reward_model_metrics: dict[str, Any] = field(default_factory=dict)  # val_mse, pearson, spearman, ...
    config: dict[str, Any] = field(default_factory=dict)  # TrainingConfig.to_dict()
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase (what the dry-run estimate predicts)
    # The version against the model it started from, on held-out prompts (evaluation.py); None when skipped.
    # Older files have no such key and load with None.
    evaluation: Optional[dict[str, Any]] = None

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["model_path"], data["reward_model_path"] = str(self.model_path), str(self.reward_model_path)
        return data

    def save(self, path: Union[str, Path]) -> Path:
        """Write atomically (temp file + rename): the file marks a complete version."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2, allow_nan=False))
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: Union[str, Path]) -> TrainingResult:
        path = Path(path)
        if path.is_dir():
            path = path / RESULTS_FILE
        data = json.loads(path.read_text())
        names = {f.name for f in dataclasses.fields(cls)}
        data = {k: v for k, v in data.items() if k in names}  # newer files may carry more keys
        data["model_path"], data["reward_model_path"] = Path(data["model_path"]), Path(data["reward_model_path"])
        return cls(**data)


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
    estimate_source: str = "measured"  # or "rough": no calibration yet (estimate.rough_calibration)
    # KTO/DPO: the examples or pairs the feedback gives (None for the others, or when the dry run read a sample)
    preference: Optional[PreferenceCounts] = None
