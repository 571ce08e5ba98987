"""How long a training run will take: measured once per timing key, then extrapolated. Torch-free.

A dry run cannot know the speed of a model on a machine until it has seen one run there, so a *calibration* is
measured: a real, miniature training (a few reward-model batches, 5 PPO steps, the saves) with the run's own model,
batch shapes and lengths, read from its TrainingResult.timings and per-step history. It is cached as JSON under
MODELS_DIR/_calibration/ by its timing key, and any later dry run with the same key extrapolates from it::

    total = fixed costs (loading both models, the PPO set-up, the evaluation, saving)
          + reward-model steps x seconds per step + validation batches x seconds per batch
          + first PPO step + (max_steps - 1) x seconds per later PPO step (their median)

The key (timing_key) is computed without torch or a tokenizer, so the web process can look a calibration up: it
holds every TrainingConfig field that changes what a step costs (TIMING_FIELDS, REWARD_MODEL_TIMING_FIELDS), the
base models' fingerprints, the installed torch version, and the feedback's mean lengths in characters, bucketed to
powers of two. Fields whose effect is counted by extrapolate() (max_steps, the reward model's epochs, folds and
split) or that change no cost (learning rates, KL and clipping coefficients, seeds, thresholds of the quality
check) are left out, so changing them reuses the measurement. Workers that share a MODELS_DIR share calibrations:
they are assumed to be alike (give unlike machines their own MODELS_DIR).

Without a calibration, default_calibration() gives a rough figure from the config alone (see DEFAULT_COSTS), and
the service queues a measurement in the worker (training.calibration).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import random
import statistics
import time
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Optional, Union

from .config import TrainingConfig
from .data import FeedbackData, FeedbackRecord, format_query, format_text, heldout_split
from .errors import MIN_FEEDBACK
from .layout import BASE_SUBDIR, BUILTIN_MODELS
from .preference_data import PREFERENCE_ALGORITHMS, preference_subset
from .results import TrainingEstimate, TrainingResult

CALIBRATION_VERSION = 4  # bump when the training code's cost (or the key) changes, so old measurements are not reused
CALIBRATION_DIR = "_calibration"
CALIBRATION_PPO_STEPS = 5  # the first step carries one-time costs; the later ones give the pace
CALIBRATION_RM_EPOCHS = 2
# A queued measurement older than this is taken for lost (its worker died) and queued again.
PENDING_TTL_S = 3600.0
# A configuration whose calibration failed is refused for this long (400 with the reason); then it is tried again.
FAILURE_TTL_S = 3600.0

# The TrainingConfig fields that change what a run costs per step (model shape and adapter, algorithm, precision
# and device, batch shapes, generation lengths; temperature changes how soon responses end; normalize_reward scores
# the feedback once; the KTO/DPO thresholds how many examples they train on; the evaluation settings what it
# generates). Everything else is extrapolated (max_steps) or costs nothing.
TIMING_FIELDS = (
    "base_model", "algorithm", "use_lora", "lora_r", "lora_dropout", "lora_target_modules", "batch_size",
    "mini_batch_size", "gradient_accumulation_steps", "ppo_epochs", "max_new_tokens", "max_prompt_length",
    "temperature", "normalize_reward", "kto_desirable_threshold", "kto_undesirable_threshold", "dpo_pair_margin",
    "device", "dtype", "eval_fraction", "eval_max_prompts", "eval_samples_per_prompt",
)
REWARD_MODEL_TIMING_FIELDS = ("base_model", "batch_size", "lora_r", "lora_dropout", "max_length")
CHARS_PER_TOKEN = 4  # GPT-2-like tokenizers on English: only to cap the length buckets where truncation caps tokens

# default_calibration(): seconds per token through the model, per pass (forward, or forward + backward counted as
# three), for a model of `m` million parameters: PER_TOKEN_S + PER_TOKEN_PER_MPARAM_S * m. Fitted to n3-tiny-random
# and n3-tiny on 2 CPU cores; a model whose config.json cannot be read here is taken to be gpt2-sized. A GPU is
# much faster and a busy CPU slower: this figure is rough, and marked so (estimateSource "default").
DEFAULT_COSTS = {
    "per_token_s": 1e-4, "per_token_per_mparam_s": 3e-5, "fixed_s": 2.0, "fixed_per_mparam_s": 0.05,
    "unknown_model_mparams": 124.0,
}


@dataclass
class Calibration:
    """Seconds measured by a miniature run on the workers' machine."""

    fixed_s: float  # everything but the steps: loading the models, PPO set-up, evaluation, saving
    rm_step_s: float  # one reward-model training batch
    rm_eval_batch_s: float  # one reward-model validation batch (no gradients)
    ppo_first_step_s: float
    ppo_step_s: float  # median of the later PPO steps


# --- the key -----------------------------------------------------------------------------------------------------
def timing_key(
    config: TrainingConfig, records: list[FeedbackRecord], *, models_dir: Union[str, Path],
) -> dict[str, Any]:
    """Everything a step's cost depends on, computed without torch (see the module docstring)."""
    rm = config.reward_model_config
    prompt_chars = sum(len(format_query(r.prompt)) for r in records) / max(len(records), 1)
    text_chars = sum(len(format_text(r.prompt, r.response)) for r in records) / max(len(records), 1)
    return {
        "version": CALIBRATION_VERSION,
        "torch": _installed("torch"),
        **fingerprints(config, models_dir=models_dir),
        **{name: getattr(config, name) for name in TIMING_FIELDS},
        "reward_model": {
            **{name: getattr(rm, name) for name in REWARD_MODEL_TIMING_FIELDS},
            "base_model": rm.base_model or config.base_model,
        },
        "prompt_chars": _bucket(min(prompt_chars, CHARS_PER_TOKEN * config.max_prompt_length)),
        "text_chars": _bucket(min(text_chars, CHARS_PER_TOKEN * rm.max_length)),
    }


def fingerprints(config: TrainingConfig, *, models_dir: Union[str, Path]) -> dict[str, Optional[str]]:
    """The base models' part of the key. A built-in model that is not built yet has none: the measurement builds
    it, then files its calibration under the key with_current_fingerprints() gives as well."""
    reward_base = config.reward_model_config.base_model or config.base_model
    return {
        "base_model_fingerprint": _fingerprint(model_directory(config.base_model, models_dir)),
        "reward_base_model_fingerprint": _fingerprint(model_directory(reward_base, models_dir)),
    }


def key_digest(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def model_directory(name: str, models_dir: Union[str, Path]) -> Optional[Path]:
    """The local directory a base model loads from (a built-in one's, built or not), None for a hub id."""
    if name in BUILTIN_MODELS:
        return Path(models_dir) / BASE_SUBDIR / name
    path = Path(name).expanduser()
    return path if path.is_dir() else None


# --- the cache: <digest>.json holds a calibration or a failure; <digest>.pending.json a queued measurement -----------
def cache_path(models_dir: Union[str, Path], key: dict[str, Any]) -> Path:
    return Path(models_dir) / CALIBRATION_DIR / f"{key_digest(key)}.json"


def pending_path(models_dir: Union[str, Path], digest: str) -> Path:
    return Path(models_dir) / CALIBRATION_DIR / f"{digest}.pending.json"


def load_calibration(models_dir: Union[str, Path], key: dict[str, Any]) -> Optional[Calibration]:
    saved = _read(cache_path(models_dir, key), key)
    try:
        return Calibration(**saved["calibration"]) if saved and "calibration" in saved else None
    except TypeError:
        return None  # written by another version of this module: measure again


def load_failure(models_dir: Union[str, Path], key: dict[str, Any]) -> Optional[str]:
    """Why the calibration of this key failed, if it did in the last FAILURE_TTL_S seconds."""
    saved = _read(cache_path(models_dir, key), key)
    if saved and "error" in saved and time.time() - float(saved.get("at", 0)) < FAILURE_TTL_S:
        return str(saved["error"])
    return None


def store_calibration(models_dir: Union[str, Path], key: dict[str, Any], calibration: Calibration) -> Path:
    return _write(cache_path(models_dir, key), {"key": key, "calibration": asdict(calibration), "at": time.time()})


def store_failure(models_dir: Union[str, Path], key: dict[str, Any], error: str) -> Path:
    return _write(cache_path(models_dir, key), {"key": key, "error": error, "at": time.time()})


def claim_pending(models_dir: Union[str, Path], key: dict[str, Any], request: dict[str, Any]) -> Optional[str]:
    """Record that a measurement of `key` is queued, with `request` (what the measuring process needs).

    Returns the key's digest, or None when one is already queued (and younger than PENDING_TTL_S): one measurement
    per key at a time, whoever asks. The file is created exclusively, so two processes never both claim it.
    """
    digest = key_digest(key)
    path = pending_path(models_dir, digest)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        if time.time() - path.stat().st_mtime >= PENDING_TTL_S:
            path.unlink(missing_ok=True)  # lost: its worker died
    except FileNotFoundError:
        pass
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return None
    with os.fdopen(fd, "w") as out:
        json.dump({"key": key, **request, "at": time.time()}, out)
    return digest


def read_pending(models_dir: Union[str, Path], digest: str) -> Optional[dict[str, Any]]:
    try:
        return json.loads(pending_path(models_dir, digest).read_text())
    except (OSError, ValueError):
        return None


def release_pending(models_dir: Union[str, Path], digest: str) -> None:
    pending_path(models_dir, digest).unlink(missing_ok=True)


# --- measuring ---------------------------------------------------------------------------------------------------
def calibration_config(config: TrainingConfig) -> TrainingConfig:
    """The run's config, cut down to a few steps."""
    rm = {**config.to_dict()["reward_model_config"], "num_epochs": CALIBRATION_RM_EPOCHS}
    return config.replace(max_steps=CALIBRATION_PPO_STEPS, reward_model_config=rm)


def calibration_records(records: list[FeedbackRecord], config: TrainingConfig) -> list[FeedbackRecord]:
    """A seeded sample of the feedback, large enough for 2 reward-model batches per epoch (for KTO and DPO, one
    that still holds both classes or enough pairs)."""
    rm = config.reward_model_config
    wanted = max(MIN_FEEDBACK, math.ceil(2 * rm.batch_size / (1 - rm.validation_split)) + 2)
    if len(records) <= wanted:
        return list(records)
    if config.algorithm in PREFERENCE_ALGORITHMS:
        return preference_subset(records, config, wanted)
    return random.Random(config.seed).sample(records, wanted)


def calibration_from_result(result: TrainingResult) -> Calibration:
    """Split a miniature run's timings into fixed costs and per-step costs."""
    timings, rm = result.timings, result.reward_model_metrics
    # None: a phase the algorithm does not have apart (KTO/DPO score inside their update)
    phases = ("timing/generate_s", "timing/score_s", "timing/update_s")
    step_s = [sum(h[k] or 0.0 for k in phases) for h in result.history]
    rm_eval_batches = rm["epochs"] * math.ceil(rm["val_size"] / result.config["reward_model_config"]["batch_size"])
    rm_eval_s = rm["eval_seconds"]
    rm_train_s = rm["fit_seconds"] - rm_eval_s
    return Calibration(
        fixed_s=max(0.0, timings["total_s"] - rm["fit_seconds"] - sum(step_s)),
        rm_step_s=rm_train_s / max(rm["steps"], 1),
        rm_eval_batch_s=rm_eval_s / rm_eval_batches if rm_eval_batches else 0.0,
        ppo_first_step_s=step_s[0],
        # The median: robust to a step slowed by another process, and unlike the minimum it does not pick the
        # step whose sampled responses happened to end earliest.
        ppo_step_s=statistics.median(step_s[1:]) if len(step_s) > 1 else step_s[0],
    )


def default_calibration(config: TrainingConfig, key: dict[str, Any], *, models_dir: Union[str, Path]) -> Calibration:
    """A rough Calibration from the config alone (DEFAULT_COSTS), for a key nobody has measured yet.

    A PPO step: `batch_size` rollouts of prompt + max_new_tokens tokens, generated once, scored and passed through
    the reference once, then ppo_epochs forward+backward passes (3 passes each). A reward-model batch: forward +
    backward over its texts; a validation batch: forward only.
    """
    costs = DEFAULT_COSTS
    rm = config.reward_model_config
    policy_m = _mparams(model_directory(config.base_model, models_dir))
    reward_m = _mparams(model_directory(rm.base_model or config.base_model, models_dir))
    per_token = lambda m: costs["per_token_s"] + costs["per_token_per_mparam_s"] * m  # noqa: E731
    prompt_tokens = key["prompt_chars"] / CHARS_PER_TOKEN
    text_tokens = key["text_chars"] / CHARS_PER_TOKEN
    passes = 3 + 3 * config.ppo_epochs  # generate + score + reference, then forward + backward per epoch
    step_s = config.batch_size * (prompt_tokens + config.max_new_tokens) * passes * per_token(policy_m)
    return Calibration(
        fixed_s=costs["fixed_s"] + costs["fixed_per_mparam_s"] * (policy_m + reward_m),
        rm_step_s=rm.batch_size * text_tokens * 3 * per_token(reward_m),
        rm_eval_batch_s=rm.batch_size * text_tokens * per_token(reward_m),
        ppo_first_step_s=step_s,
        ppo_step_s=step_s,
    )


# --- the estimate ------------------------------------------------------------------------------------------------
def extrapolate(calibration: Calibration, config: TrainingConfig, *, n_records: int) -> float:
    """Seconds the full run should take on `n_records` (the feedback left for training after the held-out prompts).

    The reward model's fit: with cross-validation every fold fits (k-1)/k of the records for num_epochs and the
    kept model fits all of them (at most num_epochs: counted in full), every record predicted once per epoch;
    otherwise one fit on the training split, the validation split predicted once per epoch.
    """
    rm = config.reward_model_config
    if rm.cross_validates(n_records):
        folds = min(rm.cv_folds, n_records)
        fits = [n_records] + [n_records - n_records // folds] * folds
        n_val = n_records
    else:
        n_val = min(max(2, round(n_records * rm.validation_split)), n_records - 2) if rm.validation_split > 0 else 0
        fits = [n_records - n_val]
    rm_steps = rm.num_epochs * sum(math.ceil(n / rm.batch_size) for n in fits)
    rm_eval_batches = rm.num_epochs * math.ceil(n_val / rm.batch_size)
    return (
        calibration.fixed_s
        + rm_steps * calibration.rm_step_s
        + rm_eval_batches * calibration.rm_eval_batch_s
        + calibration.ppo_first_step_s
        + (config.max_steps - 1) * calibration.ppo_step_s
    )


def make_estimate(
    config: TrainingConfig, data: FeedbackData, calibration: Calibration, *, source: str, warnings: list[str] = (),
    total_records: Optional[int] = None,
) -> TrainingEstimate:
    """The dry run's answer: `source` is "measured" (a calibration) or "default" (default_calibration).

    `total_records`: `data` is a sample of that many records; the held-out share measured on it is scaled up."""
    heldout, _ = heldout_split([r.prompt for r in data.records], config)
    n_train = sum(r.prompt not in heldout for r in data.records)
    if total_records is not None:
        n_train = round(n_train * total_records / len(data.records))
    seconds = extrapolate(calibration, config, n_records=n_train)
    return TrainingEstimate(
        feedback_count=total_records if total_records is not None else len(data.records),
        estimated_steps=config.max_steps,
        estimated_time_minutes=round(seconds / 60, 2),
        score_mean=data.score_mean,
        score_std=data.score_std,
        model_config={
            "base_model": config.base_model, "use_lora": config.use_lora, "learning_rate": config.learning_rate,
        },
        warnings=[*data.warnings, *warnings],
        seconds_per_step=calibration.ppo_step_s,
        estimate_source=source,
    )


# --- helpers -----------------------------------------------------------------------------------------------------
def _read(path: Path, key: dict[str, Any]) -> Optional[dict[str, Any]]:
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # missing or unreadable: measure again
    return saved if isinstance(saved, dict) and saved.get("key") == key else None


def _write(path: Path, content: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(content, indent=2))
    os.replace(tmp, path)
    return path


def _installed(package: str) -> Optional[str]:
    """A package's installed version, read from its metadata (importing torch is what the web must not do)."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _fingerprint(directory: Optional[Path]) -> Optional[str]:
    """A local model directory's config.json, hashed with its modification time (a rebuild of the same
    architecture may answer at another length); None for a hub id or a model not built yet."""
    config_file = directory / "config.json" if directory is not None else None
    if config_file is None or not config_file.is_file():
        return None
    return hashlib.sha256(config_file.read_bytes() + str(config_file.stat().st_mtime_ns).encode()).hexdigest()[:16]


def _mparams(directory: Optional[Path]) -> float:
    """Millions of parameters of a GPT-like model, from its config.json (12 L d^2 + V d); gpt2's when unknown."""
    try:
        config = json.loads((directory / "config.json").read_text())  # type: ignore[operator]
        layers = config.get("n_layer") or config["num_hidden_layers"]
        width = config.get("n_embd") or config["hidden_size"]
        return (12 * layers * width * width + config.get("vocab_size", 0) * width) / 1e6
    except (TypeError, OSError, ValueError, KeyError):
        return DEFAULT_COSTS["unknown_model_mparams"]


def _bucket(value: float) -> int:
    return 2 ** max(4, math.ceil(math.log2(max(value, 1))))
