"""How long a training run will take on this machine: measured, not guessed.

A dry run cannot know the speed of an unknown model on an unknown machine, so the trainer measures it:
it runs a *calibration* — a real, miniature training run (a few reward-model batches, 5 PPO steps, the
saves) with the run's own model, batch sizes and lengths on this machine's device — and reads the seconds
of each phase from its TrainingResult.timings and per-step history. This module holds the arithmetic around
that: which runs can share a calibration (the cache key), where it is cached (JSON under
MODELS_DIR/_calibration/), and how a calibration extrapolates to the full run::

    total = fixed costs (loading both models, the PPO set-up, saving)
          + reward-model steps x seconds per step + validation batches x seconds per batch
          + first PPO step + (max_steps - 1) x seconds per later PPO step (their median)
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import random
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from .config import TrainingConfig
from .data import FeedbackRecord
from .errors import MIN_FEEDBACK
from .preference_data import PREFERENCE_ALGORITHMS, preference_subset
from .results import TrainingResult

CALIBRATION_VERSION = 3  # bump when the training code's cost changes, so old measurements are not reused
CALIBRATION_DIR = "_calibration"
CALIBRATION_PPO_STEPS = 5  # the first step carries one-time costs; the later ones give the pace
CALIBRATION_RM_EPOCHS = 2


@dataclass
class Calibration:
    """Seconds measured by a miniature run on this machine."""

    fixed_s: float  # everything but the steps: loading the models, PPO set-up, saving
    rm_step_s: float  # one reward-model training batch
    rm_eval_batch_s: float  # one reward-model validation batch (no gradients)
    ppo_first_step_s: float
    ppo_step_s: float  # median of the later PPO steps


def calibration_key(
    config: TrainingConfig, *, device: torch.device, prompt_tokens: float, text_tokens: float,
    base_model_path: str, reward_base_model_path: str,
) -> dict[str, Any]:
    """Everything a step's cost depends on. Lengths are bucketed to powers of two so similar data shares a calibration.

    The base models' paths (as resolve_base_model returns them) are fingerprinted, so a rebuilt or replaced
    model at the same name is measured again.
    """
    rm = config.reward_model_config
    return {
        "version": CALIBRATION_VERSION,
        "host": platform.node(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "base_model": [config.base_model, _fingerprint(base_model_path)],
        "reward_base_model": [rm.base_model or config.base_model, _fingerprint(reward_base_model_path)],
        **{name: getattr(config, name) for name in (
            "algorithm", "dtype", "use_lora", "lora_r", "lora_target_modules", "batch_size", "mini_batch_size",
            "gradient_accumulation_steps", "ppo_epochs", "max_new_tokens", "max_prompt_length",
        )},
        "prompt_tokens": _bucket(min(prompt_tokens, config.max_prompt_length)),
        "reward_model": {"batch_size": rm.batch_size, "lora_r": rm.lora_r, "text_tokens": _bucket(min(text_tokens, rm.max_length))},
    }


def cache_path(models_dir: Path, key: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return Path(models_dir) / CALIBRATION_DIR / f"{digest}.json"


def load_calibration(models_dir: Path, key: dict[str, Any]) -> Optional[Calibration]:
    path = cache_path(models_dir, key)
    try:
        saved = json.loads(path.read_text())
        return Calibration(**saved["calibration"]) if saved.get("key") == key else None
    except (OSError, ValueError, KeyError, TypeError):
        return None  # missing or unreadable: measure again


def store_calibration(models_dir: Path, key: dict[str, Any], calibration: Calibration) -> Path:
    path = cache_path(models_dir, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"key": key, "calibration": asdict(calibration)}, indent=2))
    os.replace(tmp, path)
    return path


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


def _fingerprint(model_path: str) -> Optional[str]:
    """A local model directory's config.json, hashed with its modification time (a rebuild of the same
    architecture may answer at another length); None for a hub id (its cache is not ours to read)."""
    config_file = Path(model_path) / "config.json"
    if not config_file.is_file():
        return None
    return hashlib.sha256(config_file.read_bytes() + str(config_file.stat().st_mtime_ns).encode()).hexdigest()[:16]


def _bucket(tokens: float) -> int:
    return 2 ** max(4, math.ceil(math.log2(max(tokens, 1))))
