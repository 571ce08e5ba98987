"""TrainingConfig: every knob of a training run, its default, and the spec's presets.

One source of truth: the REST API, the CLI and the Python API all build a TrainingConfig, and
a PolicyVersion stores ``config.to_dict()``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

from .errors import ConfigError

ALGORITHMS = ("ppo", "rloo", "grpo", "kto", "dpo")
DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("auto", "float32", "bfloat16", "float16")
# Ceilings far above any real run, so a typo (or a hostile request) cannot ask a dry run's calibration or a
# training for a million rollouts per step and exhaust the machine's memory before anything can fail cleanly.
MAXIMA = {
    "batch_size": 4096, "mini_batch_size": 4096, "gradient_accumulation_steps": 4096, "ppo_epochs": 100,
    "max_new_tokens": 8192, "max_prompt_length": 32768, "lora_r": 1024, "lora_alpha": 4096,
    "num_epochs": 1000, "max_length": 32768, "eval_max_prompts": 4096, "eval_samples_per_prompt": 64,
    "cv_folds": 20, "cross_validation_below": 100000,
}


@dataclass
class RewardModelConfig:
    """The reward model: base LM + LoRA + a scalar head, regressed onto the 0..1 scores."""

    base_model: Optional[str] = None  # None: the policy's base model
    # At most this many epochs; validation picks how many of them the kept model had (see cross_validation_below).
    # 10 at 1e-3: the old 3 at 1e-4 under-fitted small feedback, predicting a narrow band around the mean.
    num_epochs: int = 10
    learning_rate: float = 1e-3
    batch_size: int = 8
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.1
    validation_split: float = 0.2  # held-out share of feedback for val MSE / correlation (cross_validation_below+)
    max_length: int = 512  # prompt + response tokens, truncated from the left of the prompt
    # Below this many scored records one validation split says little (3 records once gave Spearman -1): the fit is
    # measured by `cv_folds`-fold cross-validation instead, which also picks the epoch count for the final fit on
    # every record. At and above it, one `validation_split` and the best epoch's weights are kept (early stopping).
    cross_validation_below: int = 300
    cv_folds: int = 5
    # The quality check: a fit whose validation MSE is no better than predicting the mean score, or whose Pearson
    # correlation with the scores is below min_correlation, is poor. "warn" (the version says so) or "fail" (it fails).
    min_correlation: float = 0.3
    on_poor_fit: str = "warn"

    def validate(self) -> None:
        _check_types(self)
        _positive(self, "num_epochs", "learning_rate", "batch_size", "lora_r", "lora_alpha", "max_length", "cv_folds")
        _in_range(self, "lora_dropout", 0.0, 1.0, high_open=True)
        _in_range(self, "validation_split", 0.0, 0.9)
        _in_range(self, "min_correlation", -1.0, 1.0)
        if self.cross_validation_below < 0:
            raise ConfigError(f"cross_validation_below must be >= 0, got {self.cross_validation_below}")
        if self.cv_folds < 2:
            raise ConfigError(f"cv_folds must be at least 2, got {self.cv_folds}")
        if self.on_poor_fit not in ("warn", "fail"):
            raise ConfigError(f"on_poor_fit must be 'warn' or 'fail', got {self.on_poor_fit!r}")
        _at_most(self)

    def cross_validates(self, n_records: int) -> bool:
        return n_records < self.cross_validation_below


@dataclass
class TrainingConfig:
    """A training run. Field names follow the spec and TRL's old PPOConfig where they overlap."""

    base_model: str = "gpt2"  # hub id, local path, or "n3-tiny" (built locally, offline)
    algorithm: str = "ppo"  # "ppo" (ours), or TRL's "rloo" / "grpo" (reward model), "kto" / "dpo" (the scores)
    # LoRA on the policy. With LoRA the KL reference is the same network with the adapter disabled.
    use_lora: bool = True
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0  # PPO needs rollout and update to see the same network: keep 0
    lora_target_modules: Optional[list[str]] = None  # None: chosen from the architecture
    # Optimisation
    learning_rate: float = 1e-5
    max_steps: int = 1000  # PPO steps; each samples `batch_size` responses
    batch_size: int = 8  # rollouts per step
    mini_batch_size: int = 4  # rollouts per forward/backward pass
    gradient_accumulation_steps: int = 1  # mini-batches per optimizer step (capped by the batch)
    ppo_epochs: int = 4  # passes over each batch
    max_grad_norm: float = 1.0
    # PPO
    init_kl_coef: float = 0.2
    target_kl: float = 6.0  # adaptive controller's target KL (nats per response)
    kl_horizon: int = 10000
    adaptive_kl: bool = True
    cliprange: float = 0.2
    cliprange_value: float = 0.2
    vf_coef: float = 0.1
    gamma: float = 1.0
    lam: float = 0.95
    whiten_rewards: bool = False
    # Score minus the reward model's mean over the feedback's responses, divided by its std (ppo.train_ppo)
    normalize_reward: bool = True
    # KTO and DPO learn from the scored feedback itself (preference_data.py)
    kto_desirable_threshold: float = 0.6  # KTO: a response scored >= this is desirable
    kto_undesirable_threshold: float = 0.4  # KTO: <= this is undesirable; the scores in between are left out
    dpo_pair_margin: float = 0.2  # DPO: two responses to one prompt whose scores differ by this much make a pair
    # Generation (sampling: top_k=0, top_p=1 so logprobs are the policy's own)
    max_new_tokens: int = 48
    max_prompt_length: int = 256
    temperature: float = 1.0
    # PPO: subtracted from the score of a response that hit max_new_tokens without an EOS. None: no penalty.
    missing_eos_penalty: Optional[float] = None
    # Runtime
    device: str = "auto"  # "auto" (cuda if available), "cpu", "cuda", "cuda:N", "mps"
    dtype: str = "auto"  # "auto": bfloat16 on GPUs that support it, float32 on CPU
    seed: int = 42
    # Self-evaluation (evaluation.py): this share of the distinct prompts is held out of training, and on them the
    # version's samples are compared with its starting model's. 0 turns it off.
    eval_fraction: float = 0.2
    eval_max_prompts: int = 32
    eval_samples_per_prompt: int = 2
    reward_model_config: RewardModelConfig = field(default_factory=RewardModelConfig)

    def __post_init__(self) -> None:
        if isinstance(self.reward_model_config, dict):
            self.reward_model_config = RewardModelConfig(**_known(RewardModelConfig, self.reward_model_config, "reward_model_config."))
        self.validate()

    # -- validation ------------------------------------------------------------------------
    def validate(self) -> None:
        _check_types(self)
        if not isinstance(self.base_model, str) or not self.base_model.strip():
            raise ConfigError("base_model must be a non-empty string (hub id, local path or 'n3-tiny')")
        if self.algorithm not in ALGORITHMS:
            raise ConfigError(f"algorithm must be one of {', '.join(ALGORITHMS)}, got {self.algorithm!r}")
        device = str(self.device)
        if device not in DEVICES and not (device.startswith("cuda:") and device[5:].isdigit()):
            raise ConfigError(f"device must be one of {', '.join(DEVICES)} or 'cuda:N', got {self.device!r}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        _positive(
            self, "learning_rate", "max_steps", "batch_size", "mini_batch_size", "gradient_accumulation_steps",
            "ppo_epochs", "lora_r", "lora_alpha", "max_new_tokens", "max_prompt_length", "temperature",
            "target_kl", "kl_horizon", "cliprange", "cliprange_value", "max_grad_norm",
        )
        _at_most(self)
        _in_range(self, "lora_dropout", 0.0, 1.0, high_open=True)
        _in_range(self, "eval_fraction", 0.0, 0.5)
        _positive(self, "eval_max_prompts", "eval_samples_per_prompt")
        _in_range(self, "gamma", 0.0, 1.0)
        _in_range(self, "lam", 0.0, 1.0)
        if self.init_kl_coef < 0:
            raise ConfigError(f"init_kl_coef must be >= 0, got {self.init_kl_coef}")
        if self.vf_coef < 0:
            raise ConfigError(f"vf_coef must be >= 0, got {self.vf_coef}")
        if self.missing_eos_penalty is not None and (
            isinstance(self.missing_eos_penalty, bool) or not isinstance(self.missing_eos_penalty, (int, float))
            or self.missing_eos_penalty < 0
        ):
            raise ConfigError(f"missing_eos_penalty must be a number >= 0 or null, got {self.missing_eos_penalty!r}")
        if self.algorithm in ("rloo", "grpo") and self.batch_size % 2:
            raise ConfigError(
                f"{self.algorithm.upper()} compares completions of the same prompt: batch_size must be even, "
                f"got {self.batch_size}"
            )
        _in_range(self, "kto_desirable_threshold", 0.0, 1.0)
        _in_range(self, "kto_undesirable_threshold", 0.0, 1.0)
        if self.kto_undesirable_threshold >= self.kto_desirable_threshold:
            raise ConfigError(
                f"kto_undesirable_threshold ({self.kto_undesirable_threshold}) must be below kto_desirable_threshold "
                f"({self.kto_desirable_threshold})"
            )
        _positive(self, "dpo_pair_margin")
        _in_range(self, "dpo_pair_margin", 0.0, 1.0)
        if self.algorithm == "kto" and self.batch_size < 2:
            raise ConfigError("KTO estimates its KL term from the other examples of a batch: batch_size must be >= 2")
        if self.mini_batch_size > self.batch_size:
            raise ConfigError(
                f"mini_batch_size ({self.mini_batch_size}) cannot exceed batch_size ({self.batch_size})"
            )
        if self.lora_target_modules is not None and not (
            isinstance(self.lora_target_modules, list) and all(isinstance(m, str) for m in self.lora_target_modules)
        ):
            raise ConfigError("lora_target_modules must be a list of module names or null")
        self.reward_model_config.validate()

    # -- (de)serialisation ------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainingConfig":
        """Strict: unknown keys raise ConfigError naming them."""
        return cls(**_known(cls, data))

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "TrainingConfig":
        if name not in PRESETS:
            raise ConfigError(f"Unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
        return cls.from_dict({**PRESETS[name], **overrides})

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    def replace(self, **changes: Any) -> "TrainingConfig":
        return self.from_dict({**self.to_dict(), **changes})


# The spec's "Configuration Presets", by name. Values not listed keep TrainingConfig's defaults.
PRESETS: dict[str, dict[str, Any]] = {
    "quick_test": {"base_model": "gpt2", "max_steps": 50, "batch_size": 4, "learning_rate": 1e-4},
    "production": {
        "base_model": "gpt2-medium", "max_steps": 5000, "batch_size": 16, "learning_rate": 1e-5,
        "use_lora": True, "lora_r": 16,
    },
    "low_memory": {
        "base_model": "gpt2", "use_lora": True, "lora_r": 4, "batch_size": 4, "mini_batch_size": 2,
        "gradient_accumulation_steps": 4,
    },
    "high_performance": {
        "base_model": "gpt2-large", "use_lora": False, "batch_size": 32, "learning_rate": 1e-5, "device": "cuda",
    },
}


def _known(cls: type, data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be an object")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"Unknown config field(s): {', '.join(prefix + u for u in unknown)}")
    return dict(data)


_TYPES = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,)}


def _check_types(obj: Any) -> None:
    """Fields annotated int/float/bool/str must hold that type (bool is not a number here)."""
    for f in dataclasses.fields(obj):
        expected = _TYPES.get(f.type)
        value = getattr(obj, f.name)
        if expected is None:
            continue
        if (bool not in expected and isinstance(value, bool)) or not isinstance(value, expected):
            raise ConfigError(f"{f.name} must be of type {f.type}, got {value!r}")


def _positive(obj: Any, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ConfigError(f"{name} must be a positive number, got {value!r}")


def _at_most(obj: Any) -> None:
    """The MAXIMA of obj's fields (positive numbers already checked)."""
    for f in dataclasses.fields(obj):
        limit = MAXIMA.get(f.name)
        if limit is not None and getattr(obj, f.name) > limit:
            raise ConfigError(f"{f.name} must be at most {limit}, got {getattr(obj, f.name)!r}")


def _in_range(obj: Any, name: str, low: float, high: float, *, high_open: bool = False) -> None:
    value = getattr(obj, name)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and low <= value and (
        value < high if high_open else value <= high
    )
    if not ok:
        raise ConfigError(f"{name} must be in [{low}, {high}{')' if high_open else ']'}, got {value!r}")
