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

Without a calibration, rough_calibration() gives a rough figure (estimateSource "rough") from the models' sizes,
the lengths and this machine's matmul speed, scaled by the measured keys on this MODELS_DIR where there are any
(see ROUGH_COSTS), and the service queues a measurement in the worker (training.calibration).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import random
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any, Optional, Union

from .config import TrainingConfig
from .context import slow_rate_warning
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
    "device", "dtype", "eval_fraction", "eval_max_prompts", "eval_samples_per_prompt", "best_of_n",
)
REWARD_MODEL_TIMING_FIELDS = ("base_model", "batch_size", "lora_r", "lora_dropout", "max_length")
CHARS_PER_TOKEN = 4  # GPT-2-like tokenizers on English: only to cap the length buckets where truncation caps tokens

# rough_calibration(): a run's phases counted as floating-point work and sequential model calls (_rough_work), timed
# as  FLOPs / (machine_flops at the model's width x efficiency) + calls x (per_call_s + per_layer_call_s x layers),
# plus start-up, loading and saving. Call costs (Python, the framework's dispatch, sampling) dominate small models on
# a CPU, FLOPs large ones. Fitted to n3-tiny on 2 shared CPU cores (measured 1.5-8.5 min for the 30-step run this
# says 3.2 min for; README "Dry runs"); efficiency: torch's forward + backward of a GPT-2-sized model on 2 threads
# against the one-core matmul, 0.3 on that busy machine, about 1 on a quiet one. A GPU is not known here: until a
# key is measured, it is taken to be this machine's CPU. Any measured key on this MODELS_DIR then scales the figure
# (rough_calibration).
ROUGH_COSTS = {
    "per_call_s": 0.01, "per_layer_call_s": 0.01, "efficiency": 0.5, "start_s": 2.0, "load_s_per_mparam": 0.02,
    "decode_call_share": 0.5,  # a decoding step (no gradients, cached keys) against a training forward call
    "step_calls": 2,  # a policy step's bookkeeping (KL controller, whitening, statistics, progress), in calls
    "first_step_factor": 1.4,  # the first policy step's warm-up
}
UNKNOWN_MODEL = {"n_layer": 12, "n_embd": 768, "vocab_size": 50257}  # gpt2's shape, for a model not readable here
BUCKET_MEAN = 0.7  # a length bucket holds (b/2, b] characters: take ~0.7 b
MATMUL_ROWS = 64  # the matmul timed for this machine's speed: [64, d] x [d, 4d], float32
CONSERVATIVE_FLOPS = 2e9  # FLOP/s when numpy is not installed here: a slow core's
EVAL_CHUNK = 32  # prompts per generate() call in the evaluation (evaluation.CHUNK)


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


@dataclass(frozen=True)
class ModelShape:
    layers: int
    width: int
    vocab: int

    @property
    def params(self) -> float:
        """Weights a token passes through (12 L d^2 + V d; the LM head's matmul is the embedding's size)."""
        return 12 * self.layers * self.width * self.width + self.vocab * self.width


@dataclass(frozen=True)
class Work:
    """What a phase costs: floating-point operations, and model calls made one after the other."""

    flops: float = 0.0
    calls: float = 0.0

    def __add__(self, other: Work) -> Work:
        return Work(self.flops + other.flops, self.calls + other.calls)

    def __mul__(self, times: float) -> Work:
        return Work(self.flops * times, self.calls * times)


@dataclass(frozen=True)
class RoughCalibration:
    """rough_calibration()'s answer: the Calibration and, in words, what paced it (for the dry run's warning)."""

    calibration: Calibration
    basis: str


def rough_calibration(key: dict[str, Any], *, models_dir: Union[str, Path]) -> RoughCalibration:
    """A Calibration for a key nobody has measured yet: the run's work counted from the models' sizes and the
    lengths (_rough_work), timed with this machine's matmul speed at the model's width (machine_flops) and
    ROUGH_COSTS, then scaled phase by phase by measured/rough of the calibrations on this MODELS_DIR with the same
    device and torch (those of the same base model if there are any): a CPU's call costs and a GPU's speed are
    learnt from the first measured key. It reads the key only, so that the stored keys are figured the same way."""
    rough = _rough_from_key(key, models_dir)
    ratios, measured = _measured_ratios(key, models_dir)
    if not ratios:
        device = "" if key.get("device") == "cpu" else " (a CPU's speed: a GPU is much faster)"
        return RoughCalibration(rough, f"this machine's matmul speed{device}")
    scaled = Calibration(**{name: value * ratios.get(name, 1.0) for name, value in asdict(rough).items()})
    return RoughCalibration(scaled, f"the pace of the {measured} measured on this machine")


def machine_flops(width: int) -> float:
    """Float32 FLOP/s of one of this machine's CPU cores at a matmul of a model of this width ([64, d] x [d, 4d],
    the MLP's shape): torch's where this process has loaded it, else numpy's; cached per process (milliseconds per
    width, and numpy's import once). Without numpy (a web-only install), CONSERVATIVE_FLOPS."""
    return _machine_flops(max(16, int(width)))


@lru_cache(maxsize=16)
def _machine_flops(width: int) -> float:
    torch = sys.modules.get("torch")  # a training, CLI or test process has it loaded: time it (never imported here)
    if torch is not None:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return _time_matmul(torch.randn(MATMUL_ROWS, width), torch.randn(width, 4 * width))
        finally:
            torch.set_num_threads(threads)
    # numpy with one BLAS thread, set before it loads (the web process: nothing else there loads it): a thread pool
    # on cores that other processes keep busy would measure its own spinning, not the machine.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    try:
        import numpy as np  # noqa: PLC0415  (only a dry-run miss needs it: the web's other paths never load BLAS)
    except ImportError:
        return CONSERVATIVE_FLOPS
    rng = np.random.default_rng(0)
    return _time_matmul(rng.standard_normal((MATMUL_ROWS, width), dtype=np.float32),
                        rng.standard_normal((width, 4 * width), dtype=np.float32))


def _time_matmul(a: Any, b: Any) -> float:
    """FLOP/s of a @ b: the median of 5 timings of about 4 MFLOP each (milliseconds in all)."""
    flops = 2 * a.shape[0] * a.shape[1] * b.shape[1]
    repeats = max(1, int(4e6 // flops))
    seconds = []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(repeats):
            a @ b
        seconds.append((time.perf_counter() - started) / repeats)
    # The median: the machine as the run will find it (other processes included), not its best moment.
    return flops / max(statistics.median(seconds), 1e-9)


def model_shape(name: Optional[str], models_dir: Union[str, Path]) -> ModelShape:
    """A GPT-like model's layers, width and vocabulary from its config.json; gpt2's when it cannot be read here."""
    directory = model_directory(name, models_dir) if name else None
    try:
        config = json.loads((directory / "config.json").read_text())  # type: ignore[operator]
    except (TypeError, OSError, ValueError):
        config = {}
    layers = config.get("n_layer") or config.get("num_hidden_layers")
    width = config.get("n_embd") or config.get("hidden_size")
    if not (isinstance(layers, int) and isinstance(width, int)):
        config = UNKNOWN_MODEL
        layers, width = config["n_layer"], config["n_embd"]
    return ModelShape(layers=layers, width=width, vocab=int(config.get("vocab_size") or 0))


def _rough_work(key: dict[str, Any], policy: ModelShape, reward: ModelShape) -> dict[str, Work]:
    """Each phase's work, from the timing key. A forward pass costs 2 x params FLOPs a token, forward + backward 6.

    PPO step: `batch_size` rollouts of prompt + max_new_tokens tokens generated one token a call; scored by the
    reward model and passed through the reference and the policy (with its value head) once; then ppo_epochs
    passes over the batch in mini-batches, forward + backward. Reward model: forward + backward over a batch of
    feedback texts; a validation batch forward only. Evaluation (part of the fixed costs): the version and its
    start each generate eval_samples_per_prompt responses to the held-out prompts (of the calibration's sample),
    scored by the reward model.
    """
    prompt = key["prompt_chars"] * BUCKET_MEAN / CHARS_PER_TOKEN
    text = key["text_chars"] * BUCKET_MEAN / CHARS_PER_TOKEN
    new = key["max_new_tokens"]
    sequence = prompt + new
    batch, mini, epochs = key["batch_size"], max(1, key["mini_batch_size"]), key["ppo_epochs"]
    rm = key["reward_model"]
    rm_batch = rm["batch_size"]
    costs = ROUGH_COSTS
    # decoding calls (the prompt's included; every response taken to run to max_new_tokens), each counted as a share
    # of a training call
    steps = (new + 1) * costs["decode_call_share"]
    generate = Work(2 * policy.params * batch * sequence, steps + costs["step_calls"])
    score = Work(2 * (2 * policy.params + reward.params) * batch * sequence, 3 * math.ceil(batch / (2 * mini)))
    update = Work(6 * policy.params * batch * sequence, 3 * math.ceil(batch / mini) + 1) * epochs
    # The evaluation's held-out prompts, of the calibration's sample (calibration_records): as the measurement does.
    sample = max(MIN_FEEDBACK, math.ceil(2 * rm_batch / 0.8) + 2)
    prompts = min(key["eval_max_prompts"], max(1, round(key["eval_fraction"] * sample)))
    responses = 2 * key["eval_samples_per_prompt"] * prompts  # the version's and its start's
    evaluation = Work(
        responses * sequence * 2 * (policy.params + reward.params),
        2 * key["eval_samples_per_prompt"] * math.ceil(prompts / EVAL_CHUNK) * steps + responses / 8,
    ) if key["eval_fraction"] > 0 else Work()
    return {
        "ppo_step": generate + score + update,
        # forward, backward, optimizer, and each fold's set-up spread over its steps
        "rm_step": Work(6 * reward.params * rm_batch * text, 6),
        "rm_eval_batch": Work(2 * reward.params * rm_batch * text, 2),
        "evaluation": evaluation,
    }


def _rough_from_key(key: dict[str, Any], models_dir: Union[str, Path]) -> Calibration:
    costs = ROUGH_COSTS
    policy = model_shape(key["base_model"], models_dir)
    reward = model_shape(key["reward_model"]["base_model"], models_dir)
    work = _rough_work(key, policy, reward)

    def seconds(phase: Work, shape: ModelShape) -> float:
        flops = machine_flops(shape.width) * costs["efficiency"]
        return phase.flops / flops + phase.calls * (costs["per_call_s"] + costs["per_layer_call_s"] * shape.layers)

    step_s = seconds(work["ppo_step"], policy)
    loading = costs["load_s_per_mparam"] * 2 * (2 * policy.params + reward.params) / 1e6  # load and save
    return Calibration(
        fixed_s=costs["start_s"] + loading + seconds(work["evaluation"], policy),
        rm_step_s=seconds(work["rm_step"], reward),
        rm_eval_batch_s=seconds(work["rm_eval_batch"], reward),
        ppo_first_step_s=step_s * costs["first_step_factor"],
        ppo_step_s=step_s,
    )


def _measured_ratios(key: dict[str, Any], models_dir: Union[str, Path]) -> tuple[dict[str, float], str]:
    """measured / rough per Calibration field (geometric means) over the calibrations on this MODELS_DIR with the
    same device and torch as `key`, those of its base model if any; and what they are, in words."""
    alike = []
    for path in sorted((Path(models_dir) / CALIBRATION_DIR).glob("*.json"), key=_mtime, reverse=True)[:64]:
        if path.name.endswith(".pending.json"):
            continue
        try:
            saved = json.loads(path.read_text())
            other, measured = saved["key"], Calibration(**saved["calibration"])
            if all(other.get(name) == key.get(name) for name in ("version", "torch", "device", "dtype")):
                alike.append((other, measured, _rough_from_key(other, models_dir)))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    same_model = [entry for entry in alike if entry[0]["base_model"] == key["base_model"]]
    chosen = same_model or alike
    ratios = {}
    for name in Calibration.__dataclass_fields__:
        logs = [math.log(getattr(m, name) / getattr(r, name)) for _, m, r in chosen
                if getattr(m, name) > 0 and getattr(r, name) > 0]
        if logs:
            ratios[name] = math.exp(sum(logs) / len(logs))
    models = sorted({other["base_model"] for other, _, _ in chosen})
    words = f"{len(chosen)} configuration{'s' if len(chosen) != 1 else ''} of {', '.join(models)}"
    return ratios, words


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


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
    """The dry run's answer: `source` is "measured" (a calibration) or "rough" (rough_calibration).

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
        warnings=[*data.warnings, *warnings, *filter(None, [slow_rate_warning(config)])],
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


def _bucket(value: float) -> int:
    return 2 ** max(4, math.ceil(math.log2(max(value, 1))))
