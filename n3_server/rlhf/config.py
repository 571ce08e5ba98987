"""TrainingConfig: every knob of a training run, its default, and the spec's presets.

One source of truth: the REST API, the CLI and the Python API all build a TrainingConfig, and
a PolicyVersion stores ``config.to_dict()``.
"""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any, Optional

from .errors import ConfigError

ALGORITHMS = ("ppo", "rloo", "grpo", "kto", "dpo", "best_of_n")
DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("auto", "float32", "bfloat16", "float16")
PROMOTE = ("never", "if_better", "always")
# init_from: "base" (base_model), "active" (the agent's active version) or a version "vN".
INIT_FROM = re.compile(r"base|active|v[1-9][0-9]{0,8}")
# Ceilings far above any real run, so a typo (or a hostile request) cannot ask a dry run's calibration or a
# training for a million rollouts per step and exhaust the machine's memory before anything can fail cleanly, nor
# start a run that can only overflow (a KL coefficient of 1e308) or that the model cannot take.
MAXIMA = {
    "batch_size": 4096, "mini_batch_size": 4096, "gradient_accumulation_steps": 4096, "ppo_epochs": 100,
    "max_new_tokens": 8192, "max_prompt_length": 32768, "lora_r": 1024, "lora_alpha": 4096,
    "num_epochs": 1000, "max_length": 32768, "eval_max_prompts": 4096, "eval_samples_per_prompt": 64,
    "cv_folds": 20, "cross_validation_below": 100000, "best_of_n": 64,
    "seed": 2**32 - 1, "temperature": 100.0, "init_kl_coef": 100.0, "vf_coef": 100.0,
    "missing_eos_penalty": 100.0, "target_kl": 10000.0, "kl_horizon": 10**9, "cliprange": 100.0,
    "cliprange_value": 100.0, "max_grad_norm": 1e6, "promote_max_kl": 1e6,
}
# Floors: seed is what torch and numpy accept; below a temperature of 0.01 the logits / temperature overflow.
MINIMA = {"seed": 0, "temperature": 0.01}

# Which algorithms read a field (ppo.py, trl_algorithms.py, trl_preference.py, trainer.py). A field not listed is
# shared by all five, reward_model_config included: every run fits the reward model (KTO and DPO train without it
# but evaluate with it and score their final sample with it). A field listed here that a request, the agent's
# default config or the CLI sets explicitly for another algorithm is refused (check_fields_used); defaults and
# presets are never checked.
FIELD_ALGORITHMS: dict[str, tuple[str, ...]] = {
    **dict.fromkeys((
        "ppo_epochs", "gradient_accumulation_steps", "target_kl", "kl_horizon", "adaptive_kl", "cliprange_value",
        "vf_coef", "gamma", "lam", "whiten_rewards", "normalize_reward", "missing_eos_penalty",
    ), ("ppo",)),
    "cliprange": ("ppo", "rloo", "grpo"),  # KTO and DPO have no ratio to clip
    "kto_desirable_threshold": ("kto",),
    "kto_undesirable_threshold": ("kto",),
    "dpo_pair_margin": ("dpo",),
    "best_of_n": ("best_of_n",),
}
# What a field is in ordinary use: when a run goes NaN/inf, the field furthest beyond its range is named as the
# likely cause (TrainingConfig.nonfinite_hint). (low, high); None: no bound on that side.
TYPICAL = {
    "learning_rate": (None, 3e-3), "init_kl_coef": (None, 10.0), "vf_coef": (None, 10.0),
    "missing_eos_penalty": (None, 10.0), "temperature": (0.1, 10.0),
}


def algorithms_reading(name: str) -> tuple[str, ...]:
    """The algorithms that read TrainingConfig field `name` (all of them for a shared field)."""
    return FIELD_ALGORITHMS.get(name, ALGORITHMS)


def check_fields_used(algorithm: str, explicit: dict[str, str]) -> None:
    """Raise ConfigError naming every field of `explicit` (name -> where it was set, "" for the request itself)
    that `algorithm` does not read, e.g. "vf_coef: not used by algorithm 'rloo' (PPO only)"."""
    errors = {}
    for name, where in explicit.items():
        readers = algorithms_reading(name)
        if algorithm not in readers:
            only = " and ".join(", ".join(a.upper() for a in readers).rsplit(", ", 1))
            source = f"; set in {where}" if where else ""
            errors[name] = [f"not used by algorithm '{algorithm}' ({only} only){source}"]
    if errors:
        raise ConfigError("; ".join(f"{name}: {reasons[0]}" for name, reasons in errors.items()), errors=errors)


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
            raise ConfigError.field("cross_validation_below", f"must be >= 0, got {self.cross_validation_below}")
        if self.cv_folds < 2:
            raise ConfigError.field("cv_folds", f"must be at least 2, got {self.cv_folds}")
        if self.on_poor_fit not in ("warn", "fail"):
            raise ConfigError.field("on_poor_fit", f"must be 'warn' or 'fail', got {self.on_poor_fit!r}")
        _at_most(self)

    def cross_validates(self, n_records: int) -> bool:
        return n_records < self.cross_validation_below


@dataclass
class TrainingConfig:
    """A training run. Field names follow the spec and TRL's old PPOConfig where they overlap."""

    base_model: str = "gpt2"  # hub id, local path, or "n3-tiny" (built locally, offline)
    # "ppo" (ours), "best_of_n" (ours: rejection-sampling fine-tuning), TRL's "rloo" / "grpo" (reward model), or
    # TRL's "kto" / "dpo" (the scores themselves)
    algorithm: str = "ppo"
    # LoRA on the policy. With LoRA the KL reference is the same network with the adapter disabled.
    use_lora: bool = True
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0  # PPO needs rollout and update to see the same network: keep 0
    lora_target_modules: Optional[list[str]] = None  # None: chosen from the architecture
    # Optimisation. learning_rate None (the default): chosen from the base model's width, LoRA or not
    # (context.auto_learning_rate: 1.2e-3 for n3-tiny's LoRA, 2e-4 for gpt2's); the run records the rate it used.
    learning_rate: Optional[float] = None
    # Policy steps; each samples `batch_size` responses. 300 at the automatic rate moves n3-tiny by about 1-2 nats
    # (1,000 at 1e-5 moved it by 0.004, issue 19).
    max_steps: int = 300
    batch_size: int = 8  # rollouts per step
    mini_batch_size: int = 4  # rollouts per forward/backward pass
    gradient_accumulation_steps: int = 1  # mini-batches per optimizer step (capped by the batch)
    ppo_epochs: int = 4  # passes over each batch
    max_grad_norm: float = 1.0
    # PPO
    init_kl_coef: float = 0.2
    # The adaptive controller (Ziegler et al.) moves kl_coef by up to 20 % x rollouts / kl_horizon per step towards
    # target_kl (nats per response). 6 nats with a horizon of 10,000 rollouts (TRL's old values, for batches of 256)
    # left the coefficient all but fixed over a few hundred steps of 8 rollouts, and allowed the KL at which
    # preferences the reward model cannot learn regressed (issue 19): 2 nats within about 250 rollouts does control.
    target_kl: float = 2.0
    kl_horizon: int = 250
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
    best_of_n: int = 4  # best_of_n: responses sampled per prompt, of which the reward model's best is imitated
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
    eval_samples_per_prompt: int = 4  # the interval resamples prompts: more samples per prompt tighten it
    # Incremental training. Where the policy starts: "base" (base_model), "active" or "vN". The service resolves
    # it ("active" -> "vN") and trains from that version's policy/, which is then the KL reference and the
    # evaluation's baseline; base_model stays the model family it descends from.
    init_from: str = "base"
    # After training: "never" (the spec's behaviour), "if_better" (the evaluation's win-rate interval lies above 0.5
    # and its KL is at most promote_max_kl, nats per response), or "always". The outcome is the version's
    # promotion note.
    promote: str = "never"
    promote_max_kl: float = 10.0
    # Do no harm: when the evaluation does not find the trained policy credibly better than its start (the
    # trainer's verdict: reward model passes its quality check, an independent judge's win-rate interval above 0.5),
    # the version keeps the starting model's weights (policy/ is a copy of them) and says so. False keeps the
    # trained weights whatever the evaluation says.
    fall_back_to_start: bool = True
    reward_model_config: RewardModelConfig = field(default_factory=RewardModelConfig)

    def __post_init__(self) -> None:
        if isinstance(self.reward_model_config, dict):
            fields = _known(RewardModelConfig, self.reward_model_config, "reward_model_config.")
            self.reward_model_config = RewardModelConfig(**fields)
        self.validate()

    # -- validation ------------------------------------------------------------------------
    def validate(self) -> None:
        _check_types(self)
        if not isinstance(self.base_model, str) or not self.base_model.strip():
            raise ConfigError.field("base_model", "must be a non-empty string (hub id, local path or 'n3-tiny')")
        if self.algorithm not in ALGORITHMS:
            raise ConfigError.field("algorithm", f"must be one of {', '.join(ALGORITHMS)}, got {self.algorithm!r}")
        device = str(self.device)
        if device not in DEVICES and not (device.startswith("cuda:") and device[5:].isdigit()):
            raise ConfigError.field("device", f"must be one of {', '.join(DEVICES)} or 'cuda:N', got {self.device!r}")
        if self.dtype not in DTYPES:
            raise ConfigError.field("dtype", f"must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.learning_rate is not None:
            _positive(self, "learning_rate")
        _positive(
            self, "max_steps", "batch_size", "mini_batch_size", "gradient_accumulation_steps",
            "ppo_epochs", "lora_r", "lora_alpha", "max_new_tokens", "max_prompt_length", "temperature",
            "target_kl", "kl_horizon", "cliprange", "cliprange_value", "max_grad_norm",
        )
        _at_most(self)
        _in_range(self, "lora_dropout", 0.0, 1.0, high_open=True)
        _in_range(self, "eval_fraction", 0.0, 0.5)
        _positive(self, "eval_max_prompts", "eval_samples_per_prompt", "promote_max_kl")
        if not INIT_FROM.fullmatch(self.init_from):
            raise ConfigError.field(
                "init_from", f"must be 'base', 'active' or a version such as 'v3', got {self.init_from!r}"
            )
        if self.promote not in PROMOTE:
            raise ConfigError.field("promote", f"must be one of {', '.join(PROMOTE)}, got {self.promote!r}")
        _in_range(self, "gamma", 0.0, 1.0)
        _in_range(self, "lam", 0.0, 1.0)
        _at_least(self)
        for name in ("init_kl_coef", "vf_coef"):
            if getattr(self, name) < 0:
                raise ConfigError.field(name, f"must be >= 0, got {getattr(self, name)}")
        if self.missing_eos_penalty is not None and (
            isinstance(self.missing_eos_penalty, bool) or not isinstance(self.missing_eos_penalty, (int, float))
            or not 0 <= self.missing_eos_penalty < math.inf
        ):
            raise ConfigError.field(
                "missing_eos_penalty", f"must be a number >= 0 or null, got {self.missing_eos_penalty!r}"
            )
        if self.algorithm in ("rloo", "grpo") and self.batch_size % 2:
            raise ConfigError(
                f"{self.algorithm.upper()} compares completions of the same prompt: batch_size must be even, "
                f"got {self.batch_size}",
                errors={"batch_size": [f"must be even for {self.algorithm.upper()}, got {self.batch_size}"]},
            )
        _in_range(self, "kto_desirable_threshold", 0.0, 1.0)
        _in_range(self, "kto_undesirable_threshold", 0.0, 1.0)
        if self.kto_undesirable_threshold >= self.kto_desirable_threshold:
            raise ConfigError(
                f"kto_undesirable_threshold ({self.kto_undesirable_threshold}) must be below kto_desirable_threshold "
                f"({self.kto_desirable_threshold})",
                errors={"kto_undesirable_threshold": [
                    f"must be below kto_desirable_threshold ({self.kto_desirable_threshold})"
                ]},
            )
        _positive(self, "dpo_pair_margin")
        _in_range(self, "dpo_pair_margin", 0.0, 1.0)
        if self.algorithm == "kto" and self.batch_size < 2:
            raise ConfigError(
                "KTO estimates its KL term from the other examples of a batch: batch_size must be >= 2",
                errors={"batch_size": ["must be >= 2 for KTO (it estimates its KL term from the rest of a batch)"]},
            )
        if self.algorithm == "best_of_n" and (self.best_of_n < 2 or not self.use_lora):
            field_name = "best_of_n" if self.best_of_n < 2 else "use_lora"
            raise ConfigError.field(field_name, "best_of_n needs best_of_n >= 2 samples per prompt and use_lora "
                                                f"(got best_of_n {self.best_of_n}, use_lora {self.use_lora})")
        if self.mini_batch_size > self.batch_size:
            raise ConfigError(
                f"mini_batch_size ({self.mini_batch_size}) cannot exceed batch_size ({self.batch_size})",
                errors={"mini_batch_size": [
                    f"cannot exceed batch_size ({self.batch_size}), got {self.mini_batch_size}"
                ]},
            )
        if self.lora_target_modules is not None and not (
            isinstance(self.lora_target_modules, list) and all(isinstance(m, str) for m in self.lora_target_modules)
        ):
            raise ConfigError.field("lora_target_modules", "must be a list of module names or null")
        try:
            self.reward_model_config.validate()
        except ConfigError as exc:
            raise exc.prefixed("reward_model_config") from None

    def nonfinite_hint(self) -> str:
        """For a NaN/inf error: the field this run most likely owes it to (the one furthest outside its usual
        range, among those its algorithm reads), else the learning rate."""
        suspects = []
        for name, (low, high) in TYPICAL.items():
            value = getattr(self, name)
            if value is None or self.algorithm not in algorithms_reading(name):
                continue
            if high is not None and value > high:
                suspects.append((value / high, name, "above", f"at most {high:g}", "lower", value))
            elif low is not None and value < low:
                suspects.append((low / value, name, "below", f"at least {low:g}", "higher", value))
        if suspects:
            _, name, side, usual, change, value = max(suspects)
            return (f"Likely cause: {name} is far {side} its usual range ({usual}). "
                    f"Try a {change} {name} (now {value:g}).")
        if self.learning_rate is None:
            return "Try a lower learning_rate (now the automatic one)."
        return f"Try a lower learning_rate (now {self.learning_rate:g})."

    # -- (de)serialisation ------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainingConfig:
        """Strict: unknown keys raise ConfigError naming them."""
        return cls(**_known(cls, data))

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> TrainingConfig:
        if name not in PRESETS:
            raise ConfigError(f"Unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
        return cls.from_dict({**PRESETS[name], **overrides})

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    def replace(self, **changes: Any) -> TrainingConfig:
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
    """Fields annotated int/float/bool/str (or Optional of one, when set) must hold that type (bool is not a number
    here)."""
    for f in dataclasses.fields(obj):
        optional = f.type.startswith("Optional[")
        expected = _TYPES.get(f.type.removeprefix("Optional[").removesuffix("]") if optional else f.type)
        value = getattr(obj, f.name)
        if expected is None or (optional and value is None):
            continue
        if (bool not in expected and isinstance(value, bool)) or not isinstance(value, expected):
            raise ConfigError.field(f.name, f"must be of type {f.type}, got {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError.field(f.name, f"must be a finite number, got {value!r}")


def _positive(obj: Any, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ConfigError.field(name, f"must be a positive number, got {value!r}")


def _at_most(obj: Any) -> None:
    """The MAXIMA of obj's fields (numbers already checked; None: not set)."""
    for f in dataclasses.fields(obj):
        limit, value = MAXIMA.get(f.name), getattr(obj, f.name)
        if limit is not None and value is not None and value > limit:
            raise ConfigError.field(f.name, f"must be at most {_num(limit)}, got {value!r}")


def _at_least(obj: Any) -> None:
    for f in dataclasses.fields(obj):
        limit, value = MINIMA.get(f.name), getattr(obj, f.name)
        if limit is not None and value is not None and value < limit:
            raise ConfigError.field(f.name, f"must be at least {_num(limit)}, got {value!r}")


def _in_range(obj: Any, name: str, low: float, high: float, *, high_open: bool = False) -> None:
    value = getattr(obj, name)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and low <= value and (
        value < high if high_open else value <= high
    )
    if not ok:
        raise ConfigError.field(name, f"must be in [{low}, {high}{')' if high_open else ']'}, got {value!r}")


def _num(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"
