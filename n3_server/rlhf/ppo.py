"""PPO for causal language models, read top to bottom like CleanRL's ppo.py.

TRL 1.x no longer ships a PPO trainer, so this is ours. One PPO step:

    1. rollout    sample `batch_size` prompts, generate responses (top_k=0, top_p=1: the policy's own distribution)
    2. score      reward_fn(prompts, responses) -> score per response; logprobs and values of the policy,
                  logprobs of the reference (the same LoRA model with its adapter disabled, or a frozen copy)
    3. advantage  per-token reward = -kl_coef * (logp - ref_logp) (k1), plus the score on the last response token
                  (the EOS when there is one); GAE(gamma, lam); advantages whitened over valid tokens
    4. update     `ppo_epochs` passes over shuffled mini-batches: clipped policy loss + clipped value loss,
                  an optimizer step every `gradient_accumulation_steps` mini-batches (or at the end of the epoch)
    5. log        one dict of TRL-named metrics per step (objective/kl: the k3 estimate, never negative; the penalty
                  and the adaptive KL controller use k1); progress callback

The checklist followed is "The N Implementation Details of RLHF with PPO" (Huang et al.): dropout off in rollout
and update (the model stays in eval mode; gradients still flow), EOS scored, everything after the first EOS
masked, explicit position_ids for left-padded prompts, whitened advantages, value clipping, adaptive KL.

Shapes in comments: B = rollouts per step, b = rollouts per mini-batch, Q = prompt tokens (left-padded),
R = response tokens (right-padded), V = vocabulary, H = hidden size.
"""
from __future__ import annotations

import contextlib
import copy
import inspect
import logging
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Optional

import torch
from peft import PeftModel
from peft.tuners.lora import LoraLayer
from torch import nn
from transformers import GenerationConfig, PreTrainedModel

from . import distributed
from .config import TrainingConfig
from .data import format_query
from .errors import ConfigError, NonFiniteError, TrainingCancelled
from .metrics import STEP_METRICS
from .modeling import resolve_dtype
from .progress import Progress, ProgressCallback

RewardFn = Callable[[list[str], list[str]], torch.Tensor]
# Reward normalisation divides by the reward model's spread; a model that predicts (almost) one value must not turn
# its rounding noise into a unit-scale reward.
MIN_REWARD_STD = 0.01

METRIC_KEYS = STEP_METRICS  # the keys of each step's metrics dict (metrics.py)


# ---------------------------------------------------------------------------------------------------------------
# The entry point
# ---------------------------------------------------------------------------------------------------------------
def train_ppo(
    *,
    policy: PreTrainedModel,
    tokenizer,
    prompts: list[str],
    reward_fn: RewardFn,
    config: TrainingConfig,
    device: torch.device,
    callback: Optional[ProgressCallback] = None,
    log: Optional[logging.Logger] = None,
    reward_stats: Optional[tuple[float, float]] = None,
    **_: object,
) -> list[dict]:
    """Train `policy` in place with PPO for `config.max_steps` steps; return one metrics dict per step.

    `reward_stats` is the reward model's (mean, std) over the feedback's responses: with `config.normalize_reward`
    the score PPO maximises is (score - mean) / std, so the reward has unit scale whatever the reward model's
    spread (a model fitted to a few scores predicts a narrow band around their mean; raw, that signal would be lost
    next to the KL penalty and the value head's error), and the critic's initial 0 is the average response.
    Logged scores stay the reward model's own 0..1.

    `policy` is a causal LM on `device`; with `config.use_lora` it must be a peft PeftModel and the KL reference
    is the same model with the adapter disabled, otherwise a frozen copy is made here. The query is
    `prompt + "\\n"`; `reward_fn(prompts, responses)` gets the raw prompts and the decoded responses and returns
    one score per response. Raises TrainingCancelled when `callback` returns True, NonFiniteError on NaN/inf;
    either carries the steps that ran as `exc.history`.
    """
    log = log or logging.getLogger(__name__)
    if not prompts:
        raise ValueError("train_ppo needs at least one prompt")
    is_peft = isinstance(policy, PeftModel)
    if config.use_lora and not is_peft:
        raise ConfigError("use_lora is set but the policy is not a PeftModel: wrap it with get_peft_model() first")
    eos_id, pad_id = _special_ids(tokenizer)

    # Under a launcher each process draws its own prompts and samples its own responses (seed + rank); in a single
    # process rank is 0. See distributed.py for what a multi-process run shares.
    rank_seed = config.seed + distributed.process_index()
    torch.manual_seed(rank_seed)  # generate() samples from the global generator (also seeds CUDA)
    prompt_order = _cycle_shuffled(len(prompts), random.Random(rank_seed))
    minibatch_rng = torch.Generator().manual_seed(rank_seed)

    value_head = _make_value_head(policy, device)
    reference = None if is_peft else copy.deepcopy(policy).requires_grad_(False).eval()
    trainable = [p for p in policy.parameters() if p.requires_grad] + list(value_head.parameters())
    distributed.broadcast_parameters(trainable)  # every process starts from rank 0's weights (as DDP does)
    # No weight decay (as TRL): the KL penalty is what keeps the policy near its reference, not a pull towards 0.
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=0.0)
    kl_ctl = KLController(config)
    autocast = _autocast(config, device)

    was_training = policy.training
    policy.eval()  # dropout off: rollout and update must see the same network
    history: list[dict] = []
    try:
        for step in range(1, config.max_steps + 1):
            t0 = _now(device)
            batch_prompts = [prompts[next(prompt_order)] for _ in range(config.batch_size)]

            # 1. rollout
            query_ids, query_mask = tokenize_queries(tokenizer, batch_prompts, config.max_prompt_length, pad_id, device)
            with torch.no_grad(), autocast(), merged_adapter(policy):
                response_ids = generate_responses(policy, query_ids, query_mask, config, eos_id, pad_id)  # [B, R]
            response_mask = mask_after_first_eos(response_ids, eos_id)  # [B, R] bool
            t1 = _now(device)

            # 2. score
            responses = [
                tokenizer.decode(ids[m].tolist(), skip_special_tokens=True)
                for ids, m in zip(response_ids, response_mask)
            ]
            scores = checked_scores(reward_fn, batch_prompts, responses, where=f"at PPO step {step}").to(device)  # [B]
            with torch.no_grad(), autocast():
                logprobs, values = score_responses(policy, value_head, query_ids, query_mask, response_ids, config)
                if is_peft:
                    with policy.disable_adapter():
                        ref_logprobs, _ = score_responses(policy, None, query_ids, query_mask, response_ids, config)
                else:
                    ref_logprobs, _ = score_responses(reference, None, query_ids, query_mask, response_ids, config)
            t2 = _now(device)

            # 3. advantage
            kl_coef = kl_ctl.value
            rl_scores = scores
            if config.missing_eos_penalty is not None:
                ended = (response_ids == eos_id).any(dim=1)  # [B]
                rl_scores = scores - config.missing_eos_penalty * (~ended).float()
            if config.normalize_reward and reward_stats is not None:
                rl_scores = (rl_scores - reward_stats[0]) / max(reward_stats[1], MIN_REWARD_STD)
            rewards, kl = compute_rewards(rl_scores, logprobs, ref_logprobs, response_mask, kl_coef)  # [B, R] each
            kl_per_response = kl.sum(dim=1)  # [B] k1: the penalty in the reward and what the KL controller sees
            reported_kl = kl_k3(logprobs, ref_logprobs, response_mask).sum(dim=1)  # [B] k3: objective/kl
            # Every process's rollouts ([processes * B] each): the logged figures and the KL the controller sees
            # are the global batch's, identical on every process (kl_coef must stay the same everywhere).
            all_scores, all_kl, all_rlhf_reward, all_reported_kl = distributed.gather(
                torch.stack([scores, kl_per_response, rl_scores - kl_coef * kl_per_response, reported_kl], dim=1)
            ).unbind(dim=1)
            mean_kl = all_kl.mean().item()
            _check_finite("KL", mean_kl, step, config)
            if config.whiten_rewards:
                rewards = masked_whiten(rewards, response_mask, shift_mean=False)
            advantages, returns = compute_advantages(rewards, values, response_mask, config.gamma, config.lam)
            batch = Batch(query_ids, query_mask, response_ids, response_mask, logprobs, values, advantages, returns)

            # 4. update
            update_stats = ppo_update(
                policy, value_head, optimizer, trainable, batch, config, minibatch_rng, autocast, step
            )
            kl_ctl.update(mean_kl, config.batch_size)
            t3 = _now(device)

            # 5. log (losses and token counts averaged over the processes; timings are this process's)
            update_stats = distributed.mean({**update_stats, "n_tokens": float(response_mask.sum())})
            n_tokens = update_stats.pop("n_tokens") * distributed.num_processes()  # all processes' tokens
            stats = {
                "step": step,
                "objective/scores": all_scores.mean().item(),
                "objective/scores_std": all_scores.std(correction=0).item(),
                "objective/kl": all_reported_kl.mean().item(),
                "objective/kl_coef": kl_coef,
                "objective/rlhf_reward": all_rlhf_reward.mean().item(),
                **update_stats,
                "timing/generate_s": t1 - t0,
                "timing/score_s": t2 - t1,
                "timing/update_s": t3 - t2,
                "tokens_per_s": n_tokens / max(t3 - t0, 1e-9),
                "response_length": n_tokens / len(all_scores),
            }
            history.append(stats)
            log.info(
                "ppo step %d/%d reward=%.4f kl=%.4f loss=%.4f tokens/s=%.1f", step, config.max_steps,
                stats["objective/scores"], stats["objective/kl"], stats["loss/total"], stats["tokens_per_s"],
            )
            progress = Progress(phase="policy", step=step, total=config.max_steps, metrics=stats)
            # Rank 0's callback decides for every process (a cancel must not leave the others in a collective).
            if distributed.should_stop(lambda progress=progress: callback is not None and callback(progress)):
                log.info("ppo cancelled after step %d/%d", step, config.max_steps)
                raise TrainingCancelled(f"Training cancelled after PPO step {step} of {config.max_steps}")
    except (TrainingCancelled, NonFiniteError) as exc:
        exc.history = history  # the steps that did run, for the caller's records
        raise
    finally:
        policy.train(was_training)
    return history


# ---------------------------------------------------------------------------------------------------------------
# 1. Rollout
# ---------------------------------------------------------------------------------------------------------------
def tokenize_queries(
    tokenizer, prompts: list[str], max_prompt_length: int, pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Queries (`format_query`: prompt + "\\n"), cut to `max_prompt_length` tokens from the left, left-padded.

    Returns input_ids [B, Q] and attention_mask [B, Q] (0 on padding). A leading BOS token survives the cut.
    """
    rows = []
    for ids in tokenizer([format_query(p) for p in prompts])["input_ids"]:
        if len(ids) > max_prompt_length:
            bos = tokenizer.bos_token_id
            keep_bos = bos is not None and ids[0] == bos and max_prompt_length > 1
            ids = ([bos] if keep_bos else []) + ids[len(ids) - max_prompt_length + int(keep_bos):]
        rows.append(ids)
    width = max(len(ids) for ids in rows)
    input_ids = torch.tensor([[pad_id] * (width - len(ids)) + ids for ids in rows], dtype=torch.long, device=device)
    attention_mask = torch.tensor(
        [[0] * (width - len(ids)) + [1] * len(ids) for ids in rows], dtype=torch.long, device=device
    )
    return input_ids, attention_mask


def generate_responses(
    policy: PreTrainedModel, query_ids: torch.Tensor, query_mask: torch.Tensor, config: TrainingConfig,
    eos_id: int, pad_id: int,
) -> torch.Tensor:
    """Sample one response per query from the policy's own distribution; returns response ids [B, R].

    Every setting that would reshape the distribution is pinned explicitly, because generate() fills unset ones
    from the model's generation_config and its global defaults (top_k=50 among them). No min_new_tokens:
    suppressing EOS makes the sampled tokens improbable under the policy and the KL estimate goes negative.
    """
    generation_config = GenerationConfig(
        max_new_tokens=config.max_new_tokens, do_sample=True, temperature=config.temperature,
        top_k=0, top_p=1.0, typical_p=1.0, epsilon_cutoff=0.0, eta_cutoff=0.0, min_length=0,
        repetition_penalty=1.0, no_repeat_ngram_size=0, num_beams=1, use_cache=True,
        eos_token_id=eos_id, pad_token_id=pad_id,
    )
    try:
        output = policy.generate(input_ids=query_ids, attention_mask=query_mask, generation_config=generation_config)
    except RuntimeError as exc:
        # Weights that an update turned NaN/inf are first met here, by torch's sampler, before any loss is computed.
        if "probability tensor contains" not in str(exc):
            raise
        raise NonFiniteError(
            "The policy's next-token probabilities became NaN/inf (the last update made its weights non-finite); "
            f"training stopped. {config.nonfinite_hint()}"
        ) from exc
    return output[:, query_ids.shape[1]:]  # [B, R]


def mask_after_first_eos(response_ids: torch.Tensor, eos_id: int) -> torch.Tensor:
    """[B, R] bool: True up to and including the first EOS; all True for a response that never emitted one."""
    R = response_ids.shape[1]
    is_eos = response_ids == eos_id  # [B, R]
    last = torch.where(is_eos.any(dim=1), is_eos.int().argmax(dim=1), R - 1)  # [B] index of the last valid token
    return torch.arange(R, device=response_ids.device)[None, :] <= last[:, None]


# ---------------------------------------------------------------------------------------------------------------
# 2. Score
# ---------------------------------------------------------------------------------------------------------------
def forward_response(
    model: PreTrainedModel, value_head: Optional[nn.Module], query_ids: torch.Tensor, query_mask: torch.Tensor,
    response_ids: torch.Tensor, temperature: float, *, with_entropy: bool = False,
) -> tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
    """One forward pass over prompt + response. Returns, for each response token t ([b, R] each):
    logprob of token t at `temperature`, value of the state before it (None without a head), entropy (optional).
    """
    Q, R = query_ids.shape[1], response_ids.shape[1]
    input_ids = torch.cat([query_ids, response_ids], dim=1)  # [b, Q+R]
    # Generated tokens were all attended during generate(); the ones after EOS only influence masked positions.
    attention_mask = torch.cat([query_mask, torch.ones_like(response_ids)], dim=1)  # [b, Q+R]
    position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)  # left padding: the first real token is 0
    extra = {"logits_to_keep": R + 1} if _accepts_logits_to_keep(model) else {}  # skip the prompt's logits
    out = model(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False,
        output_hidden_states=value_head is not None, **extra,
    )
    # Position Q-1+t predicts response token t. Log-softmax via logsumexp: no [b, R, V] log-prob tensor is kept.
    logits = out.logits[:, -(R + 1):-1].float() / temperature  # [b, R, V]
    logprobs = logits.gather(-1, response_ids.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(dim=-1)  # [b, R]
    values = None
    if value_head is not None:
        hidden = out.hidden_states[-1][:, Q - 1:-1]  # [b, R, H]
        # Detached: the value loss trains the head alone. With LoRA the policy has few parameters, and the critic's
        # regression flowing into them moved the policy by noise (bench/effect_bench.py: less gold lost on held-out
        # prompts at the same KL); the hidden states are still the policy's own.
        values = value_head(hidden.detach().to(value_head.weight.dtype)).squeeze(-1).float()  # [b, R]
    entropy = None
    if with_entropy:
        with torch.no_grad():
            entropy = logits.logsumexp(dim=-1) - (logits.softmax(dim=-1) * logits).sum(dim=-1)  # [b, R]
    return logprobs, values, entropy


def score_responses(
    model: PreTrainedModel, value_head: Optional[nn.Module], query_ids: torch.Tensor, query_mask: torch.Tensor,
    response_ids: torch.Tensor, config: TrainingConfig,
) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """forward_response over the batch in chunks of 2 x `mini_batch_size`; logprobs [B, R], values [B, R].

    No activations are kept for a backward pass here, so twice a training mini-batch's rows still need less memory
    than one training forward, and half as many forward calls save their fixed cost (~20 % of this phase on n3-tiny).
    """
    chunks = [
        forward_response(model, value_head, q, m, r, config.temperature)[:2]
        for q, m, r in zip(*(t.split(2 * config.mini_batch_size) for t in (query_ids, query_mask, response_ids)))
    ]
    logprobs = torch.cat([c[0] for c in chunks])
    values = torch.cat([c[1] for c in chunks]) if value_head is not None else None
    return logprobs, values


# ---------------------------------------------------------------------------------------------------------------
# 3. Advantage
# ---------------------------------------------------------------------------------------------------------------
def compute_rewards(
    scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor, kl_coef: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards [B, R]: -kl_coef * KL on every valid token, plus the score on the last valid one.

    Returns (rewards, kl), kl being the per-token estimate logp - ref_logp [B, R], 0 on masked tokens.
    """
    kl = (logprobs - ref_logprobs) * mask
    rewards = -kl_coef * kl
    last = mask.sum(dim=1) - 1  # [B] the EOS, or the last token of a response cut at max_new_tokens
    rewards[torch.arange(len(scores), device=scores.device), last] += scores
    return rewards, kl


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-token KL(policy || reference) [B, R] by Schulman's k3 estimator, exp(r) - 1 - r with r = ref_logp - logp,
    0 on masked tokens: unbiased like k1 (logp - ref_logp) and, unlike it, never negative, so the reported KL
    (objective/kl, as TRL reports it) cannot be below 0 on a sample.

    Only reported: the penalty in the reward and the adaptive controller keep k1, as TRL's PPO does by default
    (kl_estimator="k1"); switching them would change what training optimises.
    """
    r = (ref_logprobs - logprobs) * mask
    return (torch.expm1(r) - r) * mask


def compute_advantages(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE over the response tokens. Returns whitened advantages [B, R] and returns [B, R] (0 where masked)."""
    values = values * mask  # the state after the last valid token is terminal: value 0
    rewards = rewards * mask
    R = rewards.shape[1]
    advantages_reversed = []
    last_gae = torch.zeros_like(rewards[:, 0])  # [B]
    for t in reversed(range(R)):
        next_value = values[:, t + 1] if t + 1 < R else torch.zeros_like(last_gae)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last_gae = delta + gamma * lam * last_gae
        advantages_reversed.append(last_gae)
    advantages = torch.stack(advantages_reversed[::-1], dim=1)  # [B, R]
    returns = advantages + values
    advantages = masked_whiten(advantages, mask) * mask
    return advantages, returns


# ---------------------------------------------------------------------------------------------------------------
# 4. Update
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class Batch:
    """A scored rollout batch, everything detached. [B, Q] for the query, [B, R] for the rest."""

    query_ids: torch.Tensor
    query_mask: torch.Tensor
    response_ids: torch.Tensor
    response_mask: torch.Tensor  # bool
    logprobs: torch.Tensor  # the policy's, at sampling time
    values: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor


def ppo_update(
    policy: PreTrainedModel, value_head: nn.Module, optimizer: torch.optim.Optimizer, trainable: list[nn.Parameter],
    batch: Batch, config: TrainingConfig, generator: torch.Generator, autocast: Callable, step: int,
) -> dict[str, float]:
    """`ppo_epochs` passes over shuffled mini-batches; returns the losses and diagnostics averaged over them."""
    B, mb = batch.response_ids.shape[0], config.mini_batch_size
    n_minibatches = math.ceil(B / mb)
    accumulate = min(config.gradient_accumulation_steps, n_minibatches)
    sums: dict[str, float] = {}
    for _ in range(config.ppo_epochs):
        order = torch.randperm(B, generator=generator).to(batch.response_ids.device)
        for k in range(n_minibatches):
            idx = order[k * mb:(k + 1) * mb]
            mask = batch.response_mask[idx]  # [b, R]
            with autocast():
                logprobs, vpred, entropy = forward_response(
                    policy, value_head, batch.query_ids[idx], batch.query_mask[idx], batch.response_ids[idx],
                    config.temperature, with_entropy=True,
                )  # [b, R] each
            old_logprobs, old_values = batch.logprobs[idx], batch.values[idx]
            advantages, returns = batch.advantages[idx], batch.returns[idx]

            # clipped value loss
            vpred_clipped = old_values + (vpred - old_values).clamp(-config.cliprange_value, config.cliprange_value)
            vf_losses1, vf_losses2 = (vpred - returns) ** 2, (vpred_clipped - returns) ** 2
            vf_loss = 0.5 * masked_mean(torch.max(vf_losses1, vf_losses2), mask)
            # clipped policy loss
            ratio = torch.exp(logprobs - old_logprobs)
            pg_losses1 = -advantages * ratio
            pg_losses2 = -advantages * ratio.clamp(1.0 - config.cliprange, 1.0 + config.cliprange)
            pg_loss = masked_mean(torch.max(pg_losses1, pg_losses2), mask)
            loss = pg_loss + config.vf_coef * vf_loss
            _check_finite("loss", loss.item(), step, config)

            # Mini-batches are grouped `accumulate` at a time (the last group of an epoch may be smaller);
            # dividing by the group's size makes each optimizer step use the group's mean gradient.
            group_start = k // accumulate * accumulate
            group_size = min(accumulate, n_minibatches - group_start)
            (loss / group_size).backward()
            if k == group_start + group_size - 1:
                distributed.average_gradients(trainable)  # data parallel: every process takes the same step
                grad_norm = torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm)
                _check_finite("gradient norm", grad_norm.item(), step, config)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)

            with torch.no_grad():
                diagnostics = {
                    "policy/entropy": masked_mean(entropy, mask),
                    "policy/clipfrac": masked_mean((pg_losses2 > pg_losses1).float(), mask),
                    "policy/approxkl": 0.5 * masked_mean((logprobs - old_logprobs) ** 2, mask),
                    "loss/policy": pg_loss,
                    "loss/value": vf_loss,
                    "loss/total": loss,
                    "val/clipfrac": masked_mean((vf_losses2 > vf_losses1).float(), mask),
                }
            for key, value in diagnostics.items():
                sums[key] = sums.get(key, 0.0) + value.item()
    n = config.ppo_epochs * n_minibatches
    return {key: total / n for key, total in sums.items()}


# ---------------------------------------------------------------------------------------------------------------
# 5. KL control
# ---------------------------------------------------------------------------------------------------------------
class KLController:
    """The KL coefficient: fixed, or adaptive as in Ziegler et al. 2019 (proportional control towards target_kl)."""

    def __init__(self, config: TrainingConfig):
        self.value = config.init_kl_coef
        self.adaptive, self.target, self.horizon = config.adaptive_kl, config.target_kl, config.kl_horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        if self.adaptive:
            error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
            self.value *= 1.0 + error * n_steps / self.horizon


# ---------------------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------------------
def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Normalise x to unit variance (and zero mean when shift_mean) using only the valid tokens' statistics."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    whitened = (x - mean) * torch.rsqrt(var + 1e-8)
    return whitened if shift_mean else whitened + mean


@contextlib.contextmanager
def merged_adapter(policy: nn.Module) -> Iterator[None]:
    """LoRA folded into the base weights for generate(); a no-op without LoRA.

    peft's LoRA layers add two small matmuls and a Python detour to every targeted module on every forward, and
    generate() runs one forward per token: with the adapter merged a decoding step costs what the base model's does
    (n3-tiny, batch 8, one CPU thread: 8.0 instead of 10.9 ms per decoding step, medians of interleaved runs).
    The sampled tokens' log-probs are then computed by score_responses on the unmerged model, as the update sees it.
    Unmerging subtracts the same delta again, so
    the base weights (the KL reference) come back to within float32 rounding.
    """
    # Layer by layer: PeftModel.merge_adapter() first walks and inspects every module, which costs more than the
    # merge itself on a small model.
    layers = [m for m in policy.modules() if isinstance(m, LoraLayer)] if isinstance(policy, PeftModel) else []
    for layer in layers:
        layer.merge()
    try:
        yield
    finally:
        for layer in layers:
            layer.unmerge()


def _make_value_head(policy: PreTrainedModel, device: torch.device) -> nn.Linear:
    """Linear(H, 1) on the policy's last hidden state; lives only for this run (not saved).

    Zero-initialised: every value starts at 0, the scale of "no reward yet" for 0..1 scores, so early
    advantages are just the returns instead of noise from a random head.
    """
    head = nn.Linear(policy.config.get_text_config().hidden_size, 1)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    return head.to(device)


def _special_ids(tokenizer) -> tuple[int, int]:
    """(eos_id, pad_id); the EOS token doubles as padding when the tokenizer has no pad token."""
    eos_id = tokenizer.eos_token_id
    if eos_id is None:
        raise ConfigError("The tokenizer has no EOS token; PPO needs one to know where a response ends")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id
    return eos_id, pad_id


def _cycle_shuffled(n: int, rng: random.Random) -> Iterator[int]:
    """Prompt indices: a fresh shuffle of all prompts per pass, forever."""
    while True:
        order = list(range(n))
        rng.shuffle(order)
        yield from order


def checked_scores(reward_fn: RewardFn, prompts: list[str], responses: list[str], *, where: str) -> torch.Tensor:
    """reward_fn's scores as a float32 CPU tensor [B], one per response and all finite (NonFiniteError naming
    `where`, e.g. "at PPO step 3", otherwise). Every algorithm scores its samples through this."""
    scores = torch.as_tensor(reward_fn(prompts, responses)).detach().float().reshape(-1).cpu()  # [B]
    if scores.numel() != len(responses):
        raise ValueError(f"reward_fn returned {scores.numel()} scores for {len(responses)} responses")
    if not torch.isfinite(scores).all():
        raise NonFiniteError(
            f"The reward model returned non-finite scores ({scores.tolist()}) {where}; "
            "training stopped. Check the reward model (it may have diverged while training)."
        )
    return scores


def _check_finite(what: str, value: float, step: int, config: TrainingConfig) -> None:
    if not math.isfinite(value):
        raise NonFiniteError(
            f"The PPO {what} became {value} at step {step}; training stopped. "
            f"{config.nonfinite_hint()}"
        )


def _accepts_logits_to_keep(model: PreTrainedModel) -> bool:
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def _autocast(config: TrainingConfig, device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    """bf16 autocast on CUDA when the run's dtype resolves to bfloat16; plain float32 elsewhere."""
    if device.type == "cuda" and resolve_dtype(config.dtype, device) == torch.bfloat16:
        return lambda: torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext


def _now(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()
