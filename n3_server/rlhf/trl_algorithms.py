"""RLOO and GRPO through TRL's own trainers, behind train_ppo's signature.

    train_rloo(policy=..., tokenizer=..., prompts=..., reward_fn=..., config=..., device=..., callback=..., log=...)

TRL's RLOOTrainer / GRPOTrainer do the work; this module only translates. Our reward model becomes TRL's reward
function, our prompts a `datasets.Dataset` of queries (`format_query`: prompt + "\\n", cut to max_prompt_length
tokens from the left), our callback and log a TrainerCallback, TRL's logged metrics our METRIC_KEYS. TRL writes
nothing outside a temporary output_dir (no report_to, no checkpoints, no stdout printer).

One RL step here is what it is in PPO: sample `batch_size` completions (batch_size / num_generations prompts,
num_generations completions each), score them, take **one** optimizer step over them in micro-batches of at most
`mini_batch_size` (TRL's gradient_accumulation_steps = batch_size / micro-batch, one generation per step).

The policy is trained in place. With LoRA the trainer hands us a fresh PeftModel; TRL would add a frozen copy of
its adapter ("ref") as the reference, which we delete before training so the reference is the base model with the
adapter disabled -- exactly what passing `peft_config` to TRL gives, and what our PPO uses.

Which TrainingConfig fields apply:

    ======================  ==========================================  =====================================
    TrainingConfig          TRL (RLOOConfig / GRPOConfig)               notes
    ======================  ==========================================  =====================================
    learning_rate           learning_rate (constant schedule, AdamW)    as PPO: no warm-up, no decay, wd 0
    max_steps               max_steps                                   one generation + one optimizer step
    batch_size              generation_batch_size                       completions per step
    (derived)               num_generations                             4 if batch_size % 4 == 0, else 2
    mini_batch_size         per_device_train_batch_size                 largest divisor of batch_size <= it
    max_new_tokens          max_completion_length
    max_prompt_length       (we cut the query before TRL sees it)       TRL 1.x has no prompt limit
    temperature             temperature (top_k=0, top_p=1)              sampling from the policy, as PPO
    init_kl_coef            beta                                        RLOO: KL in the reward; GRPO: in the loss
    cliprange               epsilon                                     only bites with reused generations
    max_grad_norm           max_grad_norm
    seed                    seed, data_seed
    device, dtype           use_cpu, bf16, fp16
    use_lora, lora_*        the PeftModel we are given                  reference = adapter disabled
    ======================  ==========================================  =====================================

Not applied (PPO only): ppo_epochs (num_iterations=1), gradient_accumulation_steps (always one optimizer step per
batch), target_kl / kl_horizon / adaptive_kl (beta is fixed), cliprange_value / vf_coef / gamma / lam /
whiten_rewards (no value head), missing_eos_penalty.

Metrics: TRL's `reward`, `reward_std`, `entropy`, `clip_ratio/region_mean`, `loss` map to objective/scores(_std),
policy/entropy, policy/clipfrac, loss/total (= loss/policy: there is no value loss). TRL logs KL per token;
objective/kl is per response as in PPO (per-token mean x mean completion length, which is exact for RLOO's
first-order estimate; GRPO's is Schulman's k3). Phase timings come from timing TRL's `_generate` (generate) and
`_generate_and_score_completions` (the rest of it: score); update is the remainder of the step. Keys TRL has no
equivalent for are None.

Under a launcher (N3_TRAINING_LAUNCHER="accelerate launch ...") TRL's trainer is data-parallel by itself and rank 0's
cancel decision reaches every process (distributed.should_stop); that path is not exercised by the tests (PPO's is).

trl_preference.py (KTO, DPO) runs TRL's preference trainers with this module's shared pieces: trainer_args,
micro_batch_size, prompt_queries, StepRecorder and run_trainer.
"""
from __future__ import annotations

import functools
import logging
import math
import tempfile
import time
from collections.abc import Callable
from typing import Any, Optional

import torch
from datasets import Dataset
from peft import PeftModel
from transformers import PrinterCallback, TrainerCallback
from transformers import ProgressCallback as HFProgressCallback
from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

from . import distributed
from .config import TrainingConfig
from .data import format_query
from .errors import ConfigError, NonFiniteError, TrainingCancelled
from .modeling import resolve_dtype
from .ppo import METRIC_KEYS, RewardFn, checked_scores
from .progress import Progress, ProgressCallback

TRL_TRAINERS = {"rloo": (RLOOConfig, RLOOTrainer), "grpo": (GRPOConfig, GRPOTrainer)}


def train_rloo(**kwargs: Any) -> list[dict]:
    """RLOO (Ahmadian et al. 2024) with TRL's RLOOTrainer; see the module docstring."""
    return train_trl("rloo", **kwargs)


def train_grpo(**kwargs: Any) -> list[dict]:
    """GRPO (Shao et al. 2024) with TRL's GRPOTrainer; see the module docstring."""
    return train_trl("grpo", **kwargs)


def train_trl(
    algorithm: str, *, policy: torch.nn.Module, tokenizer, prompts: list[str], reward_fn: RewardFn,
    config: TrainingConfig, device: torch.device, callback: Optional[ProgressCallback] = None,
    log: Optional[logging.Logger] = None, **_: object,
) -> list[dict]:
    """Train `policy` in place with TRL's `algorithm` trainer; one metrics dict per step (train_ppo's contract).

    Raises TrainingCancelled when `callback` returns True (after the step it was told about), NonFiniteError on a
    NaN/inf reward, loss or gradient norm; either carries the steps that ran as `exc.history`.
    """
    log = log or logging.getLogger(__name__)
    if not prompts:
        raise ValueError(f"train_{algorithm} needs at least one prompt")
    if config.use_lora and not isinstance(policy, PeftModel):
        raise ConfigError("use_lora is set but the policy is not a PeftModel: wrap it with get_peft_model() first")
    config_cls, trainer_cls = TRL_TRAINERS[algorithm]
    num_generations = _num_generations(config.batch_size)
    per_step_prompts = config.batch_size // num_generations
    prompts = prompts * math.ceil(per_step_prompts / len(prompts))  # TRL drops a step it cannot fill with prompts
    queries = prompt_queries(tokenizer, prompts, config.max_prompt_length)
    dataset = Dataset.from_dict({"prompt": queries, "raw_prompt": prompts})
    recorder = StepRecorder(algorithm, config, callback, log)
    with tempfile.TemporaryDirectory(prefix=f"n3-{algorithm}-") as scratch:
        trainer = trainer_cls(
            model=policy, reward_funcs=_reward_func(reward_fn, recorder), processing_class=tokenizer,
            args=config_cls(**trl_args(config, device, scratch, num_generations)), train_dataset=dataset,
            callbacks=[recorder],
        )
        _time_phases(trainer, recorder)
        return run_trainer(trainer, policy=policy, recorder=recorder)


def run_trainer(trainer, *, policy: torch.nn.Module, recorder: StepRecorder) -> list[dict]:
    """trainer.train() the way every TRL algorithm here runs: against the adapter-disabled reference, quiet, and
    raising TrainingCancelled / NonFiniteError with the steps that ran as `exc.history`. Returns the history."""
    algorithm, config = recorder.algorithm, recorder.config
    if isinstance(policy, PeftModel) and "ref" in policy.peft_config:
        policy.delete_adapter("ref")  # reference = adapter disabled (see the module docstring)
    for quiet in (PrinterCallback, HFProgressCallback):  # they print every log dict to stdout
        trainer.remove_callback(quiet)
    was_training = policy.training
    try:
        trainer.train()
        if recorder.cancelled_at is not None:
            raise TrainingCancelled(
                f"Training cancelled after {algorithm.upper()} step {recorder.cancelled_at} of {config.max_steps}"
            )
    except (TrainingCancelled, NonFiniteError) as exc:
        exc.history = recorder.history
        raise
    finally:
        policy.train(was_training)
    return recorder.history


def trl_args(config: TrainingConfig, device: torch.device, output_dir: str, num_generations: int) -> dict[str, Any]:
    """RLOOConfig/GRPOConfig keyword arguments for `config` (the table in the module docstring)."""
    return dict(
        trainer_args(config, device, output_dir, micro_batch=micro_batch_size(config)),
        num_generations=num_generations, num_iterations=1, epsilon=config.cliprange, beta=config.init_kl_coef,
        max_completion_length=config.max_new_tokens, temperature=config.temperature, top_k=0, top_p=1.0,
    )


def trainer_args(config: TrainingConfig, device: torch.device, output_dir: str, *, micro_batch: int) -> dict[str, Any]:
    """The keyword arguments every TRL config here shares: one optimizer step per `batch_size` examples, taken in
    micro-batches of `micro_batch`; AdamW at a constant rate; nothing written outside output_dir."""
    dtype = resolve_dtype(config.dtype, device)
    return dict(
        output_dir=output_dir, report_to="none", save_strategy="no", logging_steps=1, disable_tqdm=True,
        logging_nan_inf_filter=False,  # the Trainer would otherwise log a NaN loss as the previous average
        max_steps=config.max_steps, learning_rate=config.learning_rate, lr_scheduler_type="constant",
        warmup_steps=0, weight_decay=0.0, optim="adamw_torch", max_grad_norm=config.max_grad_norm,
        per_device_train_batch_size=micro_batch, gradient_accumulation_steps=config.batch_size // micro_batch,
        seed=config.seed, data_seed=config.seed, use_cpu=device.type == "cpu",
        bf16=dtype == torch.bfloat16, fp16=dtype == torch.float16,
        gradient_checkpointing=False, disable_dropout=True,  # as PPO: dropout off, no recomputation
    )


def micro_batch_size(config: TrainingConfig, *, minimum: int = 1) -> int:
    """The largest divisor of batch_size that is <= mini_batch_size (a step is then exactly one batch), or, when
    none of those is >= `minimum`, the smallest divisor that is."""
    divisors = [d for d in range(minimum, config.batch_size + 1) if config.batch_size % d == 0]
    fitting = [d for d in divisors if d <= config.mini_batch_size]
    return max(fitting) if fitting else min(divisors)


def _num_generations(batch_size: int) -> int:
    """Completions per prompt (TrainingConfig makes batch_size even for these algorithms)."""
    return 4 if batch_size % 4 == 0 else 2


def prompt_queries(tokenizer, prompts: list[str], max_prompt_length: int) -> list[str]:
    """format_query(prompt), cut to its last max_prompt_length tokens (TRL re-tokenizes the text)."""
    queries = []
    for prompt, ids in zip(prompts, tokenizer([format_query(p) for p in prompts])["input_ids"]):
        fits = len(ids) <= max_prompt_length
        queries.append(format_query(prompt) if fits else tokenizer.decode(ids[-max_prompt_length:]))
    return queries


def _reward_func(reward_fn: RewardFn, recorder: StepRecorder) -> Callable[..., list[float]]:
    """TRL's reward-function protocol around ours: it gets the raw prompts (the reward model formats them itself)."""

    def reward_model(prompts: list[str], completions: list[str], raw_prompt: list[str], **_: Any) -> list[float]:
        where = f"at {recorder.algorithm.upper()} step {recorder.step}"
        return checked_scores(reward_fn, raw_prompt, completions, where=where).tolist()

    return reward_model


def _time_phases(trainer, recorder: StepRecorder) -> None:
    """Time TRL's generation and generation+scoring methods (instance attributes shadow the class's)."""
    for name, phase in (("_generate", "generate"), ("_generate_and_score_completions", "rollout")):
        method = getattr(trainer, name, None)
        if method is None:  # another TRL version: the split is reported as None
            continue

        @functools.wraps(method)
        def timed(*args: Any, _method=method, _phase=phase, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return _method(*args, **kwargs)
            finally:
                recorder.phase_s[_phase] = recorder.phase_s.get(_phase, 0.0) + time.perf_counter() - t0

        setattr(trainer, name, timed)


class StepRecorder(TrainerCallback):
    """TRL's per-step logs -> our metrics dicts, training.log lines, Progress callbacks, NaN guard, cancellation.

    `metrics` maps one step's logs to METRIC_KEYS; trl_preference.py overrides it for KTO and DPO.
    """

    def __init__(
        self, algorithm: str, config: TrainingConfig, callback: Optional[ProgressCallback], log: logging.Logger,
    ):
        self.algorithm, self.config, self.callback, self.log = algorithm, config, callback, log
        self.history: list[dict] = []
        self.phase_s: dict[str, float] = {}
        self.step, self.started, self.cancelled_at = 0, 0.0, None

    def on_step_begin(self, args, state, control, **kwargs):
        self.step, self.started, self.phase_s = state.global_step + 1, time.perf_counter(), {}

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if "loss" not in logs or state.global_step <= len(self.history):  # the end-of-training summary, not a step
            return
        elapsed = time.perf_counter() - self.started
        stats = self.metrics(state.global_step, logs, elapsed)
        for name, value in (("reward", stats["objective/scores"]), ("loss", stats["loss/total"]),
                            ("KL", stats["objective/kl"]), ("gradient norm", logs.get("grad_norm"))):
            if value is not None and not math.isfinite(value):
                raise NonFiniteError(
                    f"The {self.algorithm.upper()} {name} became {value} at step {state.global_step}; training "
                    f"stopped. {self.config.nonfinite_hint()}"
                )
        self.history.append(stats)
        self.log.info(
            "%s step %d/%d reward=%s kl=%s loss=%.4f tokens/s=%.1f", self.algorithm, stats["step"],
            self.config.max_steps, _fmt(stats["objective/scores"]), _fmt(stats["objective/kl"]), stats["loss/total"],
            stats["tokens_per_s"],
        )
        progress = Progress(phase="policy", step=stats["step"], total=self.config.max_steps, metrics=stats)
        # Under a launcher rank 0's callback decides for every process, as in PPO (see distributed.should_stop).
        if distributed.should_stop(lambda: self.callback is not None and self.callback(progress)):
            self.log.info("%s cancelled after step %d/%d", self.algorithm, stats["step"], self.config.max_steps)
            self.cancelled_at = stats["step"]
            control.should_training_stop = True
        return control

    def metrics(self, step: int, logs: dict, elapsed: float) -> dict:
        length = logs.get("completions/mean_length")
        kl_per_token = logs.get("kl")
        kl = kl_per_token * length if kl_per_token is not None and length is not None else None
        beta = self.config.init_kl_coef
        scores = logs.get("reward")
        generate_s, rollout_s = self.phase_s.get("generate"), self.phase_s.get("rollout")
        stats = dict.fromkeys(METRIC_KEYS)
        stats.update({
            "step": step,
            "objective/scores": scores,
            "objective/scores_std": logs.get("reward_std"),
            "objective/kl": kl,
            "objective/kl_coef": beta,
            "objective/rlhf_reward": scores - beta * kl if scores is not None and kl is not None else scores,
            "policy/entropy": logs.get("entropy"),
            "policy/clipfrac": logs.get("clip_ratio/region_mean"),
            "loss/policy": logs["loss"],
            "loss/total": logs["loss"],
            "timing/generate_s": generate_s,
            "timing/score_s": rollout_s - generate_s if rollout_s is not None and generate_s is not None else None,
            "timing/update_s": elapsed - rollout_s if rollout_s is not None else None,
            "tokens_per_s": (length or 0.0) * self.config.batch_size / max(elapsed, 1e-9),
            "response_length": length,
        })
        return stats


def _fmt(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.4f}"
