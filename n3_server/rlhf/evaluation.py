"""Is the new version better? Held-out prompts, samples from the version and from the model it started from.

    block = evaluate_policy(policy=..., reference=None, tokenizer=..., prompts=heldout, score_fn=reward_model.score,
                            config=config, device=device, baseline="base model n3-tiny")

For each held-out prompt (prompts no training step saw: data.heldout_split), `eval_samples_per_prompt` responses are
sampled from the version and as many from its baseline, with the run's own sampling settings (temperature, top_k=0,
max_new_tokens). `score_fn` scores both (the trainer passes its judge, reward_model.Judge; bench/effect_bench.py passes
a simulated reviewer's gold score), and pair k of the version is compared with pair k of the baseline:

    win_rate      P(version's score > baseline's), ties counting half, with its 95 % bootstrap interval
    reward_diff   mean(version's score - baseline's), with its interval
    kl            KL(version || baseline) on the version's samples, nats per response: the k3 estimator
                  (r - 1 - log r per token, r = p_baseline / p_version), which is unbiased and never negative
    better        the win rate's interval lies above 0.5 (the trainer adds its conditions: see trainer._verdict)

The intervals are bootstraps over prompts (several samples of one prompt are not independent). `score_fn` may be
several judges (the reward model's cross-validation folds: reward_model.Judge): their mean scores each response,
and judge_win_rates / judge_agreement say how far they agree; `also_scored_by` adds other scorers' win rates (the
trainer adds the reward model the policy was trained against, whose view is optimistic by construction).

The block is plain JSON (TrainingResult.evaluation). With LoRA the baseline is the same model with its adapter
disabled; otherwise `reference` is a separately loaded copy of the starting model.
"""
from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import torch
from peft import PeftModel
from transformers import PreTrainedModel

from . import stats
from .config import TrainingConfig
from .ppo import (
    _special_ids,
    generate_responses,
    mask_after_first_eos,
    merged_adapter,
    score_responses,
    tokenize_queries,
)

ScoreFn = Callable[[list[str], list[str]], Any]  # (prompts, responses) -> one score per response
SAMPLES_SHOWN = 8  # (prompt, response, baseline response) rows kept in the block for people to read
CHUNK = 32  # prompts per generate() call




@dataclass
class Samples:
    """Responses to `prompts` (one each) with what the KL needs: query and response ids [N, Q], [N, R] per chunk."""

    prompts: list[str]
    responses: list[str]
    lengths: list[int]  # response tokens, EOS included
    chunks: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]  # query ids, mask, response ids, mask


@torch.no_grad()
def sample(model: PreTrainedModel, tokenizer, prompts: list[str], *, config: TrainingConfig, device: torch.device,
           seed: int, merge_lora: bool = True) -> Samples:
    """One sampled response per prompt, the way the run samples (ppo.generate_responses), seeded.

    `merge_lora` folds a LoRA adapter in for speed (ppo.merged_adapter); never while the adapter is disabled, since
    merging would put the adapter's weights back into the model that is meant to be without them.
    """
    eos_id, pad_id = _special_ids(tokenizer)
    torch.manual_seed(seed)
    out = Samples(prompts=list(prompts), responses=[], lengths=[], chunks=[])
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(prompts), CHUNK):
            query_ids, query_mask = tokenize_queries(
                tokenizer, prompts[start:start + CHUNK], config.max_prompt_length, pad_id, device
            )
            with merged_adapter(model) if merge_lora else contextlib.nullcontext():
                response_ids = generate_responses(model, query_ids, query_mask, config, eos_id, pad_id)  # [n, R]
            response_mask = mask_after_first_eos(response_ids, eos_id)  # [n, R]
            out.responses += [
                tokenizer.decode(ids[m].tolist(), skip_special_tokens=True)
                for ids, m in zip(response_ids, response_mask)
            ]
            out.lengths += response_mask.sum(dim=1).tolist()
            out.chunks.append((query_ids, query_mask, response_ids, response_mask))
    finally:
        model.train(was_training)
    return out


@torch.no_grad()
def kl_per_response(
    model: PreTrainedModel, reference: Callable[[], contextlib.AbstractContextManager], samples: Samples,
    config: TrainingConfig,
) -> list[float]:
    """k3 estimate of KL(model || reference) per sampled response (nats, summed over its tokens, >= 0). In eval
    mode: dropout would make a model differ from itself (0.02 nats between a version and an identical one)."""
    out: list[float] = []
    was_training = model.training
    model.eval()
    try:
        for query_ids, query_mask, response_ids, response_mask in samples.chunks:
            logprobs, _ = score_responses(model, None, query_ids, query_mask, response_ids, config)  # [n, R]
            with reference() as ref_model:
                ref_logprobs, _ = score_responses(ref_model, None, query_ids, query_mask, response_ids, config)
            log_ratio = (ref_logprobs - logprobs).clamp(-20, 20)  # log(p_ref / p_model) per token
            k3 = (log_ratio.exp() - 1 - log_ratio) * response_mask
            out += k3.sum(dim=1).tolist()
    finally:
        model.train(was_training)
    return out


def evaluate_policy(
    *, policy: PreTrainedModel, reference: Optional[PreTrainedModel], tokenizer, prompts: Sequence[str],
    score_fn: ScoreFn, config: TrainingConfig, device: torch.device, baseline: str, scored_by: str,
    also_scored_by: Optional[dict[str, ScoreFn]] = None,
) -> dict[str, Any]:
    """The evaluation block (see the module docstring). `reference` None: `policy` with its LoRA adapter disabled.
    `score_fn` may return one score per response or a [judges, N] tensor (several judges: their mean scores);
    `also_scored_by` adds each named scorer's win rate as a block of its own."""
    if reference is None and not isinstance(policy, PeftModel):
        raise ValueError("evaluate_policy needs a reference model unless the policy is a LoRA PeftModel")
    reference_ctx = _reference(policy, reference)
    heldout = sorted(prompts)
    repeated = [p for p in heldout for _ in range(config.eval_samples_per_prompt)]
    seed = config.seed + 1  # not the training run's own sampling stream
    version = sample(policy, tokenizer, repeated, config=config, device=device, seed=seed)
    with reference_ctx() as ref_model:
        base = sample(ref_model, tokenizer, repeated, config=config, device=device, seed=seed, merge_lora=False)
    judged = _by_judge(score_fn(repeated, version.responses))
    base_judged = _by_judge(score_fn(repeated, base.responses))
    scores, base_scores = _mean_over_judges(judged), _mean_over_judges(base_judged)
    kl = kl_per_response(policy, reference_ctx, version, config)
    # Intervals resample prompts, not pairs: the samples of one prompt are not independent evidence (stats.py).
    rate, rate_low, rate_high = stats.win_rate(scores, base_scores, seed=config.seed, groups=repeated)
    diff, diff_low, diff_high = stats.mean_difference(scores, base_scores, seed=config.seed, groups=repeated)
    shown = random.Random(config.seed).sample(range(len(repeated)), min(SAMPLES_SHOWN, len(repeated)))
    block = {
        "baseline": baseline,
        "scored_by": scored_by,
        "n": len(repeated),
        "heldout_prompts": heldout,
        "split_seed": config.seed,
        "win_rate": rate,
        "win_rate_ci": [rate_low, rate_high],
        "reward_mean": _mean(scores),
        "baseline_reward_mean": _mean(base_scores),
        "reward_diff": diff,
        "reward_diff_ci": [diff_low, diff_high],
        "kl": _mean(kl),
        "response_length": _mean(version.lengths),
        "baseline_response_length": _mean(base.lengths),
        "better": rate_low > 0.5,
        "samples": [
            {
                "prompt": repeated[i], "response": version.responses[i], "baseline_response": base.responses[i],
                "score": scores[i], "baseline_score": base_scores[i],
            }
            for i in sorted(shown)
        ],
    }
    if len(judged) > 1:  # several judges: how far they agree that the version wins
        rates = [_mean(stats.outcomes(a, b)) for a, b in zip(judged, base_judged)]
        block["judge_win_rates"] = rates
        block["judge_agreement"] = sum(r > 0.5 for r in rates) / len(rates)
    for name, other_fn in (also_scored_by or {}).items():  # e.g. the reward model the policy trained against
        other, base_other = _floats(other_fn(repeated, version.responses)), _floats(other_fn(repeated, base.responses))
        other_rate, other_low, other_high = stats.win_rate(other, base_other, seed=config.seed, groups=repeated)
        block[name] = {"win_rate": other_rate, "win_rate_ci": [other_low, other_high],
                       "reward_diff": _mean([a - b for a, b in zip(other, base_other)])}
    return block


def _reference(
    policy: PreTrainedModel, reference: Optional[PreTrainedModel]
) -> Callable[[], contextlib.AbstractContextManager]:
    @contextlib.contextmanager
    def adapter_disabled() -> Iterator[PreTrainedModel]:
        with policy.disable_adapter():
            yield policy

    return adapter_disabled if reference is None else lambda: contextlib.nullcontext(reference)


def _by_judge(scores: Any) -> list[list[float]]:
    """[judges][N] from one judge's [N] scores or several judges' [J, N] tensor."""
    if isinstance(scores, torch.Tensor) and scores.dim() == 2:
        return [_floats(row) for row in scores]
    return [_floats(scores)]


def _mean_over_judges(judged: list[list[float]]) -> list[float]:
    return [sum(column) / len(column) for column in zip(*judged)]


def _floats(scores: Any) -> list[float]:
    if isinstance(scores, torch.Tensor):
        scores = scores.detach().float().cpu().reshape(-1).tolist()
    return [float(s) for s in scores]


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)
