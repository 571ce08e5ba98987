"""KTO and DPO through TRL's own trainers, behind train_ppo's signature: they learn from the scored feedback itself.

    train_kto(policy=..., tokenizer=..., prompts=..., reward_fn=..., config=..., device=..., records=..., ...)

PPO, RLOO and GRPO sample from the policy and learn from the reward model's scores. KTO and DPO never sample while
training: they raise the likelihood of the responses people scored well and lower that of the ones they scored
badly, relative to the reference (the policy as it started). preference_data.py turns the records into KTO's
labelled examples (score >= kto_desirable_threshold: desirable, <= kto_undesirable_threshold: undesirable, the
middle left out; the smaller class up-weighted) or DPO's pairs (two responses to one prompt whose scores differ by
at least dpo_pair_margin; the higher-scored one chosen). The trainer still fits the reward model first: it is the
evaluator, and `reward_fn` is its scorer.

TRL's KTOTrainer / DPOTrainer do the work; this module only translates, as trl_algorithms.py does for RLOO/GRPO
(and with its helpers): queries are `format_query(prompt)` cut to max_prompt_length tokens, our callback and log
a TrainerCallback, TRL's logged metrics our METRIC_KEYS, and TRL writes nothing outside a temporary output_dir.
With LoRA, TRL's frozen "ref" adapter copy is deleted so that the reference is the adapter-disabled base model.

One step is one optimizer step over `batch_size` examples (KTO) or pairs (DPO), in micro-batches of at most
`mini_batch_size`. The examples are cycled to a whole number of batches, so every step is a full batch; the run
goes over them as many times as max_steps needs (DPO in a fresh random order each time, KTO in our seeded order:
its sampler is sequential).

Which TrainingConfig fields apply:

    =========================  =====================================  ==============================================
    TrainingConfig             TRL (KTOConfig / DPOConfig)            notes
    =========================  =====================================  ==============================================
    kto_desirable_threshold    label (KTO)                            score >= it: desirable
    kto_undesirable_threshold  label (KTO)                            score <= it: undesirable; the middle dropped
    (derived)                  desirable_weight / undesirable_weight  weight x count equal for both classes
    dpo_pair_margin            the chosen/rejected pairs (DPO)        score gap that makes a pair
    init_kl_coef               beta                                   the KL coefficient of the objective both
                                                                      optimise (DPO's beta is exactly that)
    learning_rate              learning_rate (constant, AdamW)        as PPO: no warm-up, no decay, wd 0
    max_steps                  max_steps                              one optimizer step each
    batch_size                 examples / pairs per optimizer step
    mini_batch_size            per_device_train_batch_size            largest divisor of batch_size <= it (KTO: >= 2)
    max_prompt_length          (we cut the query before TRL sees it)
    max_prompt_length
      + max_new_tokens         max_length                             longer responses are cut at the end
    max_grad_norm              max_grad_norm
    seed                       seed, data_seed                        and our shuffle of the examples
    device, dtype              use_cpu, bf16, fp16
    use_lora, lora_*           the PeftModel we are given             reference = adapter disabled
    temperature,
      max_new_tokens           the final sample (below)
    =========================  =====================================  ==============================================

Not applied: ppo_epochs, gradient_accumulation_steps, target_kl / kl_horizon / adaptive_kl (beta is fixed),
cliprange, cliprange_value, vf_coef, gamma, lam, whiten_rewards, missing_eos_penalty.

Metrics per step: TRL's `loss` is loss/total (= loss/policy), `entropy` policy/entropy, KTO's `kl` (its estimate
of KL(policy || reference) on mismatched prompt/response pairs, per response, which its loss uses as the
reference point) objective/kl; DPO logs no KL (None). There is no generation (timing/generate_s 0) and no separate
scoring phase (timing/score_s None): the whole step is timing/update_s; tokens_per_s counts the prompt and response
tokens trained on. No step samples the policy, so objective/scores is None until the end: after the last step the
policy answers `batch_size` training prompts (distinct ones first, seeded; top_k=0 at the run's temperature,
max_new_tokens), `reward_fn` scores the answers, and the last entry gets their objective/scores, scores_std and
response_length, and objective/kl measured on those samples as PPO measures it (sum over the response of
log p_policy - log p_reference, replacing KTO's batch estimate there). That is what the trainer reports as the
run's final reward and KL.

Under a launcher TRL's trainers are data-parallel by themselves, as for RLOO/GRPO; not exercised by the tests.
"""
from __future__ import annotations

import contextlib
import itertools
import logging
import random
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any, Optional

import datasets
import torch
from datasets import Dataset
from peft import PeftModel
from trl import DPOConfig, DPOTrainer, KTOConfig, KTOTrainer

from .config import TrainingConfig
from .data import FeedbackRecord
from .errors import ConfigError, NonFiniteError
from .evaluation import kl_per_response, sample
from .ppo import METRIC_KEYS, RewardFn, checked_scores
from .preference_data import dpo_pairs, kto_data
from .progress import ProgressCallback
from .trl_algorithms import StepRecorder, micro_batch_size, prompt_queries, run_trainer, trainer_args

TRL_TRAINERS = {"kto": (KTOConfig, KTOTrainer), "dpo": (DPOConfig, DPOTrainer)}


def train_kto(
    *, policy: torch.nn.Module, tokenizer, prompts: list[str], reward_fn: RewardFn, config: TrainingConfig,
    device: torch.device, records: list[FeedbackRecord], callback: Optional[ProgressCallback] = None,
    log: Optional[logging.Logger] = None, **_: object,  # the other algorithms' inputs (reward_stats)
) -> list[dict]:
    """KTO (Ethayarajh et al. 2024) with TRL's KTOTrainer on the records' labelled responses (the module docstring).

    Raises ConfigError when the records hold only one class; TrainingCancelled / NonFiniteError as train_ppo does.
    """
    log = log or logging.getLogger(__name__)
    data = kto_data(
        records, desirable_threshold=config.kto_desirable_threshold,
        undesirable_threshold=config.kto_undesirable_threshold, seed=config.seed,
    )
    log.info(
        "kto: %d desirable (weight %.3g), %d undesirable (weight %.3g), %d between the thresholds left out",
        data.n_desirable, data.desirable_weight, data.n_undesirable, data.undesirable_weight, data.n_dropped,
    )
    queries = prompt_queries(tokenizer, [e.prompt for e in data.examples], config.max_prompt_length)
    rows = [{"prompt": q, "completion": e.completion, "label": e.label} for q, e in zip(queries, data.examples)]
    return _train(
        "kto", rows=rows,
        trl_fields={"desirable_weight": data.desirable_weight, "undesirable_weight": data.undesirable_weight},
        # TRL's KL estimate pairs each example with another of its micro-batch: a micro-batch of one has none.
        micro=micro_batch_size(config, minimum=2),
        policy=policy, tokenizer=tokenizer, prompts=prompts, reward_fn=reward_fn, config=config, device=device,
        callback=callback, log=log,
    )


def train_dpo(
    *, policy: torch.nn.Module, tokenizer, prompts: list[str], reward_fn: RewardFn, config: TrainingConfig,
    device: torch.device, records: list[FeedbackRecord], callback: Optional[ProgressCallback] = None,
    log: Optional[logging.Logger] = None, **_: object,  # the other algorithms' inputs (reward_stats)
) -> list[dict]:
    """DPO (Rafailov et al. 2023) with TRL's DPOTrainer on pairs of the records (the module docstring).

    Raises ConfigError when the records yield too few pairs; TrainingCancelled / NonFiniteError as train_ppo does.
    """
    log = log or logging.getLogger(__name__)
    pairs = dpo_pairs(records, margin=config.dpo_pair_margin, seed=config.seed)
    log.info(
        "dpo: %d preference pairs (score gap >= %g) from %d prompts",
        len(pairs), config.dpo_pair_margin, len({p.prompt for p in pairs}),
    )
    queries = prompt_queries(tokenizer, [p.prompt for p in pairs], config.max_prompt_length)
    rows = [{"prompt": q, "chosen": p.chosen, "rejected": p.rejected} for q, p in zip(queries, pairs)]
    return _train(
        "dpo", rows=rows, trl_fields={}, micro=micro_batch_size(config),
        policy=policy, tokenizer=tokenizer, prompts=prompts, reward_fn=reward_fn, config=config, device=device,
        callback=callback, log=log,
    )


def _train(
    algorithm: str, *, rows: list[dict], trl_fields: dict[str, Any], micro: int, policy: torch.nn.Module, tokenizer,
    prompts: list[str], reward_fn: RewardFn, config: TrainingConfig, device: torch.device,
    callback: Optional[ProgressCallback], log: logging.Logger,
) -> list[dict]:
    """Train `policy` in place on `rows` (TRL's dataset format; `trl_fields`: the algorithm's own config fields),
    then score a final sample into the last step."""
    if not prompts:
        raise ValueError(f"train_{algorithm} needs at least one prompt")
    if config.use_lora and not isinstance(policy, PeftModel):
        raise ConfigError("use_lora is set but the policy is not a PeftModel: wrap it with get_peft_model() first")
    config_cls, trainer_cls = TRL_TRAINERS[algorithm]
    dataset = Dataset.from_list(_whole_batches(rows, config.batch_size))
    recorder = PreferenceStepRecorder(algorithm, config, callback, log)
    with tempfile.TemporaryDirectory(prefix=f"n3-{algorithm}-") as scratch:
        args = config_cls(
            **trainer_args(config, device, scratch, micro_batch=micro), **trl_fields,
            beta=config.init_kl_coef, max_length=config.max_prompt_length + config.max_new_tokens,
        )
        with _quiet_datasets():  # TRL tokenizes with dataset.map(), which draws a progress bar per pass
            trainer = trainer_cls(
                model=policy, args=args, train_dataset=dataset, processing_class=tokenizer, callbacks=[recorder],
            )
        history = run_trainer(trainer, policy=policy, recorder=recorder)
        if isinstance(policy, PeftModel):
            reference = policy.disable_adapter
        elif trainer.ref_model is not None:  # full fine-tuning: TRL loaded a frozen copy of the starting model
            reference = _as_context(trainer.ref_model)
        else:
            reference = None
        t0 = time.perf_counter()
        try:
            final = final_sample(
                policy=policy, reference=reference, tokenizer=tokenizer, prompts=prompts, reward_fn=reward_fn,
                config=config, device=device,
            )
        except NonFiniteError as exc:
            exc.history = history
            raise
    history[-1].update(final)
    log.info(
        "%s: final sample of %d responses in %.1fs: reward=%.4f ± %.4f kl=%s length=%.1f", algorithm,
        config.batch_size, time.perf_counter() - t0, final["objective/scores"], final["objective/scores_std"],
        "n/a" if final["objective/kl"] is None else f"{final['objective/kl']:.4f}", final["response_length"],
    )
    return history


def final_sample(
    *, policy: torch.nn.Module, reference: Optional[Callable[[], contextlib.AbstractContextManager]], tokenizer,
    prompts: list[str], reward_fn: RewardFn, config: TrainingConfig, device: torch.device,
) -> dict[str, Any]:
    """Sample `batch_size` responses from the trained policy and score them (the module docstring).

    `reference()` is a context manager under which the policy is the reference (LoRA's disable_adapter) or that
    yields the reference model; None: no KL. Returns objective/scores, objective/scores_std, objective/kl (the k3
    estimate of evaluation.kl_per_response, per response) and response_length.
    """
    distinct = sorted(set(prompts))
    random.Random(config.seed).shuffle(distinct)
    batch = [distinct[i % len(distinct)] for i in range(config.batch_size)]
    samples = sample(policy, tokenizer, batch, config=config, device=device, seed=config.seed)
    scores = checked_scores(reward_fn, batch, samples.responses, where="for the trained policy's final sample")
    kl = None
    if reference is not None:
        @contextlib.contextmanager
        def reference_model() -> Iterator[torch.nn.Module]:
            with reference() as ref_model:  # LoRA's disable_adapter() yields None: the policy, adapter off
                yield policy if ref_model is None else ref_model

        per_response = kl_per_response(policy, reference_model, samples, config)
        kl = sum(per_response) / len(per_response)
    return {
        "objective/scores": scores.mean().item(),
        "objective/scores_std": scores.std(correction=0).item(),
        "objective/kl": kl,
        "response_length": sum(samples.lengths) / len(samples.lengths),
    }


class PreferenceStepRecorder(StepRecorder):
    """StepRecorder with KTO's / DPO's logs mapped onto METRIC_KEYS (the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.tokens_seen = 0  # TRL logs the running total of tokens trained on

    def metrics(self, step: int, logs: dict, elapsed: float) -> dict:
        tokens = logs.get("num_tokens")
        step_tokens = tokens - self.tokens_seen if tokens is not None else 0.0
        self.tokens_seen = tokens if tokens is not None else self.tokens_seen
        stats = dict.fromkeys(METRIC_KEYS)
        stats.update({
            "step": step,
            "objective/kl": logs.get("kl"),  # KTO only
            "objective/kl_coef": self.config.init_kl_coef,
            "policy/entropy": logs.get("entropy"),
            "loss/policy": logs["loss"],
            "loss/total": logs["loss"],
            "timing/generate_s": 0.0,
            "timing/update_s": elapsed,
            "tokens_per_s": step_tokens / max(elapsed, 1e-9),
        })
        return stats


def _whole_batches(rows: list[dict], batch_size: int) -> list[dict]:
    """`rows` cycled to a whole number of batches (at least one), so that every step is a full batch."""
    size = max(1, -(-len(rows) // batch_size)) * batch_size
    return list(itertools.islice(itertools.cycle(rows), size))


@contextlib.contextmanager
def _quiet_datasets() -> Iterator[None]:
    was_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_enabled:
            datasets.enable_progress_bars()


def _as_context(model: torch.nn.Module) -> Callable[[], contextlib.AbstractContextManager]:
    return lambda: contextlib.nullcontext(model)
